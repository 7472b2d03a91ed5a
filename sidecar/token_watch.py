"""Noticing that a token source now holds a different token, cheaply and off the event loop.

While a role fails for a token reason (STS refused the token, or it could not be read), the
refresher polls a ``TokenWatch`` about once a second and retries as soon as the token
changes: a fixed or rotated token file is tried at once instead of at the slow-retry pace.

A file's fingerprint is its identity (device, inode, size, mtime) plus a digest of at most
``MAX_WATCH_BYTES``; only regular files are read, opened non-blocking, in a daemon thread
that shutdown never waits for, and at most one look per watch is outstanding (a hung
network mount costs one stuck thread, not one a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol, TypeVar

from sidecar.tokens import FileTokenSource, TokenSource

#: A JWT is a few KB: a change beyond this many bytes is seen through size and mtime.
MAX_WATCH_BYTES = 64 * 1024

T = TypeVar("T")


class TokenWatch(Protocol):
    async def fingerprint(self) -> Hashable:
        """A value that changes when the token source's token (probably) changed."""
        ...


def file_fingerprint(path: Path) -> Hashable:
    """(dev, inode, size, mtime, sha256 of the first 64 KiB), or why there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return ("unreadable", exc.errno)
    try:
        info = os.fstat(fd)
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device: never read it
            return ("not a regular file", *identity)
        digest = hashlib.sha256()
        left = MAX_WATCH_BYTES
        while left > 0 and (chunk := os.read(fd, min(left, 16384))):
            digest.update(chunk)
            left -= len(chunk)
        return (*identity, digest.digest())
    except OSError as exc:
        return ("unreadable", exc.errno)
    finally:
        os.close(fd)


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """``work()`` in a new daemon thread: a stuck call never holds up the loop or exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = work(), None
        except Exception as exc:  # handed to the awaiting task, which decides
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="token-watch", daemon=True).start()
    return await future


class FileTokenWatch:
    """Fingerprints a token file; at most one look in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._look: asyncio.Future[Hashable] | None = None

    async def fingerprint(self) -> Hashable:
        if self._look is None or self._look.done():
            self._look = asyncio.ensure_future(
                in_daemon_thread(lambda: file_fingerprint(self.path))
            )
            self._look.add_done_callback(_retrieve)
        # Shielded: a caller that gives up leaves the look to finish and be reused.
        return await asyncio.shield(self._look)


def _retrieve(future: asyncio.Future[Hashable]) -> None:
    """Mark an abandoned look's outcome as seen (asyncio would log it as unretrieved)."""
    if not future.cancelled():
        future.exception()


def watch_for(source: TokenSource) -> TokenWatch | None:
    """How to notice a new token in ``source``; None where looking is not cheap.

    Only files: an environment variable never changes, and a command or the GitHub token
    endpoint would have to be run or called to know.
    """
    if isinstance(source, FileTokenSource):
        return FileTokenWatch(source.path)
    return None
