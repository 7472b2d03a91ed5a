"""The IMDSv2 listener with real SDK clients: botocore's and the JavaScript SDK's providers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.peers import (
    DaemonProcess,
    EmulatorThread,
    clean_aws_env,
    daemon,
    emulator_args,
    http_get,
    run_node,
    run_sidecar,
)


@pytest.fixture
def imds_daemon(emulator: EmulatorThread, tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    args = emulator_args(emulator, token, tmp_path / "auth", "--imds-listen", "127.0.0.1:0")
    with daemon(args) as process:
        process.wait_event("exchanged")
        (started,) = process.events("imds_started")  # logged before "started"
        yield process, str(started["url"])


def imds_env(url: str, **extra: str) -> dict[str, str]:
    # clean_aws_env disables IMDS for every other test; here it is the point.
    return clean_aws_env(
        AWS_EC2_METADATA_DISABLED="false",
        AWS_EC2_METADATA_SERVICE_ENDPOINT=url,
        AWS_DEFAULT_REGION="us-east-1",
        **extra,
    )


def test_botocore_instance_metadata_provider(
    imds_daemon: tuple[DaemonProcess, str],
    emulator: EmulatorThread,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """botocore's iam-role provider gets the credentials and signs an STS call with them."""
    process, url = imds_daemon
    for key, value in imds_env(url).items():
        monkeypatch.setenv(key, value)
    session = boto3.Session()
    creds = session.get_credentials()
    assert creds is not None and creds.method == "iam-role"
    served: dict[str, Any] = json.loads(http_get(process.url, process.auth_token())[2])
    assert creds.get_frozen_credentials().access_key == served["AccessKeyId"]
    identity = session.client("sts", endpoint_url=emulator.url).get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/ci/")


def test_javascript_instance_metadata_provider(
    imds_daemon: tuple[DaemonProcess, str], node_client: Path
) -> None:
    """fromInstanceMetadata() walks the IMDSv2 flow and gets the credentials."""
    _, url = imds_daemon
    out = run_node(node_client, imds_env(url, PROVIDER="imds"))
    assert out["ok"], out
    assert out["accessKeyId"].startswith("ASIA")


def test_imds_role_must_exist(tmp_path: Path) -> None:
    """--imds-role naming no configured role is a configuration error."""
    token = tmp_path / "token"
    token.write_text("a.b.c")
    result = run_sidecar(
        "serve",
        "--role-arn",
        "arn:aws:iam::123456789012:role/ci",
        "--token-file",
        str(token),
        "--insecure-no-auth",
        "--imds-listen",
        "127.0.0.1:0",
        "--imds-role",
        "nope",
    )
    assert result.returncode == 2
    assert "'nope' is not one of the roles (default)" in result.stderr
