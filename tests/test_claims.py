"""Malformed claims are a clear TokenError, never a crash: fuzzed payloads and the CLI."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.errors import TokenError
from sidecar.sources.base import inspect_token
from tests.peers import clean_aws_env, run_sidecar

NOW = datetime(2026, 1, 1, tzinfo=UTC)

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)
_PAYLOADS = st.dictionaries(
    st.sampled_from(["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "repository"]),
    _VALUES,
    max_size=8,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """An unsigned JWT (alg none) carrying ``payload`` as it is, NaN and all.

    Built by hand: ``jwt.encode`` refuses some malformed claims we need to send.
    """
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


@settings(max_examples=300, deadline=None)
@given(payload=_PAYLOADS, audience=st.sampled_from([None, "sts.amazonaws.com"]))
def test_any_claims_payload_gives_claims_or_token_error(
    payload: dict[str, Any], audience: str | None
) -> None:
    """Whatever the claims hold, inspect_token returns claims or raises TokenError, nothing else."""
    try:
        claims = inspect_token(unsigned(payload), "token file /t", NOW, audience)
    except TokenError:
        return
    assert isinstance(claims.issuer, str) and isinstance(claims.subject, str)
    assert all(isinstance(a, str) for a in claims.audience)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"exp": 1e20}, "exp claim is 1e\\+20"),
        ({"exp": math.nan}, "exp claim is nan"),
        ({"exp": None}, "exp claim is null"),
        ({"exp": "tomorrow"}, "exp claim is a string"),
        ({"exp": True}, "exp claim is true"),
        ({"nbf": -1}, "nbf claim is -1"),
        ({"iat": math.inf}, "iat claim is inf"),
        ({"aud": 5}, "aud claim is 5"),
        ({"aud": None}, "aud claim is null"),
        ({"aud": ["a", 1]}, "aud claim is a list"),
        ({"iss": 7}, "iss claim is 7"),
        ({"sub": {"a": 1}}, "sub claim is an object"),
    ],
)
def test_malformed_claims_are_named(payload: dict[str, Any], match: str) -> None:
    """Each malformed claim is refused naming the claim, what it holds and what it must be."""
    with pytest.raises(TokenError, match=match) as caught:
        inspect_token(unsigned(payload), "token file /t", NOW)
    assert "malformed token" in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize("payload", [{"exp": 1e20}, {"aud": None}, {"exp": math.nan}])
def test_inspect_reports_malformed_claims(tmp_path: Path, payload: dict[str, Any]) -> None:
    """`inspect` on a token with malformed claims reports it (exit 4) instead of crashing."""
    token_file = tmp_path / "token"
    token_file.write_text(unsigned(payload))
    result = run_sidecar("inspect", "--token-file", str(token_file), env=clean_aws_env())
    assert result.returncode == 4, result.stderr
    assert "malformed token" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_inspect_refuses_an_oversized_trust_policy(tmp_path: Path) -> None:
    """`inspect --trust-policy` reads at most 64 KiB, refusing a bigger file clearly."""
    token_file = tmp_path / "token"
    token_file.write_text(unsigned({"iss": "https://x", "sub": "s", "aud": "sts.amazonaws.com"}))
    policy = tmp_path / "policy.json"
    with policy.open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)
    result = run_sidecar("inspect", "--token-file", str(token_file), "--trust-policy", str(policy))
    assert result.returncode == 2, result.stderr
    assert "larger than 64 KiB" in result.stderr
