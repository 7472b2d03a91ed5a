"""Our STS client against the emulator: credentials, classified errors, hints, timeouts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import HopConfig, RoleConfig, StsConfig
from sidecar.core.clock import SystemClock
from sidecar.core.credentials import Credentials
from sidecar.core.errors import Disposition, StsError
from sidecar.core.metrics import Metrics
from sidecar.exchange.chain import ChainExchanger
from sidecar.exchange.diagnosis import SKEW_TOLERANCE, classify, explain, short_lifetime
from sidecar.exchange.sts import StsClient
from sidecar.sources.base import TokenClaims
from sidecar.sources.file import FileSource, FileTokenSource
from tests.peers import EmulatorThread

ROLE_ARN = "arn:aws:iam::123456789012:role/ci"


async def exchange(
    emulator: EmulatorThread,
    tmp_path: Path,
    token: str,
    endpoint: str | None = None,
    timeout: float = 5,
) -> Credentials:
    path = tmp_path / "token"
    path.write_text(token)
    role = RoleConfig("default", FileSource(path), (HopConfig(ROLE_ARN, 3600, "sess"),))
    config = StsConfig("us-east-1", endpoint or emulator.url, "regional")
    clock = SystemClock()
    async with StsClient(config, timeout, Metrics(CollectorRegistry()), SystemClock()) as sts:
        tokens = FileTokenSource(path, clock)
        return await ChainExchanger(role, sts, clock).exchange(tokens)


async def test_exchange_returns_credentials(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A web-identity exchange yields credentials for the role with an aware expiry."""
    creds = await exchange(emulator, tmp_path, emulator.issuer.mint())
    assert creds.role_arn == ROLE_ARN
    assert creds.assumed_role_arn.endswith("assumed-role/ci/sess")
    assert creds.expiration.tzinfo is not None


async def test_wrong_audience_is_explained(emulator: EmulatorThread, tmp_path: Path) -> None:
    """InvalidIdentityToken for the audience names the token's aud and the fix."""
    with pytest.raises(StsError) as caught:
        await exchange(emulator, tmp_path, emulator.issuer.mint(audience="gitlab"))
    error = caught.value
    assert error.error_code == "InvalidIdentityToken"
    assert error.disposition is Disposition.RETRY  # a few quick retries, then slow
    assert "the token's aud is gitlab" in str(error)
    assert "must list it as an audience" in str(error)


