"""Reading small files we do not trust: bounded in size and time, never blocking the loop.

Token files and the auth token file are a few hundred bytes, but the path may name
anything: a 300 MiB file, a FIFO nobody writes to, a device, a file on a hung network
mount, or (in a directory other users can write to) a symlink someone planted. So:

* the file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the opened
  descriptor (no stat-then-open race): a FIFO or device is refused without waiting for
  a writer, and only a regular file is read;
* at most ``limit + 1`` bytes are ever read: more is an error, never a big allocation;
* the blocking part runs in an ``OffLoopReader``: one daemon thread per read, at most
  one outstanding per source. A read stuck in the kernel (a hung NFS mount) cannot hold
  up the event loop, another source, or the process exit (daemon threads are not
  joined); the next read of that source fails fast instead of piling up threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

#: A JWT is a few KB; an auth token a few dozen bytes. 64 KiB is generous for both.
MAX_INPUT_BYTES = 64 * 1024
#: How long one read may take before the caller gives up on it (the thread may stay stuck).
READ_TIMEOUT = 5.0

T = TypeVar("T")
#: Builds the caller's own error from a problem description ("is a FIFO, not a file").
Fail = Callable[[str], Exception]


def size_text(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is rewritten or replaced."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    #: Owner and permission bits: a chmod or chown is a change worth re-checking.
    uid: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_uid,
            stat.S_IMODE(st.st_mode),
        )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def others_can_write(directory: Path) -> bool:
    """True if a user other than us (or root) could create or replace entries in it."""
    try:
        st = directory.stat()
    except OSError:
        return True  # cannot tell: assume the worst
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) or st.st_uid not in (0, os.geteuid())


def ownership_problem(st: os.stat_result) -> str | None:
    """Why a file we take a secret from could have been planted or changed by someone else."""
    if st.st_uid not in (0, os.geteuid()):
        return (
            f"is owned by uid {st.st_uid}, not by this daemon's user (uid {os.geteuid()}) or "
            "root: refused, since another user could have planted it"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): refused, "
            "since someone else could change it; chmod 600 it"
        )
    return None


def read_small_file(
    path: Path, fail: Fail, limit: int = MAX_INPUT_BYTES, *, strict: bool = False
) -> tuple[bytes, FileIdentity]:
    """The whole content of a regular file of at most ``limit`` bytes (blocking: run it in
    an ``OffLoopReader``).

    ``strict`` (for files holding a secret we accept, like the auth token): do not follow
    a symlink in a directory others can write to, and refuse a file owned by another user
    or writable by group or others. ``FileNotFoundError`` propagates for the caller to
    explain; every other problem is raised as ``fail(problem)``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if strict and others_can_write(path.parent):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if flags & os.O_NOFOLLOW and path.is_symlink():
            raise fail(
                f"is a symbolic link in {path.parent}, a directory other users can write "
                "to: refused, since another user could have planted it; use the file's "
                "real path or a private directory"
            ) from None
        raise fail(f"cannot be opened ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"is {_kind(st.st_mode)}, not a regular file: point it at a regular file")
        if strict and (problem := ownership_problem(st)):
            raise fail(problem)
        if st.st_size > limit:
            raise fail(_too_big(limit))
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(16384, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise fail(_too_big(limit))  # it grew after fstat
        return b"".join(chunks), FileIdentity.of(st)
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def _too_big(limit: int) -> str:
    return f"is larger than {size_text(limit)}: is it the right file?"


class OffLoopReader:
    """Runs blocking reads of one source in daemon threads, one at a time.

    Not the loop's default executor: a stuck read there would take a thread every other
    part of the daemon shares, and ``asyncio.run`` joins those threads at exit.
    """

    def __init__(self, name: str, timeout: float = READ_TIMEOUT) -> None:
        self._name = name
        self._timeout = timeout
        #: Set when the last read's work returned (unset while it may still be stuck).
        self._returned = threading.Event()
        self._returned.set()

    @property
    def stuck(self) -> bool:
        """True while an earlier read has not returned (it may never)."""
        return not self._returned.is_set()

    async def run(self, work: Callable[[], T], fail: Fail) -> T:
        """``work()`` in a thread; ``fail(problem)`` if it is stuck, now or before."""
        if self.stuck:
            raise fail(
                "cannot be read: the previous read has not returned yet (a hung network "
                "mount?); not starting another"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def deliver(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        returned = self._returned = threading.Event()

        def thread_main() -> None:
            try:
                result, error = work(), None
            except Exception as exc:  # handed to the awaiting task, not swallowed
                result, error = None, exc
            returned.set()
            # RuntimeError: the loop has closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, result, error)

        thread = threading.Thread(target=thread_main, name=f"read:{self._name}", daemon=True)
        thread.start()
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            raise fail(
                f"cannot be read: reading did not finish within {self._timeout:g}s "
                "(a hung network mount?)"
            ) from None
