"""The endpoint's auth token: generation, validation, rotation, constant-time check."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from sidecar.core.errors import AuthTokenError
from sidecar.tenancy.auth_tokens import (
    RECHECK_SECONDS,
    AuthToken,
    ensure_token_file,
    read_token_file,
)
from tests.fakes import FakeClock, settle


def test_generated_token_file(tmp_path: Path) -> None:
    """A missing file is created 0600 with 32 random bytes as URL-safe text, no newline."""
    path = tmp_path / "auth-token"
    assert ensure_token_file(path) is True
    text = path.read_text()
    assert len(text) == 43 and "\n" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_token_file(path) is False
    assert path.read_text() == text
    other = tmp_path / "other"
    ensure_token_file(other)
    assert other.read_text() != text


def test_trailing_newline_is_refused(tmp_path: Path) -> None:
    """A token file ending in a newline would break every SDK: refused with the fix."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 32 + "\n")
    with pytest.raises(AuthTokenError, match="printf %s"):
        read_token_file(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "empty"), ("short", "at least 16"), ("has space" * 3, "whitespace|printable")],
)
def test_unusable_tokens_are_refused(tmp_path: Path, content: str, match: str) -> None:
    """Empty, short or non-header-safe tokens are refused with a reason."""
    path = tmp_path / "auth-token"
    path.write_text(content)
    with pytest.raises(AuthTokenError, match=match):
        read_token_file(path)


def test_missing_directory_is_explained(tmp_path: Path) -> None:
    """Creating a token in a missing directory names the problem."""
    with pytest.raises(AuthTokenError, match="directory"):
        ensure_token_file(tmp_path / "nope" / "auth-token")


def test_check_compares_exactly(tmp_path: Path) -> None:
    """Only the exact token passes: no Bearer prefix, no trimming, no prefix match."""
    path = tmp_path / "auth-token"
    path.write_text("x" * 40)
    auth = AuthToken.from_file(path)
    assert auth.check("x" * 40)
    for wrong in (None, "", "x" * 39, "x" * 41, "Bearer " + "x" * 40, "x" * 40 + " ", "é" * 40):
        assert not auth.check(wrong)
    assert "x" * 40 not in repr(auth)


async def test_rotation_is_picked_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A rewritten token file is accepted after a poll; a broken rewrite keeps the last good."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 40)
    auth = await AuthToken.load(path)
    path.write_text("b" * 41)
    assert auth.check("a" * 40)  # nothing changes until the watcher polls
    await auth.poll()
    assert auth.check("b" * 41)
    assert not auth.check("a" * 40)
    path.write_text("c" * 40 + "\n")  # broken rewrite: keep the last good token
    await auth.poll()
    await auth.poll()
    assert auth.check("b" * 41)
    failures = [r for r in caplog.records if getattr(r, "event", "") == "auth_token_reload_failed"]
    assert len(failures) == 1  # said once, not once a poll
    assert "printf %s" in failures[0].getMessage()


async def test_watch_polls_once_a_second(tmp_path: Path) -> None:
    """The watcher task re-checks the file every second of the injected clock."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 40)
    auth = await AuthToken.load(path)
    clock = FakeClock()
    watcher = asyncio.create_task(auth.watch(clock))
    try:
        await settle()
        assert clock.next_wakeup() == RECHECK_SECONDS  # seconds until it wakes
        path.write_text("b" * 40)
        await clock.advance(RECHECK_SECONDS)
        for _ in range(200):  # the re-read runs in a thread: wait for it, not for time
            if auth.check("b" * 40):
                break
            await asyncio.sleep(0.01)
        assert auth.check("b" * 40)
    finally:
        watcher.cancel()
        await asyncio.wait([watcher])


def test_check_never_reads_the_file(tmp_path: Path) -> None:
    """check() compares with memory only: a FIFO swapped in cannot block a request."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 40)
    auth = AuthToken.from_file(path)
    path.unlink()
    os.mkfifo(path)
    assert auth.check("a" * 40)


