"""Several roles from one daemon process, each opened only by its own token, to real SDKs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import CredentialRetrievalError

from tests.peers import DaemonProcess, EmulatorThread, clean_aws_env, daemon, http_get, run_node

A = "arn:aws:iam::123456789012:role/"


@pytest.fixture(scope="module")
def roles(
    sts_emulator: EmulatorThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DaemonProcess, Path]]:
    tmp = tmp_path_factory.mktemp("roles")
    (tmp / "token").write_text(sts_emulator.issuer.mint("repo:org/app", repository="org/app"))
    config = tmp / "sidecar.toml"
    config.write_text(f"""
sts_endpoint = "{sts_emulator.url}"
listen = "127.0.0.1:0"
default_role = "deploy"

[token]
file = "{tmp}/token"

[roles.deploy]
role_arn = "{A}deploy"
session_name = "{{repository}}"
auth_token_file = "{tmp}/deploy.token"

[roles.build]
auth_token_file = "{tmp}/build.token"
allowed_accounts = ["123456789012"]
[[roles.build.hops]]
role_arn = "{A}ci"
duration = "12h"
[[roles.build.hops]]
role_arn = "{A}upload-to-s3"
duration = "1h"

[roles.broken]
auth_token_file = "{tmp}/broken.token"
allowed_accounts = ["123456789012"]
role_arn = "arn:aws:iam::123456789012:role/fine"
token = {{ source = "env", env = "BROKEN_TOKEN" }}
""")
    env = clean_aws_env(BROKEN_TOKEN="not-a-jwt")
    with daemon(["--config", str(config), "--slow-retry", "1h"], env=env) as process:
        for _ in range(2):
            process.wait_event("exchanged")
        yield process, tmp


def sdk_env(process: DaemonProcess, role: str | None, token_file: Path) -> dict[str, str]:
    url = process.url + (f"/{role}" if role else "")
    return clean_aws_env(
        AWS_CONTAINER_CREDENTIALS_FULL_URI=url,
        AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(token_file),
        AWS_DEFAULT_REGION="us-east-1",
    )


def identity_with_boto3(
    env: dict[str, str], sts_url: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result: dict[str, Any] = (
        boto3.Session().client("sts", endpoint_url=sts_url).get_caller_identity()
    )
    return result


def test_each_role_with_its_own_token(
    roles: tuple[DaemonProcess, Path], sts_emulator: EmulatorThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 gets the chained build role with the build token, and deploy by default."""
    process, tmp = roles
    build = identity_with_boto3(
        sdk_env(process, "build", tmp / "build.token"), sts_emulator.url, monkeypatch
    )
    assert build["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/upload-to-s3/")
    deploy = identity_with_boto3(
        sdk_env(process, None, tmp / "deploy.token"), sts_emulator.url, monkeypatch
    )
    assert deploy["Arn"] == "arn:aws:sts::123456789012:assumed-role/deploy/org-app"


@pytest.mark.parametrize(
    ("role", "token"), [("build", "deploy"), ("deploy", "build"), (None, "build")]
)
def test_a_token_opens_only_its_role(
    roles: tuple[DaemonProcess, Path], role: str | None, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another role's token is refused (403) and the SDK gets no credentials."""
    process, tmp = roles
    for key, value in sdk_env(process, role, tmp / f"{token}.token").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(CredentialRetrievalError):
        boto3.Session().get_credentials()
    url = process.url + (f"/{role}" if role else "")
    assert http_get(url, (tmp / f"{token}.token").read_text())[0] == 403


def test_javascript_sdk_gets_a_named_role(
    roles: tuple[DaemonProcess, Path], node_client: Path
) -> None:
    """fromHttp() with a role URL and that role's token works."""
    process, tmp = roles
    out = run_node(node_client, sdk_env(process, "build", tmp / "build.token"))
    assert out["ok"], out


def test_one_failing_role_does_not_affect_the_others(roles: tuple[DaemonProcess, Path]) -> None:
    """broken is not ready (503) while deploy and build serve; readiness says which."""
    process, tmp = roles
    broken = http_get(process.url + "/broken", (tmp / "broken.token").read_text())
    assert broken[0] == 503
    assert http_get(process.base + "/readyz/build")[0] == 200
    status, _, body = http_get(process.base + "/readyz")
    assert status == 503
    report = json.loads(body)["roles"]
    assert report["deploy"]["ready"] and report["build"]["ready"]
    assert not report["broken"]["ready"]
    failed = [e for e in process.events("refresh_failed") if e["role"] == "broken"]
    assert failed and "BROKEN_TOKEN does not hold a JWT" in failed[0]["msg"]


def test_metrics_carry_role_names(roles: tuple[DaemonProcess, Path]) -> None:
    """Exchanges and readiness are labelled by role."""
    process, _ = roles
    text = http_get(process.base + "/metrics")[2].decode()
    assert 'credential_sidecar_ready{role="build"} 1.0' in text
    assert 'credential_sidecar_ready{role="broken"} 0.0' in text
    assert 'result="success",role="deploy"' in text
    assert 'error_code="TokenError",result="failure",role="broken"' in text


def test_unknown_role_is_404(roles: tuple[DaemonProcess, Path]) -> None:
    """A role that is not configured is a JSON 404."""
    process, tmp = roles
    status, _, body = http_get(process.url + "/nope", (tmp / "deploy.token").read_text())
    assert status == 404
    assert json.loads(body)["Code"] == "UnknownRole"
