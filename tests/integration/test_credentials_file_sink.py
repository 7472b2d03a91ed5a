"""``serve --write-credentials-file`` against a real daemon process: written, rewritten on
refresh, read by botocore, other profiles kept, cleared at shutdown as configured."""

from __future__ import annotations

import configparser
import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.peers import (
    DaemonProcess,
    EmulatorThread,
    clean_aws_env,
    daemon,
    emulator_args,
    http_get,
    run_sidecar,
)

OTHER = "# my own profile\n[other]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = x\n"


def start_args(emulator: EmulatorThread, tmp_path: Path, *extra: str) -> list[str]:
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    return emulator_args(emulator, token, tmp_path / "auth", *extra)


def read_profile(path: Path, profile: str) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read_string(path.read_text())
    return dict(parser.items(profile))


def served_key(process: DaemonProcess) -> str:
    status, _, body = http_get(process.url, process.auth_token())
    assert status == 200
    return str(json.loads(body)["AccessKeyId"])


def test_file_written_0600_rewritten_on_refresh_and_cleared(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """The profile appears (0600) with the served credentials, is rewritten after a SIGHUP
    refresh, the other profile survives byte for byte, and SIGTERM removes only ours."""
    directory = tmp_path / "aws"
    directory.mkdir(mode=0o700)
    path = directory / "credentials"
    path.write_text(OTHER)
    args = start_args(emulator, tmp_path, "--write-credentials-file", str(path), "--profile", "ci")
    with daemon(args) as process:
        process.wait_event("credentials_file_written")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = read_profile(path, "ci")
        assert first["aws_access_key_id"] == served_key(process)
        assert path.read_text().startswith(OTHER)
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)
        process.wait_event("credentials_file_written")
        second = read_profile(path, "ci")
        assert second["aws_access_key_id"] != first["aws_access_key_id"]
        assert second["aws_access_key_id"] == served_key(process)
        assert read_profile(path, "other") == {
            "aws_access_key_id": "AKIAOTHER",
            "aws_secret_access_key": "x",
        }
        code, _ = process.stop()
        assert code == 0
    assert path.read_text() == OTHER


def test_botocore_reads_the_file(emulator: EmulatorThread, tmp_path: Path) -> None:
    """botocore's shared-credentials provider reads the profile and signs an STS call."""
    path = tmp_path / "credentials"
    args = start_args(emulator, tmp_path, "--write-credentials-file", str(path))
    with daemon(args) as process:
        process.wait_event("credentials_file_written")
        script = (
            "import json, sys, boto3; s = boto3.Session(); c = s.get_credentials(); "
            "i = s.client('sts', endpoint_url=sys.argv[1]).get_caller_identity(); "
            "print(json.dumps({'method': c.method, 'arn': i['Arn']}))"
        )
        env = clean_aws_env(AWS_SHARED_CREDENTIALS_FILE=str(path), AWS_DEFAULT_REGION="us-east-1")
        done = subprocess.run(
            [sys.executable, "-c", script, emulator.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out["method"] == "shared-credentials-file"
        assert out["arn"].startswith("arn:aws:sts::123456789012:assumed-role/ci/")
        process.stop()
    assert not path.exists()  # remove: nothing else was in it


def test_keep_and_empty_at_shutdown(emulator: EmulatorThread, tmp_path: Path) -> None:
    """--credentials-file-on-exit keep leaves the profile; empty leaves an empty file."""
    for mode, expected in (("keep", True), ("empty", False)):
        path = tmp_path / f"credentials-{mode}"
        args = start_args(
            emulator,
            tmp_path,
            "--write-credentials-file",
            str(path),
            "--credentials-file-on-exit",
            mode,
        )
        with daemon(args) as process:
            process.wait_event("credentials_file_written")
            process.stop()
        assert path.exists()
        assert ("[default]" in path.read_text()) is expected


def test_a_failed_write_is_logged_and_serving_goes_on(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """A file that cannot be written (missing directory): one clear error, no secret in the
    log, and the endpoint still serves."""
    path = tmp_path / "missing" / "credentials"
    args = start_args(emulator, tmp_path, "--write-credentials-file", str(path))
    with daemon(args) as process:
        failed = process.wait_event("credentials_file_failed")
        assert failed["level"] == "error"
        assert failed["path"] == str(path)
        key = served_key(process)
        time.sleep(0.2)  # let anything else it would log arrive
        assert len(process.events("credentials_file_failed")) == 1
        assert key not in process.output
        process.stop()


def test_bad_sink_settings_are_configuration_errors(tmp_path: Path) -> None:
    """An unknown --credentials-file-on-exit and a bad --profile are reported together."""
    token = tmp_path / "token"
    token.write_text("a.b.c")
    result = run_sidecar(
        "serve",
        "--role-arn",
        "arn:aws:iam::123456789012:role/ci",
        "--token-file",
        str(token),
        "--insecure-no-auth",
        "--write-credentials-file",
        str(tmp_path / "credentials"),
        "--profile",
        "bad name]",
        "--credentials-file-on-exit",
        "shred",
    )
    assert result.returncode == 2
    assert "--credentials-file-on-exit='shred' must be one of remove, empty, keep" in result.stderr
    assert "--profile: profile name 'bad name]' is not usable" in result.stderr
