"""The node agent's token source: the freshest verified token any pod of an identity
presented, re-checked against the clock when an exchange reads it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from sidecar.core.errors import TokenError
from sidecar.core.secret import Secret
from sidecar.devmode.issuer import OidcIssuer
from sidecar.sources.base import TokenWatch
from sidecar.sources.presented import PresentedTokenSource
from tests.fakes import FakeClock

SUBJECT = "system:serviceaccount:payments:api"
ISSUER = OidcIssuer("https://oidc.example.com/cluster-1")


def presented(clock: FakeClock, ttl: float) -> tuple[Secret, datetime]:
    """A token as the verifier hands it on: the secret and its exp."""
    now = clock.now().timestamp()
    token = ISSUER.mint(SUBJECT, ttl=ttl, now=now)
    return Secret(token), datetime.fromtimestamp(int(now + ttl), UTC)


async def test_nothing_presented_yet_is_a_token_error() -> None:
    """Before any pod presented a token, an exchange gets a TokenError naming the subject."""
    source = PresentedTokenSource(SUBJECT, FakeClock())
    with pytest.raises(TokenError, match="no token has been presented for " + SUBJECT):
        await source.fetch()


async def test_the_most_recent_token_is_kept() -> None:
    """The latest token presented replaces the one held, even one that lives longer (a pod
    must not pin its account to a long-lived token STS may come to refuse); the same token
    again changes nothing."""
    clock = FakeClock()
    source = PresentedTokenSource(SUBJECT, clock, "sts.amazonaws.com")
    long, short = presented(clock, 86400), presented(clock, 1800)
    assert source.offer(*long)
    assert source.offer(*short)
    assert not source.offer(*short)
    fetched = await source.fetch()
    assert fetched.value == short[0].reveal()
    assert fetched.claims.subject == SUBJECT
    assert SUBJECT in fetched.origin


async def test_an_expired_token_is_refused_when_read() -> None:
    """The token is checked again when an exchange reads it, long after the request that
    brought it: once expired, the exchange gets a TokenError, not STS's refusal."""
    clock = FakeClock()
    source = PresentedTokenSource(SUBJECT, clock)
    source.offer(*presented(clock, 600))
    await source.fetch()
    await clock.advance(3600)
    with pytest.raises(TokenError, match="expired"):
        await source.fetch()


async def test_a_new_token_changes_the_fingerprint() -> None:
    """The source is a token watch: a newly kept token changes its fingerprint, so a
    refresher failing on the old one retries at once; last_read is what was exchanged."""
    clock = FakeClock()
    source = PresentedTokenSource(SUBJECT, clock)
    assert isinstance(source, TokenWatch)
    assert await source.fingerprint() is None and source.last_read() is None
    first = presented(clock, 600)
    source.offer(*first)
    await source.fetch()
    assert source.last_read() == await source.fingerprint()
    assert source.last_read() == hashlib.sha256(first[0].reveal().encode()).digest()
    source.offer(*presented(clock, 3600))
    assert await source.fingerprint() != source.last_read()


def test_repr_never_shows_the_token() -> None:
    """The source's repr names the subject only."""
    clock = FakeClock()
    source = PresentedTokenSource(SUBJECT, clock)
    token, expires = presented(clock, 600)
    source.offer(token, expires)
    assert repr(source) == f"PresentedTokenSource({SUBJECT!r})"
    assert token.reveal() not in repr(vars(source))
