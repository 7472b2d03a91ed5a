"""The standard-library JWT decoder ``serve`` uses agrees with PyJWT's unverified decode."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.sources.unverified_jwt import MalformedJwtError, unverified_claims


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def pyjwt(value: str) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(
            value, options={"verify_signature": False, "verify_exp": False, "verify_aud": False}
        )
    except (jwt.PyJWTError, ValueError):
        return None
    return claims


def ours(value: str) -> dict[str, Any] | None:
    try:
        return unverified_claims(value)
    except ValueError:
        return None


CLAIMS = {"iss": "https://issuer", "sub": "system:serviceaccount:a:b", "aud": "sts", "exp": 1}
HEADERS = [
    {"alg": "RS256", "kid": "k"},
    {"alg": "RS256", "kid": 7},
    {"alg": "none"},
    {"alg": "RS256", "b64": False, "crit": ["b64"]},
    {"alg": "RS256", "b64": True, "crit": ["b64"]},
    {"alg": "RS256", "crit": ["exp"], "exp": 1},
    {"alg": "RS256", "crit": []},
    {"alg": "RS256", "crit": "b64"},
    [1, 2],
]
MALFORMED = [
    "",
    "a",
    "a.b",
    "not-a-jwt",
    "...",
    "e30.e30.",
    "e30.e30.e30.e30",
    "e30=.e30.c2ln",
    "e30===.e30.c2ln",
    "e30.e31.c2ln",
    "!!!!.e30.c2ln",
    "e30.W10.c2ln",
    "e30.bnVsbA.c2ln",
    "e30.e30.c2lna",
    "\ud800.e30.c2ln",
]


@pytest.mark.parametrize("header", HEADERS, ids=str)
def test_headers_are_judged_as_pyjwt_judges_them(header: Any) -> None:
    """A token is accepted, with the same claims, exactly when PyJWT accepts it."""
    value = token(header, CLAIMS)
    assert ours(value) == pyjwt(value)


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_tokens_are_refused_like_pyjwt(value: str) -> None:
    """Broken segments, padding, JSON and encodings are refused wherever PyJWT refuses them."""
    assert ours(value) == pyjwt(value)


def test_the_error_names_the_problem() -> None:
    """A token that is not a JWT gets PyJWT's message, which ``serve`` shows to the user."""
    with pytest.raises(MalformedJwtError, match="Not enough segments"):
        unverified_claims("not-a-jwt")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), JSONISH, max_size=4), st.binary(max_size=12))
def test_any_payload_decodes_as_pyjwt_decodes_it(claims: dict[str, Any], sig: bytes) -> None:
    """Whatever the claims, both decoders return the same payload."""
    value = token({"alg": "RS256", "kid": "k"}, claims, sig)
    assert ours(value) == pyjwt(value)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abcdefgAB01-_=.!+/ \ue000", max_size=40))
def test_any_string_is_judged_as_pyjwt_judges_it(value: str) -> None:
    """Random strings over the base64url alphabet and its neighbours: same verdicts."""
    assert ours(value) == pyjwt(value)
