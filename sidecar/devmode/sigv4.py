"""Verifies AWS Signature Version 4 on requests to the STS emulator.

So that a client really proves it holds the secret key it was issued: the emulator
recomputes the signature from the request and the stored secret, as AWS does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]{64})$"
)
MAX_SKEW_SECONDS = 15 * 60


class SignatureError(Exception):
    """The request is not correctly signed. ``code`` is the STS error code to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedRequest:
    """What the Authorization header claims."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(header: str | None) -> SignedRequest:
    if not header:
        raise SignatureError(
            "MissingAuthenticationToken", "Request is missing Authentication Token"
        )
    match = _AUTH.match(header.strip())
    if not match:
        raise SignatureError("IncompleteSignature", "Authorization header is not AWS SigV4")
    parts = match.group("cred").split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError("IncompleteSignature", "malformed Credential scope")
    return SignedRequest(
        access_key_id=parts[0],
        date=parts[1],
        region=parts[2],
        service=parts[3],
        signed_headers=tuple(match.group("signed").split(";")),
        signature=match.group("sig"),
    )


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)


def verify(
    signed: SignedRequest,
    secret_access_key: str,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime | None = None,
) -> None:
    """Raise ``SignatureError`` unless ``signed.signature`` is right for this request."""
    amz_date = headers.get("x-amz-date", "")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("IncompleteSignature", "missing or malformed X-Amz-Date") from None
    skew = abs(((now or datetime.now(UTC)) - when).total_seconds())
    if skew > MAX_SKEW_SECONDS:
        raise SignatureError("SignatureDoesNotMatch", "Signature expired: request time too skewed")
    if not amz_date.startswith(signed.date):
        raise SignatureError("SignatureDoesNotMatch", "Credential date does not match X-Amz-Date")

    lowered = {k.lower(): v for k, v in headers.items()}
    if "host" not in signed.signed_headers:
        raise SignatureError("SignatureDoesNotMatch", "the host header must be signed")
    canonical_headers = "".join(
        f"{name}:{' '.join(lowered.get(name, '').split())}\n" for name in signed.signed_headers
    )
    payload_hash = lowered.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        [
            method.upper(),
            quote(path or "/", safe="/~"),
            _canonical_query(query),
            canonical_headers,
            ";".join(signed.signed_headers),
            payload_hash,
        ]
    )
    scope = f"{signed.date}/{signed.region}/{signed.service}/aws4_request"
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + secret_access_key).encode(), signed.date)
    for part in (signed.region, signed.service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureError(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
