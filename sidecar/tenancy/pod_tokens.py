"""Verifying a pod's projected service-account token locally, before anything else.

A request's ``Authorization`` value must be a JWT the cluster's service-account issuer
signed (``KeySource``), for our issuer and audience, valid now by the injected clock (with a
small leeway for clock skew), whose ``sub`` is ``system:serviceaccount:<namespace>:<name>``.
Any failed check raises ``PodTokenError`` with its HTTP status, JSON code and a metrics
reason from a fixed set; its message names the check and the fix, never the token.

Verified tokens are cached by SHA-256 digest until their ``exp`` (a bounded LRU), so the
pods of a busy node cost one signature check per token, not one per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import jwt

from sidecar.core.clock import Clock
from sidecar.core.errors import Refusal
from sidecar.core.safe_read import size_text
from sidecar.core.secret import Secret
from sidecar.tenancy.jwks import (
    ALLOWED_ALGORITHMS,
    MIN_REFETCH_INTERVAL,
    KeySource,
    VerificationKey,
)

#: A projected token is about 1 KB; the bound is checked before any parsing.
MAX_TOKEN_BYTES = 16 * 1024
#: Clock skew tolerated on ``exp`` and ``nbf``.
LEEWAY = 30.0
#: Verified tokens remembered (a few hundred bytes each).
CACHE_SIZE = 10_000

Reason = Literal[
    "malformed",
    "too_large",
    "algorithm",
    "unknown_key",
    "signature",
    "issuer",
    "audience",
    "expired",
    "not_yet_valid",
    "subject",
    "keys_unavailable",
]
#: reason -> (HTTP status, JSON code). The reasons are the only values of the metrics label.
OUTCOMES: Mapping[Reason, tuple[int, str]] = {
    "malformed": (401, "InvalidToken"),
    "too_large": (401, "TokenTooLarge"),
    "algorithm": (401, "UnsupportedAlgorithm"),
    "unknown_key": (401, "UnknownSigningKey"),
    "signature": (401, "InvalidSignature"),
    "issuer": (403, "InvalidIssuer"),
    "audience": (403, "InvalidAudience"),
    "expired": (401, "TokenExpired"),
    "not_yet_valid": (401, "TokenNotYetValid"),
    "subject": (403, "InvalidSubject"),
    "keys_unavailable": (503, "IssuerKeysUnavailable"),
}

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
#: A key id is public, but comes from the request: shown only when it has a plain shape.
_SHOWABLE_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
#: Namespaces are DNS labels; service-account and pod names DNS subdomains.
_NAMESPACE = re.compile(_DNS_LABEL)
_SUBDOMAIN = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_SUBJECT = re.compile(r"system:serviceaccount:([^:]*):([^:]*)")
_UID = re.compile(r"[0-9A-Za-z-]{1,64}")
_NOT_JWT = (
    "the token is not a JWT (three base64url parts): send the pod's projected "
    "service-account token, not a path or another credential"
)
_MAX_TIMESTAMP = 253402300799  # 9999-12-31
_JWS = jwt.PyJWS()


class PodTokenError(Refusal):
    """A pod token failed a check: ``status`` and ``code`` for the answer, ``reason`` for
    metrics (one of a fixed set)."""

    def __init__(self, reason: Reason, message: str, code: str | None = None) -> None:
        status, default_code = OUTCOMES[reason]
        headers = {"Retry-After": "1"} if status == 503 else None
        super().__init__(message, code or default_code, reason, headers, "pod_token_refused")
        self.reason: Reason = reason
        self.status = status

    @property
    def code(self) -> str:
        return self.json_code


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class PodIdentity:
    """Who a verified token speaks for. The token itself is kept for the STS exchange.

    One object per verified token (the verifier's cache hands out the same one on every
    hit), compared and hashed by identity: the tenancy remembers per object what it was
    resolved to, without hashing eight fields on every request.
    """

    issuer: str
    namespace: str
    service_account: str
    subject: str
    expires_at: datetime
    token: Secret = field(repr=False)
    #: From the ``kubernetes.io`` claim, for the audit log only (never for authorization).
    pod_name: str | None = None
    pod_uid: str | None = None


def _b64json(segment: str) -> object:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def _kid_text(kid: str | None) -> str:
    if kid is None:
        return "no kid"
    return f"kid {kid}" if _SHOWABLE_KID.fullmatch(kid) else "a kid (not shown)"


def _timestamp(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_TIMESTAMP
    ):
        raise PodTokenError("malformed", f"the token's {name} claim is not a NumericDate")
    return float(value)


class PodTokenVerifier:
    """Checks pod tokens against one issuer and audience; caches the ones that pass."""

    def __init__(
        self,
        keys: KeySource,
        issuer: str,
        audience: str,
        clock: Clock,
        leeway: float = LEEWAY,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self._clock = clock
        self._leeway = leeway
        self._cache_size = cache_size
        #: sha256(token) -> (identity, wall-clock deadline in epoch seconds, kid, verifying key)
        self._cache: OrderedDict[bytes, tuple[PodIdentity, float, str | None, VerificationKey]] = (
            OrderedDict()
        )

    def __repr__(self) -> str:
        return f"PodTokenVerifier(issuer={self.issuer!r}, audience={self.audience!r})"

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def verify(self, authorization: str) -> PodIdentity:
        """The identity of a valid token (``Bearer <token>`` or the bare token), else
        ``PodTokenError``."""
        if len(authorization) > MAX_TOKEN_BYTES:
            raise PodTokenError(
                "too_large",
                f"the Authorization header is larger than {size_text(MAX_TOKEN_BYTES)}: send "
                "the pod's projected service-account token (about 1 KB)",
            )
        token = authorization.strip()
        # "Bearer <token>" or the bare token; only the first word is looked at (a token is
        # ~1 KB: lowering or splitting all of it on every request is measurable).
        if token[:6].lower() == "bearer" and token[6:7] in (" ", ""):
            token = token[6:].strip()
        if not token:
            raise PodTokenError(
                "malformed",
                "no token in the Authorization header: mount a projected service-account token "
                "and point AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE at it",
                code="MissingToken",
            )
        if not token.isascii():  # a JWT is ASCII: one encoding, one digest
            raise PodTokenError("malformed", _NOT_JWT)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock.time()
        if (hit := self._cache.get(digest)) is not None:
            identity, deadline, kid, key = hit
            # Valid while unexpired and while the key that verified it is still the issuer's:
            # rotating a leaked key cuts off tokens verified with it before.
            if now < deadline and self._keys.known(kid) is key:
                self._cache.move_to_end(digest)
                return identity
            del self._cache[digest]  # checked again below (and refused if it must be)
        # Only a token never verified (or no longer cached) is parsed: a hit was this very
        # string, already held to everything below.
        if not _JWT_SHAPE.fullmatch(token):
            raise PodTokenError("malformed", _NOT_JWT)
        identity, deadline, kid, key = await self._check(token, now)
        self._cache[digest] = (identity, deadline, kid, key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity

    async def _check(
        self, token: str, now: float
    ) -> tuple[PodIdentity, float, str | None, VerificationKey]:
        header_part, payload_part, _ = token.split(".")
        try:
            header, unverified = _b64json(header_part), _b64json(payload_part)
        except (ValueError, binascii.Error, RecursionError):
            raise PodTokenError("malformed", _NOT_JWT) from None
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise PodTokenError("malformed", _NOT_JWT)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise PodTokenError(
                "algorithm",
                "the token's signature algorithm is not one we accept (RS*, PS*, ES*; never "
                "none or HMAC): send a token the cluster's service-account issuer signed",
            )
        if "crit" in header or (kid is not None and not isinstance(kid, str)):
            raise PodTokenError("malformed", "the token's header is not a plain JWS header")
        # Refused early, unverified (refusing is always safe): a token from another issuer
        # must not make us re-fetch our issuer's keys.
        if unverified.get("iss") != self.issuer:
            raise self._wrong_issuer()
        key = await self._keys.key_for(kid)
        if key is None:
            if not self._keys.ready:
                raise PodTokenError(
                    "keys_unavailable",
                    f"the signing keys of {self.issuer} are not loaded yet: retry shortly "
                    "(the node agent's log says why they cannot be fetched)",
                )
            raise PodTokenError(
                "unknown_key",
                f"the token names {_kid_text(kid)}, which is not among the keys of "
                f"{self.issuer} (they are re-fetched for an unknown key at most every "
                f"{MIN_REFETCH_INTERVAL:g}s): is it from another cluster?",
            )
        if alg not in key.algorithms:
            raise PodTokenError(
                "algorithm",
                f"the token says {alg} but the key with {_kid_text(kid)} is for "
                f"{', '.join(sorted(key.algorithms))}: the token was not signed by it",
            )
        try:
            verified = _JWS.decode_complete(token, key.key, algorithms=[alg])
            payload = json.loads(verified["payload"])
        except jwt.InvalidSignatureError:
            raise PodTokenError(
                "signature",
                f"the token's signature does not verify with the key with {_kid_text(kid)} of "
                f"{self.issuer}: it was forged or altered",
            ) from None
        except (jwt.PyJWTError, ValueError, RecursionError):
            raise PodTokenError("malformed", _NOT_JWT) from None
        if not isinstance(payload, dict):
            raise PodTokenError("malformed", _NOT_JWT)
        identity, deadline = self._claims(payload, token, now)
        return identity, deadline, kid, key

    def _wrong_issuer(self) -> PodTokenError:
        return PodTokenError(
            "issuer",
            f"the token's iss is not {self.issuer}: send a token of this cluster's "
            "service-account issuer (or fix --issuer)",
        )

    def _claims(
        self, payload: Mapping[str, Any], token: str, now: float
    ) -> tuple[PodIdentity, float]:
        if payload.get("iss") != self.issuer:
            raise self._wrong_issuer()
        audiences = payload.get("aud")
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or self.audience not in audiences:
            raise PodTokenError(
                "audience",
                f"the token's aud does not contain {self.audience}: give the projected token "
                f"volume `audience: {self.audience}` (or fix --audience)",
            )
        exp = _timestamp(payload, "exp")
        if exp is None:
            raise PodTokenError(
                "malformed", "the token has no exp claim: send a projected (bound) token"
            )
        if now >= exp + self._leeway:
            raise PodTokenError(
                "expired",
                f"the token expired at {datetime.fromtimestamp(exp, UTC).isoformat()}: read the "
                "token file again for every request (the kubelet rotates it)",
            )
        nbf = _timestamp(payload, "nbf")
        if nbf is not None and now < nbf - self._leeway:
            raise PodTokenError(
                "not_yet_valid",
                f"the token is not valid before {datetime.fromtimestamp(nbf, UTC).isoformat()}: "
                "is this node's clock behind?",
            )
        namespace, service_account = self._subject(payload)
        pod_name, pod_uid = self._pod(payload, namespace, service_account)
        identity = PodIdentity(
            self.issuer,
            namespace,
            service_account,
            f"system:serviceaccount:{namespace}:{service_account}",
            datetime.fromtimestamp(exp, UTC),
            Secret(token),
            pod_name,
            pod_uid,
        )
        return identity, exp + self._leeway

    @staticmethod
    def _subject(payload: Mapping[str, Any]) -> tuple[str, str]:
        sub = payload.get("sub")
        match = _SUBJECT.fullmatch(sub) if isinstance(sub, str) else None
        if (
            match is None
            or not _NAMESPACE.fullmatch(match[1])
            or not _SUBDOMAIN.fullmatch(match[2])
        ):
            raise PodTokenError(
                "subject",
                "the token's sub is not system:serviceaccount:<namespace>:<name>: send a pod's "
                "service-account token, not a user's or another kind",
            )
        return match[1], match[2]

    @staticmethod
    def _pod(
        payload: Mapping[str, Any], namespace: str, service_account: str
    ) -> tuple[str | None, str | None]:
        """The pod's name and uid from the ``kubernetes.io`` claim, which must agree with
        ``sub`` when present."""
        claim = payload.get("kubernetes.io")
        if claim is None:
            return None, None
        account = claim.get("serviceaccount") if isinstance(claim, dict) else None
        if (
            not isinstance(claim, dict)
            or claim.get("namespace") != namespace
            or not isinstance(account, dict)
            or account.get("name") != service_account
        ):
            raise PodTokenError(
                "subject",
                f"the token's kubernetes.io claim does not name namespace {namespace} and "
                f"service account {service_account} like its sub: the token is inconsistent",
            )
        pod = claim.get("pod")
        if not isinstance(pod, dict):
            return None, None
        name, uid = pod.get("name"), pod.get("uid")
        return (
            name if isinstance(name, str) and _SUBDOMAIN.fullmatch(name) else None,
            uid if isinstance(uid, str) and _UID.fullmatch(uid) else None,
        )
