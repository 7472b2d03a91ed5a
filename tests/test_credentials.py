"""The 200 body: field set, string values, Expiration format, no secret in repr."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.credentials import format_expiration, mask_key_id
from sidecar.outputs.endpoint import render_container_json
from tests.fakes import make_credentials

EXPIRATION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def test_rendered_fields_are_all_strings() -> None:
    """Exactly the fields SDKs read, every value a string, no Code field."""
    creds = make_credentials(datetime(2026, 11, 21, 23, 40, 44, tzinfo=UTC))
    body = json.loads(render_container_json(creds))
    assert set(body) == {
        "AccessKeyId",
        "SecretAccessKey",
        "Token",
        "Expiration",
        "AccountId",
        "RoleArn",
    }
    assert all(isinstance(v, str) and v for v in body.values())
    assert body["Expiration"] == "2026-11-21T23:40:44Z"
    assert body["AccountId"] == "123456789012"
    assert body["Token"] == creds.session_token


ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(ZONES),
    )
)
def test_expiration_is_utc_z_without_fraction(moment: datetime) -> None:
    """Any aware time renders as YYYY-MM-DDTHH:MM:SSZ of the same instant (floored)."""
    text = format_expiration(moment)
    assert EXPIRATION.match(text)
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(0) <= moment - parsed < timedelta(seconds=1)


def test_naive_expiration_is_refused() -> None:
    """A naive datetime is ambiguous and rejected."""
    with pytest.raises(ValueError, match="timezone-aware"):
        format_expiration(datetime(2026, 1, 1))


def test_repr_hides_secrets() -> None:
    """repr shows a masked key id and no secret key or session token."""
    creds = make_credentials(datetime(2026, 11, 21, tzinfo=UTC))
    text = repr(creds)
    assert creds.secret_access_key not in text
    assert creds.session_token not in text
    assert creds.access_key_id not in text
    assert mask_key_id(creds.access_key_id) in text


def test_mask_key_id() -> None:
    """Only the first and last four characters survive."""
    assert mask_key_id("ASIAABCDEFGHIJKLWXYZ") == "ASIA...WXYZ"
    assert mask_key_id("short") == "*****"
