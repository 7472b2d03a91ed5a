"""The token file source: re-read each time, kubelet-style rotation, clear errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar.core.clock import SystemClock
from sidecar.core.errors import TokenError
from sidecar.devmode.issuer import OidcIssuer
from sidecar.devmode.token_writer import ProjectedTokenWriter
from sidecar.sources.file import FileTokenSource

ISSUER = OidcIssuer("https://oidc.example/ci")


async def test_reads_claims_without_exposing_token(tmp_path: Path) -> None:
    """Claims are decoded for logs; the token never shows in repr."""
    path = tmp_path / "token"
    token = ISSUER.mint("repo:org/app:ref:refs/heads/main", audience=["sts.amazonaws.com", "x"])
    path.write_text(token + "\n")  # a trailing newline from `echo` is tolerated
    fetched = await FileTokenSource(path, SystemClock()).fetch()
    assert fetched.value == token
    assert fetched.claims.issuer == "https://oidc.example/ci"
    assert fetched.claims.subject == "repo:org/app:ref:refs/heads/main"
    assert fetched.claims.audience == ("sts.amazonaws.com", "x")
    assert token not in repr(fetched)


async def test_kubelet_rotation_is_followed(tmp_path: Path) -> None:
    """After an atomic ..data symlink swap the next fetch returns the new token."""
    writer = ProjectedTokenWriter(tmp_path / "sa")
    source = FileTokenSource(writer.path, SystemClock())
    writer.write(ISSUER.mint("first"))
    assert (await source.fetch()).claims.subject == "first"
    writer.write(ISSUER.mint("second"))
    assert (await source.fetch()).claims.subject == "second"
    assert len([p for p in writer.directory.iterdir() if p.name.startswith("..20")]) == 1


async def test_mv_replacement_is_followed(tmp_path: Path) -> None:
    """A token replaced by rename (mv) is picked up on the next fetch."""
    path = tmp_path / "token"
    path.write_text(ISSUER.mint("old"))
    source = FileTokenSource(path, SystemClock())
    assert (await source.fetch()).claims.subject == "old"
    staged = tmp_path / "token.new"
    staged.write_text(ISSUER.mint("new"))
    staged.replace(path)
    assert (await source.fetch()).claims.subject == "new"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "is empty"),
        ("not-a-jwt", "does not hold a JWT"),
        (b"\xff\xfe", "not ASCII"),
    ],
)
async def test_bad_token_files(tmp_path: Path, content: str | bytes, match: str) -> None:
    """Empty, non-JWT and binary files are refused, naming the file."""
    path = tmp_path / "token"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(TokenError, match=match) as caught:
        await FileTokenSource(path, SystemClock()).fetch()
    assert str(path) in str(caught.value)


async def test_expired_token_names_file_and_exp(tmp_path: Path) -> None:
    """A token past exp (beyond STS's 5 min allowance) is refused with its exp time."""
    path = tmp_path / "token"
    path.write_text(ISSUER.mint(ttl=-3600, now=time.time()))
    with pytest.raises(TokenError, match=r"expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ") as caught:
        await FileTokenSource(path, SystemClock()).fetch()
    assert str(path) in str(caught.value)


async def test_slightly_expired_token_is_left_to_sts(tmp_path: Path) -> None:
    """Within STS's clock-skew allowance the token is still sent."""
    path = tmp_path / "token"
    path.write_text(ISSUER.mint(ttl=-60))
    assert (await FileTokenSource(path, SystemClock()).fetch()).claims.subject


async def test_missing_file(tmp_path: Path) -> None:
    """A missing file asks whether the volume is mounted."""
    with pytest.raises(TokenError, match="does not exist"):
        await FileTokenSource(tmp_path / "nope", SystemClock()).fetch()
