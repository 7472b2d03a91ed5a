"""What every token source shares: the token, its claims, and what we can tell before STS.

Claims are decoded *without* verifying the signature (STS does that): only to fail fast
with a clear message on an expired, malformed or wrongly addressed token, and to log who
we claim to be (never the token). Every source is bounded: at most ``MAX_TOKEN_BYTES``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from sidecar.core.credentials import format_expiration
from sidecar.core.errors import Disposition, TokenError, TokenExpiredError
from sidecar.core.safe_read import MAX_INPUT_BYTES, size_text
from sidecar.sources.unverified_jwt import unverified_claims

#: The audience STS expects unless told otherwise (the IAM OIDC provider's client id).
DEFAULT_AUDIENCE = "sts.amazonaws.com"
#: STS accepts a token up to about this long past its ``exp`` (clock skew allowance).
STS_EXP_LEEWAY = 300
#: The most any source may deliver (a JWT is a few KB).
MAX_TOKEN_BYTES = MAX_INPUT_BYTES
#: Time claims past this (9999-12-31T23:59:59Z) cannot be represented as a date.
_MAX_TIMESTAMP = 253402300799


@dataclass(frozen=True)
class TokenClaims:
    """The claims worth logging and checking, and the rest for session-name templates."""

    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: datetime | None
    other: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

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
    #: Where it came from, for error messages ("token file /var/run/...").
    origin: str


class TokenSource(Protocol):
    async def fetch(self) -> WebIdentityToken:
        """A token for one exchange attempt; raises ``TokenError`` with the cause."""
        ...


@runtime_checkable
class TokenWatch(Protocol):
    """A source that can tell cheaply, without fetching, that its token (probably) changed."""

    async def fingerprint(self) -> Hashable:
        """A value that changes when the token changes; raises ``TokenError`` if stuck."""
        ...

    def last_read(self) -> Hashable | None:
        """The fingerprint of what the last ``fetch`` read, if it read anything."""
        ...


def audiences_of(value: str) -> tuple[str, ...] | None:
    """The audiences JWT ``value`` names (decoded, not verified); None if it is not a JWT
    with a well-formed ``aud``."""
    try:
        return _audience_claim(unverified_claims(value), "a JWT")
    except (ValueError, TokenError):
        return None


def inspect_token(
    value: str, origin: str, now: datetime, audience: str | None = None
) -> TokenClaims:
    """Decode claims without verification; reject what STS would certainly reject.

    The claims come from whoever wrote the token: every type and range is checked, so a
    malformed token is a ``TokenError`` naming the claim, never a crash.
    """
    try:
        payload = unverified_claims(value)
    except ValueError as exc:
        raise TokenError(
            f"{origin} does not hold a JWT ({exc}); it must contain an OIDC ID token "
            "(three base64url parts separated by dots)"
        ) from None
    issuer = _text_claim(payload, "iss", origin)
    subject = _text_claim(payload, "sub", origin)
    audiences = _audience_claim(payload, origin)
    expires_at = _time_claim(payload, "exp", origin)
    for name in ("nbf", "iat"):
        _time_claim(payload, name, origin)
    claims = TokenClaims(
        issuer=issuer,
        subject=subject,
        audience=audiences,
        expires_at=expires_at,
        other=payload,
    )
    if expires_at is not None:
        overdue = (now - expires_at).total_seconds()
        if overdue > STS_EXP_LEEWAY:
            raise TokenExpiredError(
                f"{origin} holds a token that expired at {claims.expires_text} "
                f"({overdue:.0f}s ago); whatever writes it (kubelet, CI agent) has stopped "
                "renewing it"
            )
    if audience and audience not in audiences:
        raise TokenError(
            f"{origin} holds a token for audience {','.join(audiences) or '(none)'}, but STS "
            f"is expected to see {audience}: request the token for audience {audience} "
            "(Kubernetes: serviceAccountToken.audience; GitLab: id_tokens.<name>.aud) or "
            "change --audience to match the IAM OIDC provider's client ID",
            Disposition.FATAL,
        )
    return claims


def _malformed(origin: str, name: str, value: object, expected: str) -> TokenError:
    if isinstance(value, bool) or value is None:
        shown = json.dumps(value)
    elif isinstance(value, int | float):
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)[:24]
    else:
        names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
        shown = names.get(type(value), "a value")
    return TokenError(
        f"{origin} holds a malformed token: its {name} claim is {shown}, but it must be "
        f"{expected}; whatever issues the token is broken or it is not an OIDC ID token"
    )


def _text_claim(payload: Mapping[str, Any], name: str, origin: str) -> str:
    value = payload.get(name, "")
    if not isinstance(value, str):
        raise _malformed(origin, name, value, "a string")
    return value


def _audience_claim(payload: Mapping[str, Any], origin: str) -> tuple[str, ...]:
    value = payload.get("aud", ())
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise _malformed(origin, "aud", value, "a string or a list of strings")


def _time_claim(payload: Mapping[str, Any], name: str, origin: str) -> datetime | None:
    if name not in payload:
        return None
    value = payload[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_TIMESTAMP
    ):
        raise _malformed(
            origin, name, value, "a time in seconds since 1970 (a number up to year 9999)"
        )
    return datetime.fromtimestamp(value, UTC)


def read_token(
    raw: bytes | str, origin: str, now: datetime, audience: str | None
) -> WebIdentityToken:
    """A token from raw source output: text checks, then ``inspect_token``."""
    value = _from_text(raw, origin)
    return WebIdentityToken(value, inspect_token(value, origin, now, audience), origin)


def _from_text(raw: bytes | str, origin: str) -> str:
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        text.encode("ascii")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise TokenError(f"{origin} is not ASCII text, so it is not a JWT") from None
    if len(text) > MAX_TOKEN_BYTES:
        raise TokenError(
            f"{origin} holds more than {size_text(MAX_TOKEN_BYTES)} (a token is a few KB): "
            "is it the right source?"
        )
    # JWTs never contain whitespace; a trailing newline from `echo` is harmless here.
    value = text.strip()
    if not value:
        raise TokenError(f"{origin} is empty")
    return value
