"""`credential-sidecar exec -- COMMAND`: credentials for one child, for as long as it runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


DEV_ARN = "arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/"
STATIC_KEY = "AKIASTATICFILEKEY000"
#: Prints who the child's boto3 is (default chain, nothing in code) and its region.
BOTO3_IDENTITY = (
    "import json, boto3; s = boto3.Session(); "
    "print(json.dumps({'arn': s.client('sts').get_caller_identity()['Arn'], "
    "'region': s.region_name}))"
)


def laptop_home(tmp_path: Path) -> Path:
    """A HOME like a developer laptop's: static keys, a credential_process, source_profile,
    a ~/.boto; every one of them would win over container credentials if the SDK saw it."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {STATIC_KEY}\naws_secret_access_key = static-secret\n"
        f"[work]\naws_access_key_id = {STATIC_KEY}\naws_secret_access_key = static-secret\n"
    )
    process = json.dumps(
        {"Version": 1, "AccessKeyId": STATIC_KEY, "SecretAccessKey": "process-secret"}
    )
    (home / ".aws" / "config").write_text(
        "[default]\nregion = eu-north-1\noutput = json\n"
        f"credential_process = {sys.executable} -c 'print({process!r})'\n"
        "[profile work]\nregion = ap-southeast-2\nsource_profile = default\n"
        "role_arn = arn:aws:iam::123456789012:role/other\n"
    )
    (home / ".boto").write_text(
        f"[Credentials]\naws_access_key_id = {STATIC_KEY}\naws_secret_access_key = boto-secret\n"
    )
    return home


def laptop_env(home: Path, **extra: str) -> dict[str, str]:
    env = clean_aws_env(HOME=str(home), **extra)
    for variable in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.pop(variable)  # the SDKs' defaults: files under HOME
    return env


@pytest.mark.parametrize(("profile", "region"), [(None, "eu-north-1"), ("work", "ap-southeast-2")])
def test_file_credentials_cannot_win_over_the_role(
    tmp_path: Path, profile: str | None, region: str
) -> None:
    """With static keys, credential_process, source_profile and ~/.boto under HOME, the
    child's boto3 is the role, and keeps the region of the user's (AWS_PROFILE's) profile."""
    home = laptop_home(tmp_path)
    env = laptop_env(home, **({"AWS_PROFILE": profile} if profile else {}))
    result = run_sidecar("exec", "--dev", "--", sys.executable, "-c", BOTO3_IDENTITY, env=env)
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)
    assert child["arn"].startswith(DEV_ARN)
    assert child["region"] == region


