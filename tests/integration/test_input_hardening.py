"""A real daemon with hostile inputs: FIFO and huge files stay off the event loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.peers import EmulatorThread, daemon, emulator_args, http_get


def _swap_for_fifo(path: Path) -> None:
    """Replace ``path`` by a FIFO nobody writes to (atomically, as an attacker would)."""
    staged = path.with_name(path.name + ".fifo")
    os.mkfifo(staged)
    staged.replace(path)


def _unblock(path: Path) -> None:
    """Let a reader stuck opening the FIFO go (only the old code gets stuck there)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_swapped_auth_token_file_does_not_freeze_the_daemon(
    emulator: EmulatorThread, tmp_path: Path, kind: str
) -> None:
    """Auth token file swapped for a FIFO or 300 MiB file: requests keep being answered."""
    token_file = tmp_path / "token"
    token_file.write_text(emulator.issuer.mint("repo:org/app"))
    auth_file = tmp_path / "auth-token"
    with daemon(emulator_args(emulator, token_file, auth_file)) as process:
        process.wait_event("exchanged")
        token = process.auth_token()
        if kind == "fifo":
            _swap_for_fifo(auth_file)
        else:
            staged = tmp_path / "huge"
            with staged.open("wb") as handle:
                handle.truncate(300 * 1024 * 1024)
            staged.chmod(0o600)
            staged.replace(auth_file)
        try:
            failed = process.wait_event("auth_token_reload_failed", timeout=10)
            assert "regular file" in failed["msg"] or "64 KiB" in failed["msg"]
            started = time.monotonic()
            status, _, _ = http_get(process.url, token, timeout=5)
            assert status == 200
            assert time.monotonic() - started < 2
        finally:
            _unblock(auth_file)


def test_fifo_token_file_does_not_stop_shutdown(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A token file swapped for a FIFO is refused clearly and SIGTERM still exits at once."""
    token_file = tmp_path / "token"
    token_file.write_text(emulator.issuer.mint("repo:org/app", ttl=-3600))  # fails, retried
    args = emulator_args(emulator, token_file, tmp_path / "auth-token", "--retry-base", "0.1s")
    with daemon(args) as process:
        process.wait_event("refresh_failed")
        _swap_for_fifo(token_file)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                "FIFO" in str(e.get("msg", "")) for e in process.events("refresh_failed")
            ):
                time.sleep(0.05)
            code, elapsed = process.stop(timeout=10)
        finally:
            _unblock(token_file)
    assert code == 0
    assert elapsed < 5
    assert any("not a regular file" in str(e["msg"]) for e in process.events("refresh_failed"))
