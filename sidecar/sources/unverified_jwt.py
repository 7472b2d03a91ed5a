"""A JWT's claims, decoded without verifying anything, with the standard library only.

``serve`` reads its token's claims (issuer, subject, audience, expiry) to refuse early
what STS would certainly refuse; STS verifies the signature. PyJWT would do the same
decoding, but importing it imports ``cryptography`` (about 9 MiB of resident memory and
25 ms of start-up, docs/benchmarks.md) for signatures the sidecar never checks. The node
agent, which does verify pod tokens, still uses PyJWT. tests/test_unverified_jwt.py holds
this decoder to PyJWT's answers.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class MalformedJwtError(ValueError):
    """Not a JWS compact serialization; the message says which part is wrong."""


def _segment(segment: bytes, name: str) -> bytes:
    """One base64url segment, strictly: trailing ``=`` padding allowed, nothing else."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if (
        padding > 2
        or (padding and len(segment) % 4)
        or len(stripped) % 4 == 1
        or not _BASE64URL.issuperset(stripped)
    ):
        raise MalformedJwtError(f"Invalid {name} padding")
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except binascii.Error:
        raise MalformedJwtError(f"Invalid {name} padding") from None
    # Non-canonical encodings (stray bits in the last character) are refused, as PyJWT does.
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise MalformedJwtError(f"Invalid {name} padding")
    return decoded


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedJwtError(f"Invalid {name} string: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedJwtError(f"Invalid {name} string: must be a json object")
    return value


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of ``token`` (nothing verified); ``MalformedJwtError`` if it is no JWS.

    Header checks that make PyJWT refuse a token are kept (a non-string ``kid``, an
    unencoded payload, a critical extension); verifying claims is the caller's business.
    """
    raw = token.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, a ValueError
    try:
        signing_input, signature = raw.rsplit(b".", 1)
        header_segment, payload_segment = signing_input.split(b".", 1)
    except ValueError:
        raise MalformedJwtError("Not enough segments") from None
    header = _json_object(_segment(header_segment, "header"), "header")
    if header.get("b64", True) is False:
        raise MalformedJwtError("Unencoded payloads (b64: false) are not supported")
    payload = _segment(payload_segment, "payload")
    _segment(signature, "crypto")
    if "kid" in header and not isinstance(header["kid"], str):
        raise MalformedJwtError("Key ID header parameter must be a string")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or not all(isinstance(e, str) for e in crit):
            raise MalformedJwtError("Invalid 'crit' header: must be a non-empty list of strings")
        for extension in crit:
            # b64 is the one extension there is; a payload that is not base64url was
            # refused above, so b64 can only be true here.
            if extension != "b64" or extension not in header:
                raise MalformedJwtError(f"Unsupported critical extension: {extension}")
    return _json_object(payload, "payload")
