"""`serve --dev`: the lines it prints work when pasted into a shell, as printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import DaemonProcess, clean_aws_env, daemon, http_get

DEV_ARN = "arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/"


def printed_lines(process: DaemonProcess) -> list[str]:
    process.wait_event("exchanged")
    deadline = time.monotonic() + 10
    while not any("aws sts get-caller-identity" in line for line in process.stdout_lines):
        assert time.monotonic() < deadline, process.output
        time.sleep(0.05)
    return [line.rstrip("\n") for line in process.stdout_lines]


@pytest.mark.parametrize(
    ("listen", "url", "only_plain_token"),
    [
        ("127.0.0.1:0", "http://127.0.0.1:", True),
        ("0.0.0.0:0", "http://127.0.0.1:", False),
        ("[::]:0", "http://[::1]:", False),
    ],
)
def test_pasted_lines_give_the_aws_cli_the_dev_role(
    listen: str, url: str, only_plain_token: bool
) -> None:
    """The printed lines, run by a shell, let the AWS CLI in: with a loopback URL even when
    listening on 0.0.0.0 or [::], and with AWS_CONTAINER_AUTHORIZATION_TOKEN alone (older
    SDKs read only that one); the token itself is never printed."""
    with daemon(["--dev", "--listen", listen]) as process:
        lines = printed_lines(process)
        exports = "\n".join(lines[:-1])
        assert re.search(f"AWS_CONTAINER_CREDENTIALS_FULL_URI='?{re.escape(url)}", exports)
        assert "export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=" in exports
        assert re.search(r"^export AWS_CONTAINER_AUTHORIZATION_TOKEN$", exports, re.M)
        token_file = next(
            line.split("=", 1)[1] for line in lines if "AUTHORIZATION_TOKEN_FILE=" in line
        )
        assert Path(token_file).read_text() not in process.output
        script = "\n".join(
            [
                exports,
                "unset AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" if only_plain_token else "",
                f"exec {sys.executable} -m awscli sts get-caller-identity --output json",
            ]
        )
        result = subprocess.run(
            ["sh", "-c", script],
            env=clean_aws_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        process.stop()
    assert result.returncode == 0, result.stderr + process.output
    assert json.loads(result.stdout)["Arn"].startswith(DEV_ARN)


def test_dev_mode_with_insecure_no_auth() -> None:
    """`serve --dev --insecure-no-auth` starts (dev mode's default auth token file does not
    contradict it) and serves without a token."""
    with daemon(["--dev", "--insecure-no-auth", "--listen", "127.0.0.1:0"]) as process:
        lines = printed_lines(process)
        status, _, body = http_get(process.url)
        process.stop()
    assert status == 200, body
    assert not [line for line in lines if "AUTHORIZATION_TOKEN" in line]
