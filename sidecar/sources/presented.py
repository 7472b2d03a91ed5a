"""The node agent's source: the token a pod presented with its request, already verified.

One source per identity (issuer, subject, role): every request of that identity offers
its token, and the source keeps the most recent one, so the next exchange (a refresh
ahead of expiry, long after the pod's first request) uses the latest token any of its
pods showed. A changed token is visible to the refresher's token watch, so an
identity failing on an expired token recovers as soon as a pod presents a new one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from sidecar.core.clock import Clock
from sidecar.core.errors import TokenError
from sidecar.core.secret import Secret
from sidecar.sources.base import DEFAULT_AUDIENCE, WebIdentityToken, read_token


@dataclass(frozen=True)
class PresentedSource:
    """The caller's own token (node agent); not a ``--token-source`` choice."""

    kind: ClassVar[str] = "request"
    audience: str = DEFAULT_AUDIENCE


class PresentedTokenSource:
    def __init__(self, subject: str, clock: Clock, audience: str | None = None) -> None:
        self.subject = subject
        self._clock = clock
        self._audience = audience
        self._token: Secret | None = None
        self._expires_at: datetime | None = None
        self._last_read: Hashable | None = None

    def __repr__(self) -> str:
        return f"PresentedTokenSource({self.subject!r})"

    def offer(self, token: Secret, expires_at: datetime) -> bool:
        """Hold ``token`` (verified by the caller): the most recently presented one wins,
        whatever its lifetime, so no pod can pin its account to a long-lived token that STS
        has since come to refuse (a rotated key). True if it replaced another."""
        held = self._token
        # The verifier hands out one object per cached token: the common case is "the same".
        if held is token or (
            held is not None
            and hmac.compare_digest(held.reveal().encode(), token.reveal().encode())
        ):
            return False
        self._token, self._expires_at = token, expires_at
        return True

    def _fingerprint(self) -> Hashable:
        token = self._token
        return None if token is None else hashlib.sha256(token.reveal().encode()).digest()

    async def fetch(self) -> WebIdentityToken:
        origin = f"the token presented for {self.subject}"
        token = self._token
        if token is None:
            raise TokenError(f"no token has been presented for {self.subject} yet")
        self._last_read = self._fingerprint()
        # Verified already; this re-checks exp against the clock now (the exchange may run
        # long after the request that brought the token).
        return read_token(token.reveal(), origin, self._clock.now(), self._audience)

    async def fingerprint(self) -> Hashable:
        return self._fingerprint()

    def last_read(self) -> Hashable | None:
        return self._last_read