async def test_throttling_is_retryable(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A Throttling answer becomes a retryable StsError (botocore's retries are off)."""
    emulator.add_fault(error="Throttling", message="Rate exceeded", count=1)
    with pytest.raises(StsError) as caught:
        await exchange(emulator, tmp_path, emulator.issuer.mint())
    assert caught.value.error_code == "Throttling"
    assert caught.value.disposition is Disposition.RETRY


async def test_access_denied_needs_operator(emulator: EmulatorThread, tmp_path: Path) -> None:
    """AccessDenied is not retryable and explains the trust policy to fix."""
    emulator.add_fault(
        error="AccessDenied",
        status=403,
        count=1,
        message="Not authorized to perform sts:AssumeRoleWithWebIdentity",
    )
    with pytest.raises(StsError) as caught:
        await exchange(emulator, tmp_path, emulator.issuer.mint("repo:org/app"))
    assert caught.value.disposition is Disposition.FATAL
    assert "trust policy" in str(caught.value)
    assert "sub=repo:org/app" in str(caught.value)


async def test_hanging_sts_times_out(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A hanging STS is cut off by the per-attempt timeout as a retryable error."""
    emulator.add_fault(hang=True, count=1)
    with pytest.raises(StsError) as caught:
        await exchange(emulator, tmp_path, emulator.issuer.mint(), timeout=0.3)
    assert caught.value.disposition is Disposition.RETRY
    assert caught.value.error_code in ("Timeout", "NetworkError")


async def test_unreachable_sts_is_a_network_error(emulator: EmulatorThread, tmp_path: Path) -> None:
    """Connection refused becomes a retryable NetworkError naming the endpoint."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StsError) as caught:
        await exchange(
            emulator, tmp_path, emulator.issuer.mint(), endpoint=f"http://127.0.0.1:{port}"
        )
    assert caught.value.error_code == "NetworkError"
    assert str(port) in str(caught.value)


@pytest.mark.parametrize(
    ("code", "status", "disposition"),
    [
        ("Throttling", 400, Disposition.RETRY),
        ("IDPCommunicationError", 400, Disposition.RETRY),
        ("InternalFailure", 500, Disposition.RETRY),
        ("SomethingNew", 503, Disposition.RETRY),
        ("InvalidIdentityToken", 400, Disposition.RETRY),
        ("ExpiredTokenException", 400, Disposition.NEW_TOKEN),
        ("AccessDenied", 403, Disposition.FATAL),
        ("IDPRejectedClaim", 403, Disposition.FATAL),
        ("MalformedPolicyDocument", 400, Disposition.FATAL),
        ("PackedPolicyTooLarge", 400, Disposition.FATAL),
        ("RegionDisabledException", 403, Disposition.FATAL),
        ("ValidationError", 400, Disposition.FATAL),
        ("SomethingNew", 400, Disposition.FATAL),
    ],
)
def test_classification(code: str, status: int, disposition: Disposition) -> None:
    """Every STS error code maps to how the refresher reacts."""
    assert classify(code, status) is disposition


def test_explain_missing_provider() -> None:
    """No OIDC provider: the hint says which issuer to register in which account."""
    claims = TokenClaims("https://token.actions.githubusercontent.com", "repo:o/r", ("sts",), None)
    hint = explain(
        "InvalidIdentityToken",
        "No OpenIDConnect provider found in your account for https://x",
        ROLE_ARN,
        claims,
    )
    assert hint is not None
    assert "123456789012 has no IAM OIDC identity provider" in hint
    assert "token.actions.githubusercontent.com" in hint


async def test_users_profile_does_not_matter(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AWS_PROFILE missing from the config file (meant for the user's tools) is ignored."""
    monkeypatch.setenv("AWS_PROFILE", "does-not-exist")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    creds = await exchange(emulator, tmp_path, emulator.issuer.mint())
    assert creds.access_key_id.startswith("ASIA")


@pytest.mark.parametrize(
    ("region", "regional", "env", "expected"),
    [
        ("eu-west-1", "regional", {}, "https://sts.eu-west-1.amazonaws.com"),
        ("us-east-1", "regional", {}, "https://sts.us-east-1.amazonaws.com"),
        ("us-east-1", "legacy", {}, "https://sts.amazonaws.com"),
        (
            "us-east-1",
            "regional",
            {"AWS_USE_FIPS_ENDPOINT": "true"},
            "https://sts-fips.us-east-1.amazonaws.com",
        ),
        ("cn-north-1", "regional", {}, "https://sts.cn-north-1.amazonaws.com.cn"),
    ],
)
async def test_endpoint_resolution(
    region: str, regional: str, env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regional by default, legacy global on request, FIPS and China partitions (no call)."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_USE_FIPS_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = StsConfig(region, None, regional)
    async with StsClient(config, 5, Metrics(CollectorRegistry()), SystemClock()) as sts:
        assert sts.endpoint == expected


async def test_clock_skew_is_measured_from_the_date_header(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """Each STS answer's Date header gives the clock skew, exported as a gauge."""
    path = tmp_path / "token"
    path.write_text(emulator.issuer.mint())
    role = RoleConfig("default", FileSource(path), (HopConfig(ROLE_ARN, 3600, "sess"),))
    registry = CollectorRegistry()
    config = StsConfig("us-east-1", emulator.url, "regional")
    clock = SystemClock()
    async with StsClient(config, 5, Metrics(registry), SystemClock()) as sts:
        assert sts.clock_skew is None
        await ChainExchanger(role, sts, clock).exchange(FileTokenSource(path, clock))
        skew = sts.clock_skew
    assert skew is not None
    assert abs(skew) < SKEW_TOLERANCE  # the emulator shares our clock
    assert registry.get_sample_value("credential_sidecar_clock_skew_seconds") == skew


@pytest.mark.parametrize(
    ("skew", "left", "blamed", "words"),
    [
        (3600.0, 60.0, True, "3600s ahead of STS's"),
        (200.0, 60.0, True, "200s ahead of STS's"),
        (30.0, 60.0, False, "STS granted only 90s"),
        (0.3, 60.0, False, "STS granted only 60s"),
        (None, 60.0, True, "either the system clock is off"),
    ],
)
def test_short_lifetime_names_the_cause(
    skew: float | None, left: float, blamed: bool, words: str
) -> None:
    """Too little life left: the clock (off by N s) or STS (granted N s) is named."""
    now = datetime(2026, 11, 21, 12, tzinfo=UTC)
    clock_to_blame, text = short_lifetime(now + timedelta(seconds=left), now, skew, 120)
    assert clock_to_blame is blamed
    assert words in text
