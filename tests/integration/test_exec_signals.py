"""`exec` and signals: each reaches the child once; none leaves exec's secrets behind."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import REPO, EmulatorThread, clean_aws_env, emulator_args

EXEC = [sys.executable, "-m", "sidecar", "exec"]
#: Counts SIGINT and SIGQUIT; on SIGTERM reports the counts and exits 0.
COUNTING_CHILD = """
import signal, sys
counts = {"INT": 0, "QUIT": 0}
def count(signum, _):
    name = signal.Signals(signum).name[3:]
    counts[name] += 1
    print(f"got {name} {counts[name]}", flush=True)
def report(*_):
    print(f"total INT {counts['INT']} QUIT {counts['QUIT']}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, count)
signal.signal(signal.SIGQUIT, count)
signal.signal(signal.SIGTERM, report)
print("ready", flush=True)
while True:
    signal.pause()
"""
#: Makes itself a session leader with stdin (the pty) as controlling terminal, then becomes
#: exec: exec and its child are then the terminal's foreground process group, as in a shell.
SESSION_LEADER = (
    "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, sys.argv[1:])"
)


class Pty:
    """The terminal side of a pseudo-terminal: what is typed, and what is shown."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.seen = ""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} on the terminal:\n{self.seen}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: every process on the terminal has exited
                    data = b""
                assert data, f"terminal closed before {pattern!r}:\n{self.seen}"
                self.seen += data.decode(errors="replace")
        return match


@pytest.mark.parametrize(("keys", "name"), [(b"\x03", "INT"), (b"\x1c", "QUIT")])
def test_terminal_interrupt_reaches_the_child_once(keys: bytes, name: str) -> None:
    """Ctrl-C (Ctrl-\\) typed at the terminal reaches the child once, not twice: the
    terminal delivers it to exec's foreground process group, so exec does not pass it on."""
    master, slave = os.openpty()
    child = [sys.executable, "-c", COUNTING_CHILD]
    proc = subprocess.Popen(
        [sys.executable, "-c", SESSION_LEADER, *EXEC, "--dev", "--", *child],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=clean_aws_env(),
        cwd=REPO,
    )
    os.close(slave)
    terminal = Pty(master)
    try:
        terminal.expect("ready")
        terminal.type(keys)
        terminal.expect(f"got {name} 1")
        # SIGTERM is passed on after anything exec did with the first signal: the report
        # counts every copy that reached the child.
        proc.send_signal(signal.SIGTERM)
        total = terminal.expect(r"total INT (\d+) QUIT (\d+)")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    assert total.groups() == (("1", "0") if name == "INT" else ("0", "1"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_interrupt_without_a_terminal_is_passed_on_once(signum: signal.Signals) -> None:
    """kill -INT (-QUIT) to exec with no terminal reaches the child exactly once."""
    proc = subprocess.Popen(
        [*EXEC, "--dev", "--", sys.executable, "-c", COUNTING_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_aws_env(),
        cwd=REPO,
        text=True,
        start_new_session=True,  # no controlling terminal, whatever runs the tests
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
        name = signum.name[3:]
        assert proc.stdout.readline().strip() == f"got {name} 1"
        proc.send_signal(signal.SIGTERM)
        total = proc.stdout.readline().strip()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
    assert total == ("total INT 1 QUIT 0" if name == "INT" else "total INT 0 QUIT 1")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_while_waiting_for_credentials_cleans_up(
    emulator: EmulatorThread, tmp_path: Path, signum: signal.Signals
) -> None:
    """A signal while exec waits for credentials (STS refuses) stops it with 128+N, no
    traceback, the command not run, and its private auth-token directory removed."""
    emulator.add_fault(error="AccessDenied", status=403, message="Not authorized")
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    temp = tmp_path / "tmp"
    temp.mkdir()
    marker = tmp_path / "ran"
    args = emulator_args(emulator, token, tmp_path / "auth")
    args.remove("--auth-token-file")
    args.remove(str(tmp_path / "auth"))  # exec's own, in its private directory
    proc = subprocess.Popen(
        [*EXEC, *args, "--wait", "60", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
        stderr=subprocess.PIPE,
        env=clean_aws_env(TMPDIR=str(temp)),
        cwd=REPO,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    try:
        seen = ""
        while "AccessDenied" not in seen:  # the first exchange failed: exec is waiting
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        (private,) = temp.iterdir()
        assert private.name.startswith("credential-sidecar-exec-")
        proc.send_signal(signum)
        code = proc.wait(10)
        seen += proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()
    assert code == 128 + signum, seen
    assert "Traceback" not in seen
    assert f"stopped by {signum.name}" in seen
    assert list(temp.iterdir()) == []
    assert not marker.exists()