def test_file_credentials_cannot_win_with_the_aws_cli(tmp_path: Path) -> None:
    """The AWS CLI under exec, in a HOME full of other credentials, is the role."""
    env = laptop_env(laptop_home(tmp_path))
    cli = [sys.executable, "-m", "awscli", "sts", "get-caller-identity", "--output", "json"]
    result = run_sidecar("exec", "--dev", "--", *cli, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Arn"].startswith(DEV_ARN)


def test_file_credentials_cannot_win_with_the_javascript_sdk(
    tmp_path: Path, node_client: Path
) -> None:
    """The JavaScript SDK v3's default chain under exec, in a HOME full of other
    credentials, is the role."""
    env = laptop_env(laptop_home(tmp_path))
    script = node_client.parent / "caller-identity.mjs"
    result = run_sidecar("exec", "--dev", "--", "node", str(script), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["arn"].startswith(DEV_ARN), out
    assert out["region"] == "eu-north-1"


def test_the_daemons_token_sources_are_not_passed_on(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """The child gets neither the web-identity token (--token-env) nor what could mint one
    (GitHub's request token, CI token variables), nor any SIDECAR_* variable."""
    jwt = emulator.issuer.mint("repo:org/app")
    env = clean_aws_env(
        MY_JWT=jwt,
        ACTIONS_ID_TOKEN_REQUEST_TOKEN="github-request-secret",
        ACTIONS_ID_TOKEN_REQUEST_URL="https://token.actions.example/x?y=1",
        CIRCLE_OIDC_TOKEN_V2="circle.token.value",
        CIRCLE_OIDC_TOKEN="circle.v1.token",
        CI_JOB_JWT_V2="gitlab.job.jwt",
        ANOTHER_STS_JWT=emulator.issuer.mint("repo:org/other"),
        BITBUCKET_STEP_OIDC_TOKEN="bitbucket.token.value",
        SIDECAR_ROLE_ARN="arn:aws:iam::123456789012:role/ci",
        SIDECAR_STS_ENDPOINT=emulator.url,
    )
    print_all = "import json, os; print(json.dumps(dict(os.environ)))"
    result = run_sidecar(
        "exec", "--token-env", "MY_JWT", "--", sys.executable, "-c", print_all, env=env
    )
    assert result.returncode == 0, result.stderr
    child = json.loads(result.stdout)
    for gone in (
        "MY_JWT",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "CIRCLE_OIDC_TOKEN_V2",
        "CIRCLE_OIDC_TOKEN",
        "CI_JOB_JWT_V2",
        "ANOTHER_STS_JWT",
        "BITBUCKET_STEP_OIDC_TOKEN",
    ):
        assert gone not in child
    assert not [name for name in child if name.startswith("SIDECAR_")]
    for secret in (jwt, "github-request-secret", "circle.token.value", "bitbucket.token.value"):
        assert not [name for name, value in child.items() if secret in value]


def test_the_plain_auth_token_variable_works_alone(tmp_path: Path) -> None:
    """The child gets AWS_CONTAINER_AUTHORIZATION_TOKEN too, equal to the file's token, and
    an SDK that reads only that variable gets the role."""
    child = (
        "import json, os, boto3; "
        "token = os.environ['AWS_CONTAINER_AUTHORIZATION_TOKEN']; "
        "same = open(os.environ.pop('AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE')).read() == token; "
        "arn = boto3.client('sts').get_caller_identity()['Arn']; "
        "print(json.dumps({'same': same, 'arn': arn}))"
    )
    result = run_sidecar("exec", "--dev", "--", sys.executable, "-c", child)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["same"] is True
    assert out["arn"].startswith(DEV_ARN)


@pytest.mark.parametrize(
    ("listen", "loopback"), [("0.0.0.0:0", "http://127.0.0.1:"), ("[::]:0", "http://[::1]:")]
)
def test_unspecified_listen_address_gives_the_child_loopback(listen: str, loopback: str) -> None:
    """exec --listen 0.0.0.0 (or [::]): the child's URL names loopback, which SDKs accept."""
    child = (
        "import json, os, boto3; "
        "print(json.dumps({'url': os.environ['AWS_CONTAINER_CREDENTIALS_FULL_URI'], "
        "'arn': boto3.client('sts').get_caller_identity()['Arn']}))"
    )
    result = run_sidecar("exec", "--dev", "--listen", listen, "--", sys.executable, "-c", child)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["url"].startswith(loopback)
    assert out["arn"].startswith(DEV_ARN)


def test_exec_with_a_config_file_that_disables_auth(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """exec --config FILE with insecure_no_auth = true runs (no contradiction with exec's
    own auth token file), and the child gets no auth token variable."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'insecure_no_auth = true\nsts_endpoint = "{emulator.url}"\n'
        f'[token]\nfile = "{token}"\n'
        '[roles.ci]\nrole_arn = "arn:aws:iam::123456789012:role/ci"\ndefault = true\n'
    )
    result = run_sidecar("exec", "--config", str(config), "--", sys.executable, "-c", PRINT_ENV)
    assert result.returncode == 7, result.stderr
    child = json.loads(result.stdout)
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" not in child
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" not in child
    assert child["AWS_CONTAINER_CREDENTIALS_FULL_URI"].startswith("http://127.0.0.1:")


def test_child_gets_back_the_open_file_limit_exec_started_with() -> None:
    """The daemon raises its own soft open-file limit; the command gets the one exec had."""
    # The child looks after a moment: its limit is given back right after it starts.
    child = (
        "import resource, time; time.sleep(0.5); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    lowered = ["sh", "-c", 'ulimit -Sn 512 && exec "$@"', "sh"]
    result = subprocess.run(
        [*lowered, *EXEC, "--dev", "--", sys.executable, "-c", child],
        env=clean_aws_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "512"
