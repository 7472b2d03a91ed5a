"""Real SDK clients against the real daemon process, which exchanges with moto's STS.

Proves the rules of shared/sdk-contract.md with the clients themselves: boto3 (botocore's
container provider), the AWS CLI, and the AWS SDK for JavaScript v3 (fromHttp).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import CredentialRetrievalError

from sidecar.devmode.issuer import OidcIssuer
from tests.peers import DaemonProcess, clean_aws_env, daemon, http_get, run_node

ROLE = "arn:aws:iam::123456789012:role/ci-deploy"


@dataclass
class Served:
    process: DaemonProcess
    auth_file: Path
    token_file: Path
    moto: str

    @property
    def auth_token(self) -> str:
        return self.auth_file.read_text()

    def fetch(self) -> dict[str, Any]:
        status, _, body = http_get(self.process.url, self.auth_token)
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def client_env(self, **extra: str) -> dict[str, str]:
        return clean_aws_env(
            **{
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": self.process.url,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(self.auth_file),
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_REGION": "us-east-1",
                **extra,
            }
        )


@pytest.fixture(scope="module")
def served(moto_sts: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    token_file = tmp / "token"
    token_file.write_text(OidcIssuer("https://oidc.example").mint("repo:org/app", ttl=7200))
    auth_file = tmp / "auth-token"  # does not exist: the daemon generates it
    args = [
        "--role-arn",
        ROLE,
        "--token-file",
        str(token_file),
        "--sts-endpoint",
        moto_sts,
        "--region",
        "us-east-1",
        "--auth-token-file",
        str(auth_file),
        "--listen",
        "127.0.0.1:0",
    ]
    with daemon(args) as process:
        process.wait_event("exchanged")
        yield Served(process, auth_file, token_file, moto_sts)


def test_boto3_gets_credentials_and_calls_sts(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 finds the endpoint through FULL_URI + TOKEN_FILE and uses the credentials."""
    for key, value in served.client_env().items():
        monkeypatch.setenv(key, value)
    session = boto3.Session()
    creds = session.get_credentials()
    assert creds is not None and creds.method == "container-role"
    frozen = creds.get_frozen_credentials()
    served_body = served.fetch()
    assert frozen.access_key == served_body["AccessKeyId"]
    assert frozen.secret_key == served_body["SecretAccessKey"]
    assert frozen.token == served_body["Token"]
    # botocore parsed Expiration and sees a long life, so it will not refetch on every call
    assert (creds._expiry_time - datetime.now(UTC)).total_seconds() > 30 * 60

    identity = session.client("sts", endpoint_url=served.moto).get_caller_identity()
    assert ":assumed-role/ci-deploy/" in identity["Arn"]


def test_boto3_refused_with_wrong_token(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a wrong auth token botocore gets no credentials (and sees no secret)."""
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-right-token-0123456789")
    env = served.client_env(AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(wrong))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(CredentialRetrievalError) as caught:
        boto3.Session().get_credentials()
    assert served.fetch()["SecretAccessKey"] not in str(caught.value)


def test_aws_cli(served: Served) -> None:
    """The AWS CLI resolves the container credentials and calls STS with them."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "awscli",
            "sts",
            "get-caller-identity",
            "--endpoint-url",
            served.moto,
            "--output",
            "json",
        ],
        env=served.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert ":assumed-role/ci-deploy/" in json.loads(result.stdout)["Arn"]


def test_javascript_sdk_v3(served: Served, node_client: Path) -> None:
    """fromHttp() accepts the response (strings, Z expiration) and signs an STS call."""
    out = run_node(node_client, served.client_env(STS_ENDPOINT=served.moto))
    assert out["ok"], out
    body = served.fetch()
    assert out["accessKeyId"] == body["AccessKeyId"]
    assert out["secretAccessKey"] == body["SecretAccessKey"]
    assert out["expiration"].replace(".000Z", "Z") == body["Expiration"]
    assert ":assumed-role/ci-deploy/" in out["arn"]


def test_javascript_sdk_v3_refused_with_wrong_token(
    served: Served, node_client: Path, tmp_path: Path
) -> None:
    """fromHttp() fails on a 403 and never sees credentials."""
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-right-token-0123456789")
    out = run_node(
        node_client, served.client_env(AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(wrong))
    )
    assert out["ok"] is False
    assert served.fetch()["SecretAccessKey"] not in json.dumps(out)


def test_generated_auth_token_file(served: Served) -> None:
    """The daemon created the auth token file: 0600, 43 URL-safe characters, no newline."""
    assert served.auth_file.stat().st_mode & 0o777 == 0o600
    token = served.auth_token
    assert len(token) == 43 and token.strip() == token
