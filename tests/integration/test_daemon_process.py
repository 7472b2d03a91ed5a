"""The daemon as a process: startup errors, signals, draining, secrets, dev mode."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.peers import (
    DaemonProcess,
    EmulatorThread,
    clean_aws_env,
    daemon,
    emulator_args,
    http_get,
    run_sidecar,
)


def upstream_args(emulator: EmulatorThread, tmp_path: Path, *extra: str) -> list[str]:
    token_file = tmp_path / "token"
    if not token_file.exists():
        token_file.write_text(emulator.issuer.mint("repo:org/app"))
    return emulator_args(emulator, token_file, tmp_path / "auth-token", *extra)


def test_bad_configuration_exits_2_listing_every_problem(tmp_path: Path) -> None:
    """Several bad values: exit 2, each named with its fix, and no traceback."""
    result = run_sidecar(
        "serve",
        "--role-arn",
        "arn:aws:iam::1:role/x",
        "--token-file",
        str(tmp_path / "missing"),
        "--duration",
        "50000",
        "--listen",
        "nowhere",
    )
    assert result.returncode == 2
    assert "invalid configuration (5 problems)" in result.stderr
    for fragment in (
        "is not an IAM role ARN",
        "does not exist",
        "outside STS's limits",
        "is not a listen address",
        "--insecure-no-auth",
    ):
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_auth_token_file_with_newline_is_refused(emulator: EmulatorThread, tmp_path: Path) -> None:
    """An auth token file ending in a newline stops startup with the fix (exit 2)."""
    (tmp_path / "auth-token").write_text("a" * 32 + "\n")
    process = DaemonProcess(upstream_args(emulator, tmp_path)).start(wait_for=None)
    assert process.wait() == 2
    assert "printf %s" in process.output
    assert "Traceback" not in process.output


def test_port_in_use_exits_3(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A taken listen address exits 3 with a message naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = upstream_args(emulator, tmp_path)
        args[args.index("127.0.0.1:0")] = f"127.0.0.1:{port}"
        process = DaemonProcess(args).start(wait_for=None)
        assert process.wait() == 3
    assert f"cannot listen on 127.0.0.1:{port}" in process.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_fast(
    emulator: EmulatorThread, tmp_path: Path, signum: int
) -> None:
    """SIGTERM/SIGINT: exit 0 well within 5 s, logging stopping and stopped."""
    with daemon(upstream_args(emulator, tmp_path)) as process:
        process.wait_event("exchanged")
        code, elapsed = process.stop(signum)
    assert code == 0
    assert elapsed < 5
    events = [json.loads(line)["event"] for line in process.lines if line.startswith("{")]
    assert events[-2:] == ["stopping", "stopped"]


def test_in_flight_request_finishes_during_shutdown(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """A request already waiting when SIGTERM arrives still gets its (503) answer."""
    emulator.add_fault(hang=True)
    args = upstream_args(emulator, tmp_path, "--cold-start-wait", "900ms")
    with daemon(args) as process:
        results: list[int] = []
        auth = (tmp_path / "auth-token").read_text()
        client = threading.Thread(target=lambda: results.append(http_get(process.url, auth)[0]))
        client.start()
        time.sleep(0.3)
        code, _ = process.stop()
        client.join(5)
    assert code == 0
    assert results == [503]


def test_no_secret_in_output(emulator: EmulatorThread, tmp_path: Path) -> None:
    """Credentials, the auth token and the web-identity token never appear in the logs."""
    args = upstream_args(emulator, tmp_path, "--log-level", "debug", "--audit-log")
    with daemon(args) as process:
        process.wait_event("exchanged")
        auth = (tmp_path / "auth-token").read_text()
        status, _, body = http_get(process.url, auth)
        assert status == 200
        http_get(process.url, "wrong-token-0123456789")
        http_get(process.url)
        http_get(process.base + "/metrics")
        process.stop()
    creds = json.loads(body)
    output = process.output
    web_identity = (tmp_path / "token").read_text()
    for secret in (
        creds["SecretAccessKey"],
        creds["Token"],
        creds["AccessKeyId"],
        auth,
        web_identity,
        web_identity.split(".")[2],
    ):
        assert secret not in output
    assert creds["AccessKeyId"][:4] + "..." + creds["AccessKeyId"][-4:] in output
    (served,) = process.events("served")  # the audit line: who got which (masked) key
    assert served["role"] == "default"
    assert served["remote"] == "127.0.0.1"
    assert served["user_agent"].startswith("Python-urllib")


def test_dev_mode_answers_a_real_aws_cli(tmp_path: Path) -> None:
    """`serve --dev` prints the env lines; with them `aws sts get-caller-identity` works."""
    with daemon(["--dev", "--listen", "127.0.0.1:0"]) as process:
        process.wait_event("exchanged")
        deadline = time.monotonic() + 10
        while not any("aws sts get-caller-identity" in line for line in process.stdout_lines):
            assert time.monotonic() < deadline, process.output
            time.sleep(0.05)
        exports = {
            match.group(1): match.group(2)
            for line in process.stdout_lines
            for match in re.finditer(r"(AWS_[A-Z_]+)=(\S+)", line)
        }
        result = subprocess.run(
            [sys.executable, "-m", "awscli", "sts", "get-caller-identity", "--output", "json"],
            env=clean_aws_env(**exports),
            capture_output=True,
            text=True,
            timeout=60,
        )
        process.stop()
    assert result.returncode == 0, result.stderr + process.output
    identity = json.loads(result.stdout)
    assert identity["Arn"].startswith(
        "arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/"
    )
    assert set(exports) >= {
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_ENDPOINT_URL_STS",
    }