@pytest.mark.parametrize("kind", ["fifo", "huge", "directory"])
async def test_unreadable_replacement_keeps_last_token(tmp_path: Path, kind: str) -> None:
    """A FIFO, 300 MiB file or directory swapped in is refused off the loop; the token stays."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 40)
    auth = await AuthToken.load(path)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        with path.open("wb") as handle:
            handle.truncate(300 * 1024 * 1024)
    await asyncio.wait_for(auth.poll(), 5)
    assert auth.check("a" * 40)
    with pytest.raises(AuthTokenError, match=r"not a regular file|larger than 64 KiB"):
        await asyncio.wait_for(AuthToken.load(path), 5)


async def test_deleting_the_file_revokes_the_token(tmp_path: Path) -> None:
    """A deleted token file refuses every request until a file is back."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 40)
    auth = await AuthToken.load(path)
    path.unlink()
    await auth.poll()
    assert not auth.check("a" * 40)
    path.write_text("b" * 40)
    await auth.poll()
    assert auth.check("b" * 40)
    assert not auth.check("a" * 40)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving a file to another user (chown) needs root"
)
OTHER_UID = 4242


def _sticky_dir(tmp_path: Path) -> Path:
    """A world-writable sticky directory, like /tmp."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


@needs_root
def test_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A token file planted by another user (even at mode 0600) is refused."""
    path = _sticky_dir(tmp_path) / "auth-token"
    path.write_text("p" * 40)
    path.chmod(0o600)
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(AuthTokenError, match=f"owned by uid {OTHER_UID}"):
        read_token_file(path)


@needs_root
def test_symlink_in_shared_directory_is_refused(tmp_path: Path) -> None:
    """In a directory others can write to, a symlink (maybe planted) is not followed."""
    target = tmp_path / "elsewhere"
    target.write_text("p" * 40)
    target.chmod(0o600)
    link = _sticky_dir(tmp_path) / "auth-token"
    link.symlink_to(target)
    with pytest.raises(AuthTokenError, match="symbolic link"):
        read_token_file(link)


def test_symlink_in_private_directory_is_followed(tmp_path: Path) -> None:
    """In a directory only we can write to, a symlink (Kubernetes ..data) is fine."""
    tmp_path.chmod(0o700)
    target = tmp_path / "real"
    target.write_text("k" * 40)
    link = tmp_path / "auth-token"
    link.symlink_to(target)
    assert read_token_file(link)[0] == "k" * 40


def test_group_writable_file_is_refused(tmp_path: Path) -> None:
    """A token file others could rewrite is refused, with the chmod that fixes it."""
    path = tmp_path / "auth-token"
    path.write_text("w" * 40)
    path.chmod(0o620)
    with pytest.raises(AuthTokenError, match=r"writable by group or others.*chmod 600"):
        read_token_file(path)


@needs_root
async def test_planted_replacement_is_refused_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-read applies the same checks: another user's file keeps the last good token."""
    path = _sticky_dir(tmp_path) / "auth-token"
    path.write_text("a" * 40)
    path.chmod(0o600)
    auth = await AuthToken.load(path)
    path.unlink()
    path.write_text("p" * 40)
    path.chmod(0o600)
    os.chown(path, OTHER_UID, OTHER_UID)
    await auth.poll()
    assert auth.check("a" * 40)
    assert not auth.check("p" * 40)
    assert any("owned by uid" in r.getMessage() for r in caplog.records)


@needs_root
def test_creation_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    """Generating the token never writes through a symlink planted at its path."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = _sticky_dir(tmp_path) / "auth-token"
    link.symlink_to(victim)
    assert ensure_token_file(link) is False
    assert victim.read_text() == "keep"
    with pytest.raises(AuthTokenError, match="symbolic link"):
        read_token_file(link)
