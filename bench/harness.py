"""What every benchmark needs: free loopback ports, processes that always stop, and the
lines ``serve --dev`` prints for its clients."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent


def serve_dev(port: int, *flags: str) -> list[str]:
    """The command line of ``serve --dev`` on 127.0.0.1:``port``, with more ``flags``."""
    return [
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        "--dev",
        "--listen",
        f"127.0.0.1:{port}",
        *flags,
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def process(
    argv: list[str],
    stderr: int | IO[str] = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """``argv`` with its stdout piped; on exit SIGTERM, then SIGKILL after 15 s.

    Raises ``RuntimeError`` after the kill: a daemon that ignores SIGTERM is a failure.
    """
    proc = subprocess.Popen(
        argv, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=stderr, env=env
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{argv[:4]} did not stop within 15 s of SIGTERM") from None
        finally:
            if proc.stdout:
                proc.stdout.close()


def dev_lines(proc: subprocess.Popen[str], timeout: float = 30) -> dict[str, str]:
    """The variables ``serve --dev`` prints (``export NAME=VALUE`` lines), plus ``token``:
    the auth token, read from the file it names."""
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while "AWS_ENDPOINT_URL_STS" not in lines:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            raise RuntimeError("the daemon did not print its dev-mode lines")
        words = shlex.split(line) if line.startswith("export ") else []
        for word in words[1:]:
            name, _, value = word.partition("=")
            lines[name] = value
    lines["token"] = Path(lines["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read_text()
    return lines


@dataclass(frozen=True)
class WrkRun:
    """What one ``wrk`` run reports."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    options: Sequence[str] = (),
    script_args: Sequence[str] = (),
) -> WrkRun:
    """``wrk`` with one thread against ``url`` (``options`` before it: headers, a Lua
    script; ``script_args`` after ``--`` for the script), its output parsed."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", *options, url]
    if script_args:
        argv += ["--", *script_args]
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout

    def number(pattern: str) -> str:
        match = re.search(pattern, out)
        if not match:
            raise RuntimeError(f"{pattern!r} not in wrk's output:\n{out}")
        return match.group(1)

    def latency(label: str) -> float:
        match = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        if not match:
            raise RuntimeError(f"no {label}th percentile in wrk's output:\n{out}")
        return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkRun(
        requests=int(number(r"(\d+) requests in")),
        rps=float(number(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        non_2xx=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of ``pid`` so far, in clock ticks."""
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_us_per_request(pid: int, ticks_before: int, requests: int) -> float:
    """The CPU time ``pid`` spent per request since ``ticks_before``: steadier than
    requests/s on a shared machine, where what wrk gets also depends on what else runs."""
    ticks = cpu_ticks(pid) - ticks_before
    return ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(1, requests)
