"""`credential-sidecar exec -- COMMAND`: credentials for one child, for as long as it runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.peers import EmulatorThread, clean_aws_env, emulator_args, run_sidecar

EXEC = [sys.executable, "-m", "sidecar", "exec"]
PRINT_ENV = (
    "import json, os, sys; "
    "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('AWS_')})); "
    "sys.exit(7)"
)


def test_dev_exec_runs_the_aws_cli() -> None:
    """One command, no AWS account: the CLI gets refreshed credentials and calls STS."""
    result = run_sidecar(
        "exec",
        "--dev",
        "--",
        sys.executable,
        "-m",
        "awscli",
        "sts",
        "get-caller-identity",
        "--output",
        "json",
    )
    assert result.returncode == 0, result.stderr
    assert ":assumed-role/credential-sidecar-dev/" in json.loads(result.stdout)["Arn"]


def test_child_environment_and_exit_code(emulator: EmulatorThread, tmp_path: Path) -> None:
    """The child's exit code is ours; shadowing variables are gone; the token file is private."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    env = clean_aws_env(
        AWS_ROLE_ARN="arn:aws:iam::123456789012:role/ci",
        AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
        AWS_ACCESS_KEY_ID="AKIASTATICKEY0000000",
        AWS_SECRET_ACCESS_KEY="static-secret",
        AWS_PROFILE="prod",
        AWS_REGION="eu-west-1",
        SIDECAR_STS_ENDPOINT=emulator.url,
    )
    result = run_sidecar("exec", "--", sys.executable, "-c", PRINT_ENV, env=env)
    assert result.returncode == 7, result.stderr
    child = json.loads(result.stdout)
    for gone in (
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
    ):
        assert gone not in child
    assert child["AWS_REGION"] == "eu-west-1"
    assert child["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")
    token_file = Path(child["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
    assert not token_file.exists()  # removed with its private directory
    assert "static-secret" not in result.stderr


def test_no_credentials_no_command(emulator: EmulatorThread, tmp_path: Path) -> None:
    """When STS refuses, the command is not run and the exit code is 5, with the reason."""
    emulator.add_fault(
        error="AccessDenied",
        status=403,
        message="Not authorized to perform sts:AssumeRoleWithWebIdentity",
    )
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    marker = tmp_path / "ran"
    args = emulator_args(emulator, token, tmp_path / "auth")
    result = run_sidecar(
        "exec",
        *args,
        "--wait",
        "1",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w').close()",
    )
    assert result.returncode == 5
    assert not marker.exists()
    assert "AccessDenied" in result.stderr and "trust policy" in result.stderr
    assert "no credentials within 1s" in result.stderr


def test_sigterm_is_forwarded(emulator: EmulatorThread, tmp_path: Path) -> None:
    """SIGTERM to exec reaches the child; its exit code comes back."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    child = (
        "import signal, sys, time; "
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42)); "
        "print('ready', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen(
        [
            *EXEC,
            *emulator_args(emulator, token, tmp_path / "auth"),
            "--",
            sys.executable,
            "-c",
            child,
        ],
        env=clean_aws_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 42
    assert time.monotonic() - started < 5
    proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()


def test_exec_needs_a_command() -> None:
    """Without a command, exec explains its usage (argparse exit 2)."""
    result = run_sidecar("exec", "--dev")
    assert result.returncode == 2
    assert "exec needs a command" in result.stderr
