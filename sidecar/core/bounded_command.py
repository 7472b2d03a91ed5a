"""Running a program whose output we need: bounded in size and time, nothing left behind.

The program runs in a process group of its own (a new session), so when it takes too
long, prints too much or its caller is cancelled, the whole group is killed: a command
like ``sh -c 'helper & cat token'`` leaves no orphan behind. The group is also killed
after a normal exit, so nothing it started outlives it (a program that starts its own
session, like a double-forking daemon, escapes: that is its choice).

Its output goes through pipes we create and close ourselves, read without blocking and
never more than ``stdout_limit + 1`` bytes of stdout; of stderr only the last
``stderr_kept`` bytes are kept, for the error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.core.fdlimit import restore_for_child

_CHUNK = 16384


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    #: The end of what it wrote to stderr (for the error message).
    stderr_tail: bytes


class _PipeReader:
    """Reads one non-blocking pipe on the loop: the first ``limit`` bytes, or the last."""

    def __init__(self, fd: int, limit: int, keep_tail: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = fd
        self._limit = limit
        self._keep_tail = keep_tail
        self.data = bytearray()
        self.over = False
        self.done: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self.drain)

    def drain(self) -> None:
        """Read what is there now, without waiting."""
        while self._fd is not None and not self.done.done():
            want = _CHUNK if self._keep_tail else min(_CHUNK, self._limit + 1 - len(self.data))
            try:
                chunk = os.read(self._fd, want)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._finish()
                return
            self.data += chunk
            if self._keep_tail:
                del self.data[: -self._limit]
            elif len(self.data) > self._limit:
                self.over = True
                self._finish()

    def _finish(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        self._finish()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _group_has_members(pgid: int) -> bool:
    """Whether any process is still in group ``pgid`` (Linux: from /proc; elsewhere assume so).

    Once the leader is reaped, its number may be handed to a new process, which could lead a
    group of its own: only a group that still has members is certainly still ours (the
    kernel does not reuse a number some live process uses as its group id).
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode():
            return True
    return False


def _kill_group(pgid: int, leader_reaped: bool) -> None:
    if leader_reaped and not _group_has_members(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_bounded(
    argv: Sequence[str],
    time_limit: float,
    fail: Callable[[str], Exception],
    stdout_limit: int,
    stderr_kept: int,
) -> CommandResult:
    """Run ``argv`` (no shell); ``fail(problem)`` if it overruns; ``OSError`` if it cannot start."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        # Only the child holds the write ends now: EOF comes when it (and anything it
        # started) is gone.
        os.close(out_w)
        os.close(err_w)
    restore_for_child(proc.pid)
    out = _PipeReader(out_r, stdout_limit, keep_tail=False)
    err = _PipeReader(err_r, stderr_kept, keep_tail=True)
    exited: asyncio.Future[int] = asyncio.ensure_future(proc.wait())
    code = -1
    try:
        try:
            async with asyncio.timeout(time_limit):
                first: list[asyncio.Future[Any]] = [exited, out.done]
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                if not out.over:
                    code = await exited
                    if code == 0:
                        await out.done  # the rest of its output
        except TimeoutError:
            raise fail(_overran(time_limit, proc.returncode, out.done.done())) from None
        if out.over:
            raise fail(
                f"printed more than {stdout_limit} bytes (a token is a few KB): is it "
                "printing the token and nothing else?"
            )
        err.drain()  # what it wrote just before exiting
        return CommandResult(code, bytes(out.data), bytes(err.data))
    finally:
        _kill_group(proc.pid, leader_reaped=proc.returncode is not None)
        exited.cancel()
        out.close()
        err.close()
        if proc.returncode is None:
            await proc.wait()  # SIGKILLed: reap it now


def _overran(timeout: float, returncode: int | None, output_closed: bool) -> str:
    killed = "it was killed, with every process it started"
    if returncode is None and output_closed:
        return f"closed its output but did not exit within {timeout:g}s; {killed}"
    if returncode is None:
        return f"did not exit within {timeout:g}s; {killed}"
    return (
        f"did not finish within {timeout:g}s: it exited (status {returncode}), but its output "
        "pipe was still open: a background process it started kept it open (start it with "
        f"its output redirected, e.g. `helper >/dev/null 2>&1 &`); {killed}"
    )
