"""STS error codes: how to react to each, and what to tell the operator.

The one place that knows STS's error vocabulary. ``classify`` feeds the refresher's retry
decisions; ``explain`` turns the terse STS message into the likely cause and fix, using
the token's claims (never the token).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sidecar.credentials import account_from_arn
from sidecar.errors import Disposition
from sidecar.tokens import TokenClaims

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
NEW_TOKEN_CODES = frozenset({"ExpiredTokenException", "ExpiredToken"})
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
