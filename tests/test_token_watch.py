"""Token-change fingerprints: cheap, bounded, never blocking, and blind to nothing that matters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.core.clock import SystemClock
from sidecar.core.errors import TokenError
from sidecar.devmode.issuer import OidcIssuer
from sidecar.sources.base import MAX_TOKEN_BYTES
from sidecar.sources.env import EnvTokenSource
from sidecar.sources.file import FileTokenSource
from sidecar.sources.registry import watch_for


def source(path: Path) -> FileTokenSource:
    return FileTokenSource(path, SystemClock())


async def test_rewritten_content_changes_the_fingerprint(tmp_path: Path) -> None:
    """A token rewritten in place with the same size and mtime still changes the fingerprint."""
    path = tmp_path / "token"
    path.write_text("aaaa")
    stat = path.stat()
    watch = source(path)
    before = await watch.fingerprint()
    path.write_text("bbbb")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert await watch.fingerprint() != before


async def test_unchanged_file_keeps_its_fingerprint(tmp_path: Path) -> None:
    """Looking twice at an untouched file gives the same fingerprint."""
    path = tmp_path / "token"
    path.write_text("aaaa")
    watch = source(path)
    assert await watch.fingerprint() == await watch.fingerprint()


async def test_replaced_and_created_files_are_changes(tmp_path: Path) -> None:
    """A missing file, then created, then swapped by rename (kubelet style): each a change."""
    path = tmp_path / "token"
    watch = source(path)
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
    fingerprint = await source(path).fingerprint()
    assert isinstance(fingerprint, tuple) and fingerprint[0] == "unusable"
    assert "FIFO" in str(fingerprint[1])


async def test_an_oversized_file_is_not_read_but_still_watched(tmp_path: Path) -> None:
    """A file over the token cap is not digested, yet growing it is still a change."""
    path = tmp_path / "token"
    path.write_bytes(b"a" * (MAX_TOKEN_BYTES + 1))
    watch = source(path)
    before = await watch.fingerprint()
    assert isinstance(before, tuple) and before[0] == "unusable"
    path.write_bytes(b"a" * (MAX_TOKEN_BYTES + 2))
    assert await watch.fingerprint() != before


def test_only_files_are_watched(tmp_path: Path) -> None:
    """Files are watched; an environment variable, which cannot change, is not."""
    clock = SystemClock()
    file_source = FileTokenSource(tmp_path / "t", clock)
    assert watch_for(file_source) is file_source
    assert watch_for(EnvTokenSource("X", {}, clock)) is None


async def test_last_read_is_what_the_fetch_read(tmp_path: Path) -> None:
    """After a fetch, last_read() fingerprints the token it read: equal to a look at the
    untouched file, different once the file is rewritten; a failed read leaves None."""
    issuer = OidcIssuer("https://issuer.example")
    path = tmp_path / "token"
    path.write_text(issuer.mint())
    watch = source(path)
    assert watch.last_read() is None
    await watch.fetch()
    assert watch.last_read() == await watch.fingerprint()
    path.write_text(issuer.mint(subject="another"))
    assert watch.last_read() != await watch.fingerprint()
    path.unlink()
    with pytest.raises(TokenError):
        await watch.fetch()
    assert watch.last_read() is None
