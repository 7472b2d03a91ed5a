"""The dev-mode STS emulator, driven by a real boto3 client: token checks, SigV4, faults."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.peers import EmulatorThread

ROLE = "arn:aws:iam::123456789012:role/dev"


def client(emulator: EmulatorThread, creds: dict[str, Any] | None = None) -> Any:
    kwargs: dict[str, Any] = {
        "aws_access_key_id": "AKIDUNSIGNED0000000",
        "aws_secret_access_key": "unused",
    }
    if creds:
        kwargs = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
    return boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=emulator.url,
        config=Config(retries={"total_max_attempts": 1}),
        **kwargs,
    )


def web_identity(emulator: EmulatorThread, token: str, **params: Any) -> dict[str, Any]:
    response: dict[str, Any] = client(emulator).assume_role_with_web_identity(
        RoleArn=ROLE, RoleSessionName="test", WebIdentityToken=token, **params
    )
    return response


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_web_identity_issues_credentials(emulator: EmulatorThread) -> None:
    """A valid token gets credentials for the role, with STS's response shape."""
    response = web_identity(emulator, emulator.issuer.mint("repo:org/app"), DurationSeconds=7200)
    creds = response["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA")
    lifetime = creds["Expiration"].timestamp() - time.time()
    assert 7100 < lifetime <= 7200
    assert response["AssumedRoleUser"]["Arn"] == "arn:aws:sts::123456789012:assumed-role/dev/test"
    assert response["SubjectFromWebIdentityToken"] == "repo:org/app"


@pytest.mark.parametrize(
    ("claims", "code", "message"),
    [
        ({"audience": "something-else"}, "InvalidIdentityToken", "Incorrect token audience"),
        ({"ttl": -600}, "ExpiredTokenException", "Token expired"),
    ],
)
def test_token_is_verified(
    emulator: EmulatorThread, claims: dict[str, Any], code: str, message: str
) -> None:
    """Wrong audience and expired tokens are refused with STS's error codes."""
    token = emulator.issuer.mint(**claims)
    with pytest.raises(ClientError) as caught:
        web_identity(emulator, token)
    assert error_code(caught) == code
    assert message in str(caught.value)


def test_foreign_issuer_is_refused(emulator: EmulatorThread) -> None:
    """A token signed by an issuer the emulator does not trust is refused."""
    from sidecar.devmode.issuer import OidcIssuer

    stranger = OidcIssuer("https://stranger.example")
    with pytest.raises(ClientError) as caught:
        web_identity(emulator, stranger.mint())
    assert error_code(caught) == "InvalidIdentityToken"
    assert "No OpenIDConnect provider" in str(caught.value)


def test_forged_signature_is_refused(emulator: EmulatorThread) -> None:
    """A token claiming the trusted issuer but signed with another key is refused."""
    from sidecar.devmode.issuer import OidcIssuer

    forger = OidcIssuer(emulator.issuer.url)
    with pytest.raises(ClientError) as caught:
        web_identity(emulator, forger.mint())
    assert error_code(caught) == "InvalidIdentityToken"


def test_duration_limits(emulator: EmulatorThread) -> None:
    """DurationSeconds outside 900..43200 is a ValidationError."""
    with pytest.raises(ClientError) as caught:
        web_identity(emulator, emulator.issuer.mint(), DurationSeconds=43201)
    assert error_code(caught) == "ValidationError"


def test_caller_identity_needs_a_valid_signature(emulator: EmulatorThread) -> None:
    """Issued credentials sign GetCallerIdentity; a wrong secret or unknown key is refused."""
    creds = web_identity(emulator, emulator.issuer.mint())["Credentials"]
    identity = client(emulator, creds).get_caller_identity()
    assert identity["Arn"] == "arn:aws:sts::123456789012:assumed-role/dev/test"
    assert identity["Account"] == "123456789012"

    forged = {**creds, "SecretAccessKey": "x" * 40}
    with pytest.raises(ClientError) as caught:
        client(emulator, forged).get_caller_identity()
    assert error_code(caught) == "SignatureDoesNotMatch"

    with pytest.raises(ClientError) as caught:
        client(emulator).get_caller_identity()
    assert error_code(caught) == "InvalidClientTokenId"


def test_chained_assume_role_is_capped_at_one_hour(emulator: EmulatorThread) -> None:
    """AssumeRole with emulator credentials works; more than 1 h when chaining is refused."""
    creds = web_identity(emulator, emulator.issuer.mint())["Credentials"]
    sts = client(emulator, creds)
    narrow = "arn:aws:iam::123456789012:role/narrow"
    chained = sts.assume_role(RoleArn=narrow, RoleSessionName="hop2", DurationSeconds=3600)
    assert chained["AssumedRoleUser"]["Arn"].endswith(":assumed-role/narrow/hop2")
    with pytest.raises(ClientError) as caught:
        sts.assume_role(RoleArn=narrow, RoleSessionName="hop2", DurationSeconds=3601)
    assert error_code(caught) == "ValidationError"
    assert "role chaining" in str(caught.value)


def test_faults_are_injected_and_counted(emulator: EmulatorThread) -> None:
    """An injected Throttling fault answers twice, then calls succeed; calls are counted."""
    before = emulator.calls()
    emulator.add_fault(
        action="AssumeRoleWithWebIdentity", error="Throttling", message="Rate exceeded", count=2
    )
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            web_identity(emulator, emulator.issuer.mint())
        assert error_code(caught) == "Throttling"
    web_identity(emulator, emulator.issuer.mint())
    assert emulator.calls() == before + 3


def test_short_lived_credentials_fault(emulator: EmulatorThread) -> None:
    """The lifetime fault issues credentials that live only as long as asked."""
    emulator.add_fault(lifetime=60, count=1)
    creds = web_identity(emulator, emulator.issuer.mint())["Credentials"]
    assert creds["Expiration"].timestamp() - time.time() <= 60
