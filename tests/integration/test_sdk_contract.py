"""Rules of shared/sdk-contract.md, proved with the real clients against the real daemon."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from tests.peers import EmulatorThread, clean_aws_env, daemon, emulator_args, http_get, run_node


def boto3_credentials(monkeypatch: pytest.MonkeyPatch, **env: str) -> object:
    for key in list(clean_aws_env()):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key, raising=False)
    for key, value in clean_aws_env(**env).items():
        monkeypatch.setenv(key, value)
    creds = boto3.Session().get_credentials()
    assert creds is not None
    return creds.get_frozen_credentials()


def start_args(emulator: EmulatorThread, tmp_path: Path, *extra: str) -> list[str]:
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    return emulator_args(emulator, token, tmp_path / "auth-token", *extra)


def test_ipv6_loopback(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listening on [::1], botocore accepts the plain-http FULL_URI and gets credentials."""
    args = start_args(emulator, tmp_path)
    args[args.index("127.0.0.1:0")] = "[::1]:0"
    with daemon(args) as process:
        process.wait_event("exchanged")
        assert process.url.startswith("http://[::1]:")
        frozen = boto3_credentials(
            monkeypatch,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=process.url,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp_path / "auth-token"),
        )
    assert frozen.access_key.startswith("ASIA")  # type: ignore[attr-defined]


def test_plain_token_variable(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_CONTAINER_AUTHORIZATION_TOKEN (the value itself) works as well as the file."""
    with daemon(start_args(emulator, tmp_path)) as process:
        process.wait_event("exchanged")
        frozen = boto3_credentials(
            monkeypatch,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=process.url,
            AWS_CONTAINER_AUTHORIZATION_TOKEN=process.auth_token(),
        )
    assert frozen.access_key.startswith("ASIA")  # type: ignore[attr-defined]


@pytest.mark.parametrize("host", ["host.docker.internal", "172.17.0.1", "example.com"])
def test_botocore_refuses_other_hosts(host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why we warn about --listen: botocore refuses plain http to other hosts, unconnected."""
    with pytest.raises(ValueError, match="Unsupported host"):
        boto3_credentials(
            monkeypatch,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=f"http://{host}:9/v1/credentials",
            AWS_CONTAINER_AUTHORIZATION_TOKEN="x" * 32,
        )


def test_botocore_retries_a_cold_start_503(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STS slow at startup: the first fetch gets 503, botocore retries and gets credentials."""
    emulator.add_fault(delay=1.5, count=1)
    with daemon(start_args(emulator, tmp_path, "--cold-start-wait", "300ms")) as process:
        frozen = boto3_credentials(
            monkeypatch,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=process.url,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp_path / "auth-token"),
        )
        metrics = http_get(process.base + "/metrics")[2].decode()
    assert frozen.access_key.startswith("ASIA")  # type: ignore[attr-defined]
    assert 'route="/v1/credentials",status="503"}' in metrics  # it was refused first...
    assert 'route="/v1/credentials",status="200"} 1.0' in metrics  # ...then served


def test_javascript_sdk_retries_a_cold_start_503(
    emulator: EmulatorThread, tmp_path: Path, node_client: Path
) -> None:
    """fromHttp() with retries also rides out the 503 of a cold start."""
    emulator.add_fault(delay=1.5, count=1)
    with daemon(start_args(emulator, tmp_path, "--cold-start-wait", "300ms")) as process:
        env = clean_aws_env(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=process.url,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp_path / "auth-token"),
            FROM_HTTP_MAX_RETRIES="4",
        )
        out = run_node(node_client, env)
        metrics = http_get(process.base + "/metrics")[2].decode()
    assert out["ok"], out
    assert 'route="/v1/credentials",status="503"}' in metrics


def test_rotated_auth_token_is_honoured(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewrite the auth token file: within a second the new token works, the old one not."""
    with daemon(start_args(emulator, tmp_path)) as process:
        process.wait_event("exchanged")
        old = process.auth_token()
        staged = tmp_path / "auth-token.new"
        staged.write_text("rotated-token-" + "r" * 30)
        staged.replace(tmp_path / "auth-token")
        time.sleep(1.1)
        frozen = boto3_credentials(
            monkeypatch,
            AWS_CONTAINER_CREDENTIALS_FULL_URI=process.url,
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp_path / "auth-token"),
        )
        assert http_get(process.url, old)[0] == 403
        assert process.events("auth_token_reloaded")
    assert frozen.access_key.startswith("ASIA")  # type: ignore[attr-defined]
