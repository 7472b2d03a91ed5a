"""STS error codes: how to react to each, and what to tell the operator.

The one place that knows STS's error vocabulary. ``classify`` feeds the refresher's retry
decisions; ``explain`` turns the terse STS message into the likely cause and fix, using
the token's claims (never the token).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from sidecar.core.credentials import account_from_arn, format_expiration
from sidecar.core.errors import Disposition, SidecarError, StsError, TokenError
from sidecar.sources.base import TokenClaims

RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "IDPCommunicationError",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "NetworkError",
        "Timeout",
    }
)
THROTTLING_CODES = frozenset(
    {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)
NEW_TOKEN_CODES = frozenset({"ExpiredTokenException", "ExpiredToken"})
#: Web-identity refusals that a different token can cure (a fixed or rotated token file).
TOKEN_CODES = frozenset({"InvalidIdentityToken", "ExpiredTokenException", "IDPRejectedClaim"})
#: A later hop's AssumeRole refusing its caller: the previous hop's credentials expired or
#: were revoked ("revoke active sessions"), so the chain must restart from the web identity.
CALLER_REJECTED_CODES = frozenset(
    {"ExpiredToken", "InvalidClientTokenId", "AccessDenied", "AccessDeniedException"}
)
#: Our clock and the ``Date`` of STS's answer differing by less than this is measurement
#: noise (``Date`` has 1 s resolution, plus the request's latency).
SKEW_TOLERANCE = 5.0
#: Retried quickly a few times (STS fetching the issuer's JWKS can race a key rotation),
#: then treated as needing an operator.
FLAKY_CODES = {"InvalidIdentityToken": 3}
FATAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "IDPRejectedClaim",
        "MalformedPolicyDocument",
        "PackedPolicyTooLarge",
        "RegionDisabledException",
        "ValidationError",
        "InvalidParameterValue",
        "InvalidAction",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    }
)


def classify(code: str, http_status: int | None) -> Disposition:
    if code in NEW_TOKEN_CODES:
        return Disposition.NEW_TOKEN
    if code in RETRYABLE_CODES or code in FLAKY_CODES:
        return Disposition.RETRY
    if code in FATAL_CODES:
        return Disposition.FATAL
    # Unknown codes: trust the status class. 5xx is the service's trouble, 4xx is ours.
    if http_status is None or http_status >= 500:
        return Disposition.RETRY
    return Disposition.FATAL


def is_throttling(error: SidecarError) -> bool:
    """STS asked us to slow down (Throttling, "Rate exceeded")."""
    return error.code in THROTTLING_CODES or "rate exceeded" in str(error).lower()


def token_at_fault(error: SidecarError) -> bool:
    """The failure is the web-identity token's: reading it, or STS refusing it.

    Such a failure may end as soon as the token source holds a different token.
    """
    if isinstance(error, TokenError):
        return True
    return isinstance(error, StsError) and error.code in TOKEN_CODES


def caller_rejected(error: SidecarError) -> bool:
    """A chained hop's AssumeRole refused the credentials of the hop before it."""
    return (
        isinstance(error, StsError)
        and error.operation == "AssumeRole"
        and error.code in CALLER_REJECTED_CODES
    )


def short_lifetime(
    expiration: datetime, local_now: datetime, skew: float | None, margin: float
) -> tuple[bool, str]:
    """Why STS's credentials have less than ``margin`` left: (is the clock to blame, text).

    ``skew`` is our wall clock minus the ``Date`` of STS's answer (None if unknown).
    """
    left = (expiration - local_now).total_seconds()
    text = (
        f"STS returned credentials expiring at {format_expiration(expiration)}, {left:.0f}s "
        f"from now by the local clock ({format_expiration(local_now)}), which is not more "
        f"than the safety margin ({margin:g}s)"
    )
    if skew is None:
        return True, (
            f"{text}: either the system clock is off (fix it: NTP) or STS granted a session "
            "that short (check the role's MaxSessionDuration and the requested duration)"
        )
    granted = left + skew
    if abs(skew) > SKEW_TOLERANCE and granted > margin:
        direction = "ahead of" if skew > 0 else "behind"
        return True, (
            f"{text}: the local clock is {abs(skew):.0f}s {direction} STS's (from the Date "
            "of its answer): fix the system clock (NTP)"
        )
    return False, (
        f"{text}: the local clock agrees with STS's (within {max(abs(skew), 1):.0f}s), but "
        f"STS granted only {granted:.0f}s: check the role's MaxSessionDuration and the "
        "requested duration (--duration, or a lifetime cap in the STS endpoint)"
    )


def quick_retry_limit(code: str) -> int | None:
    """How many consecutive quick retries a RETRY code gets before slowing down."""
    return FLAKY_CODES.get(code)


def _provider(claims: TokenClaims) -> str:
    parts = urlsplit(claims.issuer)
    return (parts.netloc + parts.path).rstrip("/") if parts.netloc else claims.issuer


def explain(code: str, message: str, role_arn: str, claims: TokenClaims | None) -> str | None:
    """The likely cause and fix of an STS error, or None when the message says it all."""
    lower = message.lower()
    account = account_from_arn(role_arn) or "<account>"
    if claims is None:
        return None
    provider = _provider(claims)
    aud = ",".join(claims.audience) or "<none>"
    if code == "InvalidIdentityToken" and "audience" in lower:
        return (
            f"the token's aud is {aud}; the IAM OIDC provider {provider} in account {account} "
            "must list it as an audience (client ID), or the token must be requested for "
            "audience sts.amazonaws.com"
        )
    if code == "InvalidIdentityToken" and "provider" in lower:
        return (
            f"account {account} has no IAM OIDC identity provider for {provider}: create one "
            f"(issuer URL {claims.issuer}, audience {aud})"
        )
    if code in ("AccessDenied", "AccessDeniedException") and "webidentity" in lower:
        return (
            f"the trust policy of {role_arn} must allow sts:AssumeRoleWithWebIdentity for "
            f"Federated principal arn:aws:iam::{account}:oidc-provider/{provider} with "
            f"conditions matching this token ({provider}:aud={aud}, "
            f"{provider}:sub={claims.subject})"
        )
    if code == "IDPRejectedClaim":
        return f"a claim did not satisfy the identity provider; the token has {claims.describe()}"
    if code in NEW_TOKEN_CODES:
        return (
            f"the token (exp {claims.expires_text}) expired before STS checked it; check the "
            "clock and that whatever writes the token is renewing it"
        )
    if code == "RegionDisabledException":
        return "activate STS in this region (IAM > Account settings) or pick another --region"
    return None
