"""Token-change fingerprints: cheap, bounded, never blocking, and blind to nothing that matters."""

from __future__ import annotations

import os
from pathlib import Path

from sidecar.clock import SystemClock
from sidecar.token_watch import MAX_WATCH_BYTES, FileTokenWatch, watch_for
from sidecar.tokens import EnvTokenSource, FileTokenSource


async def test_same_size_and_mtime_but_new_content_is_a_change(tmp_path: Path) -> None:
    """A token rewritten in place with the same size and mtime still changes the fingerprint."""
    path = tmp_path / "token"
    path.write_text("a" * 100)
    stat = path.stat()
    watch = FileTokenWatch(path)
    before = await watch.fingerprint()
    path.write_text("b" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert await watch.fingerprint() != before


async def test_unchanged_file_keeps_its_fingerprint(tmp_path: Path) -> None:
    """Looking twice at an untouched file gives the same fingerprint."""
    path = tmp_path / "token"
    path.write_text("token")
    watch = FileTokenWatch(path)
    assert await watch.fingerprint() == await watch.fingerprint()


async def test_replaced_and_created_files_are_changes(tmp_path: Path) -> None:
    """A missing file, then created, then swapped by rename (kubelet style): each a change."""
    path = tmp_path / "token"
    watch = FileTokenWatch(path)
    missing = await watch.fingerprint()
    path.write_text("one")
    created = await watch.fingerprint()
    (tmp_path / "new").write_text("one")
    (tmp_path / "new").rename(path)
    swapped = await watch.fingerprint()
    assert len({missing, created, swapped}) == 3


async def test_a_fifo_is_never_read(tmp_path: Path) -> None:
    """A FIFO as the token file gives a fingerprint at once (it is not read, so no block)."""
    path = tmp_path / "token"
    os.mkfifo(path)
    fingerprint = await FileTokenWatch(path).fingerprint()
    assert isinstance(fingerprint, tuple) and fingerprint[0] == "not a regular file"


async def test_only_the_first_64_kib_are_read(tmp_path: Path) -> None:
    """Content beyond MAX_WATCH_BYTES is not digested (size and mtime still change)."""
    path = tmp_path / "token"
    path.write_bytes(b"a" * MAX_WATCH_BYTES + b"x")
    stat = path.stat()
    watch = FileTokenWatch(path)
    before = await watch.fingerprint()
    path.write_bytes(b"a" * MAX_WATCH_BYTES + b"y")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert await watch.fingerprint() == before


def test_only_files_are_watched(tmp_path: Path) -> None:
    """Files are watched; an environment variable, which cannot change, is not."""
    clock = SystemClock()
    assert isinstance(watch_for(FileTokenSource(tmp_path / "t", clock)), FileTokenWatch)
    assert watch_for(EnvTokenSource("X", {}, clock)) is None
