"""The endpoint's auth token: generation, validation, rotation, constant-time check."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sidecar.auth import AuthToken, ensure_token_file, read_token_file
from sidecar.errors import AuthTokenError


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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
    auth = AuthToken(path, Ticker())
    assert auth.check("x" * 40)
    for wrong in (None, "", "x" * 39, "x" * 41, "Bearer " + "x" * 40, "x" * 40 + " ", "é" * 40):
        assert not auth.check(wrong)
    assert "x" * 40 not in repr(auth)


def test_rotation_is_picked_up(tmp_path: Path) -> None:
    """A rewritten token file is accepted after the recheck interval; a broken one is not."""
    path = tmp_path / "auth-token"
    path.write_text("a" * 40)
    ticker = Ticker()
    auth = AuthToken(path, ticker)
    path.write_text("b" * 41)
    assert auth.check("a" * 40)  # not rechecked within a second
    ticker.now = 2
    assert auth.check("b" * 41)
    assert not auth.check("a" * 40)
    path.write_text("c" * 40 + "\n")  # broken rewrite: keep the last good token
    ticker.now = 4
    assert auth.check("b" * 41)
