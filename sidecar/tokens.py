"""Where web-identity tokens come from, and what we can tell about them before STS does.

A ``TokenSource`` produces a fresh token for every exchange attempt. The file source
re-reads its file each time, which is what a Kubernetes projected token (rewritten by the
kubelet at 80% of its lifetime through a ``..data`` symlink swap) requires.

Claims are decoded *without* verifying the signature (STS does that): only to fail fast
with a clear message on an expired or malformed token, and to log who we claim to be.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt

from sidecar.clock import Clock
from sidecar.credentials import format_expiration
from sidecar.errors import TokenError

#: STS accepts a token up to about this long past its ``exp`` (clock skew allowance).
STS_EXP_LEEWAY = 300


@dataclass(frozen=True)
class TokenClaims:
    """The claims worth logging and checking; never the token itself."""

    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: datetime | None

    @property
    def expires_text(self) -> str:
        return format_expiration(self.expires_at) if self.expires_at else "none"

    def describe(self) -> str:
        aud = ",".join(self.audience)
        return f"iss={self.issuer} sub={self.subject} aud={aud} exp={self.expires_text}"


@dataclass(frozen=True)
class WebIdentityToken:
    value: str = field(repr=False)
    claims: TokenClaims
    #: Where it came from, for error messages ("file /var/run/...").
    origin: str


class TokenSource(Protocol):
    async def fetch(self) -> WebIdentityToken:
        """A token for one exchange attempt; raises ``TokenError`` with the cause."""
        ...


def inspect_token(value: str, origin: str, now: datetime) -> TokenClaims:
    """Decode claims without verification; reject what STS would certainly reject."""
    try:
        payload: dict[str, Any] = jwt.decode(
            value,
            options={"verify_signature": False, "verify_exp": False, "verify_aud": False},
        )
    except jwt.DecodeError as exc:
        raise TokenError(
            f"{origin} does not hold a JWT ({exc}); it must contain an OIDC ID token "
            "(three base64url parts separated by dots)"
        ) from None
    aud = payload.get("aud", ())
    audience = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud)
    exp = payload.get("exp")
    expires_at = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None
    claims = TokenClaims(
        issuer=str(payload.get("iss", "")),
        subject=str(payload.get("sub", "")),
        audience=audience,
        expires_at=expires_at,
    )
    if expires_at is not None:
        overdue = (now - expires_at).total_seconds()
        if overdue > STS_EXP_LEEWAY:
            raise TokenError(
                f"{origin} holds a token that expired at {format_expiration(expires_at)} "
                f"({overdue:.0f}s ago); whatever writes it (kubelet, CI agent) has stopped "
                "renewing it"
            )
    return claims


class FileTokenSource:
    """A token file re-read on every fetch."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileTokenSource({str(self.path)!r})"

    async def fetch(self) -> WebIdentityToken:
        origin = f"token file {self.path}"
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except FileNotFoundError:
            raise TokenError(f"{origin} does not exist (is the volume mounted?)") from None
        except OSError as exc:
            raise TokenError(f"{origin} cannot be read: {exc.strerror}") from None
        try:
            # JWTs never contain whitespace; a trailing newline from `echo` is harmless here.
            value = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TokenError(f"{origin} is not ASCII text, so it is not a JWT") from None
        if not value:
            raise TokenError(f"{origin} is empty (is it still being written?)")
        claims = inspect_token(value, origin, self._clock.now())
        return WebIdentityToken(value=value, claims=claims, origin=origin)
