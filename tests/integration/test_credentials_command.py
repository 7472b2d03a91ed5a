"""``credential-sidecar credentials``: every way out read by its real consumer, against a
real running daemon (or one exchange with serve's flags)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

BOTOCORE_PROFILE_CLIENT = """
import json, sys, boto3
session = boto3.Session(profile_name="sidecar")
creds = session.get_credentials()
identity = session.client("sts", endpoint_url=sys.argv[1]).get_caller_identity()
print(json.dumps({"method": creds.method, "key": creds.get_frozen_credentials().access_key,
                  "arn": identity["Arn"]}))
"""


@pytest.fixture
def running(emulator: EmulatorThread, tmp_path: Path) -> Iterator[DaemonProcess]:
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    with daemon(emulator_args(emulator, token, tmp_path / "auth")) as process:
        process.wait_event("exchanged")
        yield process


def served(process: DaemonProcess) -> dict[str, Any]:
    status, _, body = http_get(process.url, process.auth_token())
    assert status == 200
    out: dict[str, Any] = json.loads(body)
    return out


def auth_file(process: DaemonProcess) -> str:
    return process.args[process.args.index("--auth-token-file") + 1]


def command_line(process: DaemonProcess, fmt: str) -> str:
    """The credential_process line of docs/exports.md, for this daemon."""
    return (
        f"{sys.executable} -m sidecar credentials --format {fmt} --url {process.url} "
        f"--auth-token-file {auth_file(process)}"
    )


def test_credential_process_profile_in_botocore(
    running: DaemonProcess, emulator: EmulatorThread, tmp_path: Path
) -> None:
    """A botocore profile whose credential_process is `credentials --format process --url`
    gets the daemon's credentials and signs an STS call with them."""
    config = tmp_path / "config"
    config.write_text(
        f"[profile sidecar]\ncredential_process = {command_line(running, 'process')}\n"
    )
    env = clean_aws_env(AWS_CONFIG_FILE=str(config), AWS_DEFAULT_REGION="us-east-1")
    done = subprocess.run(
        [sys.executable, "-c", BOTOCORE_PROFILE_CLIENT, emulator.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["method"] == "custom-process"
    assert out["key"] == served(running)["AccessKeyId"]
    assert out["arn"].startswith("arn:aws:sts::123456789012:assumed-role/ci/")


def test_credential_process_profile_in_javascript_v3(
    running: DaemonProcess, tmp_path: Path, node_client: Path
) -> None:
    """The JavaScript SDK v3's fromProcess runs the same profile and gets the credentials."""
    config = tmp_path / "config"
    config.write_text(
        f"[profile sidecar]\ncredential_process = {command_line(running, 'process')}\n"
    )
    env = clean_aws_env(AWS_CONFIG_FILE=str(config), PROFILE="sidecar")
    out = run_node(node_client.parent / "from-process.mjs", env)
    assert out["ok"], out
    expected = served(running)
    assert out["accessKeyId"] == expected["AccessKeyId"]
    assert out["expiration"].replace(".000Z", "Z") == expected["Expiration"]


def test_env_format_evaluated_by_a_shell(running: DaemonProcess) -> None:
    """eval "$(credentials --format env ...)" in bash sets the served values exactly."""
    script = (
        f'eval "$({command_line(running, "env")})" && '
        'printf "%s\\n" "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$AWS_SESSION_TOKEN" '
        '"$AWS_CREDENTIAL_EXPIRATION"'
    )
    done = subprocess.run(
        ["bash", "-c", script], env=clean_aws_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    expected = served(running)
    assert done.stdout.splitlines() == [
        expected["AccessKeyId"],
        expected["SecretAccessKey"],
        expected["Token"],
        expected["Expiration"],
    ]


def test_github_env_appends_and_prints_only_masks(running: DaemonProcess, tmp_path: Path) -> None:
    """github-env appends NAME=value lines to $GITHUB_ENV and prints only ::add-mask::
    lines; no secret on stderr."""
    github_env = tmp_path / "github_env"
    github_env.write_text("EARLIER=1\n")
    result = run_sidecar(
        "credentials",
        "--format",
        "github-env",
        "--url",
        running.url,
        "--auth-token-file",
        auth_file(running),
        env=clean_aws_env(GITHUB_ENV=str(github_env)),
    )
    assert result.returncode == 0, result.stderr
    expected = served(running)
    secrets = [expected["AccessKeyId"], expected["SecretAccessKey"], expected["Token"]]
    assert result.stdout.splitlines() == [f"::add-mask::{value}" for value in secrets]
    assert github_env.read_text().splitlines() == [
        "EARLIER=1",
        f"AWS_ACCESS_KEY_ID={expected['AccessKeyId']}",
        f"AWS_SECRET_ACCESS_KEY={expected['SecretAccessKey']}",
        f"AWS_SESSION_TOKEN={expected['Token']}",
        f"AWS_CREDENTIAL_EXPIRATION={expected['Expiration']}",
    ]
    assert not any(value in result.stderr for value in secrets)


def test_github_env_without_the_variable_is_a_clear_error(running: DaemonProcess) -> None:
    """github-env outside GitHub Actions: exit 2 naming $GITHUB_ENV, nothing on stdout."""
    result = run_sidecar(
        "credentials",
        "--format",
        "github-env",
        "--url",
        running.url,
        "--auth-token-file",
        auth_file(running),
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "$GITHUB_ENV" in result.stderr


def test_one_exchange_with_serve_flags(emulator: EmulatorThread, tmp_path: Path) -> None:
    """Without --url, one exchange with serve's flags: the role's fresh credentials on
    stdout, only warnings (never a secret) on stderr, and no auth token flag needed."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    before = emulator.calls()
    result = run_sidecar(
        "credentials",
        "--format",
        "json",
        "--role-arn",
        "arn:aws:iam::123456789012:role/ci",
        "--token-file",
        str(token),
        "--sts-endpoint",
        emulator.url,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["RoleArn"] == "arn:aws:iam::123456789012:role/ci"
    assert out["AssumedRoleArn"].startswith("arn:aws:sts::123456789012:assumed-role/ci/")
    assert emulator.calls() == before + 1
    for key in ("AccessKeyId", "SecretAccessKey", "SessionToken"):
        assert out[key] not in result.stderr


def test_one_exchange_refused_by_sts_exits_5(emulator: EmulatorThread, tmp_path: Path) -> None:
    """Without --url, an STS refusal: exit 5 after --wait, nothing on stdout."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    emulator.add_fault(
        action="AssumeRoleWithWebIdentity", error="AccessDenied", status=403, count=100
    )
    result = run_sidecar(
        "credentials",
        "--format",
        "env",
        "--wait",
        "1",
        "--role-arn",
        "arn:aws:iam::123456789012:role/ci",
        "--token-file",
        str(token),
        "--sts-endpoint",
        emulator.url,
    )
    assert result.returncode == 5, result.stderr
    assert result.stdout == ""
    assert "no credentials within 1s" in result.stderr


def test_wrong_token_is_refused_without_echoing_it(running: DaemonProcess, tmp_path: Path) -> None:
    """A wrong auth token: exit 5 with the daemon's code; the token is not printed."""
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-token-0123456789abcdef")
    result = run_sidecar(
        "credentials", "--format", "env", "--url", running.url, "--auth-token-file", str(wrong)
    )
    assert result.returncode == 5
    assert result.stdout == ""
    assert "403 AccessDenied" in result.stderr
    assert "wrong-token-0123456789abcdef" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/v1/credentials",
        "http://host.docker.internal:9911/v1/credentials",
        "http://172.17.0.1:9911/v1/credentials",
        "ftp://127.0.0.1/x",
        "http://user:pw@127.0.0.1:9911/v1/credentials",
    ],
)
def test_urls_the_sdks_refuse_are_refused(url: str) -> None:
    """Plain http to a host the SDKs refuse (or another scheme, or a user in the URL): exit 2
    before any connection."""
    result = run_sidecar("credentials", "--format", "env", "--url", url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--url" in result.stderr
    assert "pw" not in result.stderr
