"""Token source selection and the TOML config file: roles, chains, defaults, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import Config, Supplied, config_warnings, load_config
from sidecar.core.errors import ConfigError
from sidecar.sources.command import CommandSource
from sidecar.sources.env import EnvSource
from sidecar.sources.file import FileSource
from sidecar.sources.github import GithubSource
from sidecar.sources.registry import kind_of

A = "arn:aws:iam::123456789012:role/"


def from_file(tmp_path: Path, text: str, **env: str) -> Config:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return load_config({"config": str(path)}, env)


def test_token_source_detection(token_file: Path) -> None:
    """file when a path is set; github inside Actions; a lone CI variable; command; env."""
    base = {"AWS_ROLE_ARN": A + "ci", "SIDECAR_INSECURE_NO_AUTH": "1"}
    cases = [
        ({"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)}, "file"),
        (
            {
                "ACTIONS_ID_TOKEN_REQUEST_URL": "https://gh.example/t?api-version=2.0",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "x",
            },
            "github",
        ),
        ({"CIRCLE_OIDC_TOKEN_V2": "a.b.c"}, "env"),
        ({"SIDECAR_TOKEN_COMMAND": "buildkite-agent oidc request-token --audience sts"}, "command"),
        ({"SIDECAR_TOKEN_ENV": "GITLAB_TOKEN", "GITLAB_TOKEN": "a.b.c"}, "env"),
    ]
    for extra, kind in cases:
        (role,) = load_config({}, {**base, **extra}).roles
        assert kind_of(role.token).name == kind, extra
    token = load_config({}, {**base, **cases[3][0]}).roles[0].token
    assert isinstance(token, CommandSource)
    assert token.argv == ("buildkite-agent", "oidc", "request-token", "--audience", "sts")


def test_github_request_token_is_secret() -> None:
    """The Actions request token is held as a Secret and never shown."""
    env = {
        "AWS_ROLE_ARN": A + "ci",
        "SIDECAR_INSECURE_NO_AUTH": "1",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "https://gh.example/t",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "very-secret-request-token",
    }
    config = load_config({}, env)
    assert "very-secret-request-token" not in repr(config)
    token = config.roles[0].token
    assert isinstance(token, GithubSource)
    assert token.request_token.reveal() == "very-secret-request-token"


def test_token_source_problems() -> None:
    """github outside Actions, an unset env variable, an empty command: all reported."""
    base = {"AWS_ROLE_ARN": A + "ci", "SIDECAR_INSECURE_NO_AUTH": "1"}
    for flags, match in [
        ({"token_source": "github"}, "permissions: id-token: write"),
        ({"token_env": "NOPE"}, "NOPE \\(--token-env\\) is not set"),
        ({"token_source": "command"}, "needs --token-command"),
        ({"token_source": "ftp"}, "must be one of file, github, env, command"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(flags, base)


def test_flag_chain_and_allow_list(token_file: Path) -> None:
    """--chain adds AssumeRole hops (capped at 1 h); --allowed-accounts is checked."""
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file), "SIDECAR_INSECURE_NO_AUTH": "1"}
    config = load_config(
        {"role_arn": A + "ci", "duration": "12h", "chain": f"{A}deploy, {A}narrow"}, env
    )
    role = config.roles[0]
    assert [h.role_arn for h in role.hops] == [A + "ci", A + "deploy", A + "narrow"]
    assert [h.duration for h in role.hops] == [43200, 3600, 3600]
    assert any("capped at 1 h" in w for w in config_warnings(config))
    with pytest.raises(ConfigError, match="not in allowed_accounts"):
        load_config(
            {
                "role_arn": A + "ci",
                "chain": "arn:aws:iam::999999999999:role/x",
                "allowed_accounts": "123456789012",
            },
            env,
        )


def test_roles_file(tmp_path: Path, token_file: Path) -> None:
    """Named roles, a chain with options, per-role auth tokens and the default role."""
    config = from_file(
        tmp_path,
        f"""
listen = "127.0.0.1:0"
auth_token_file = "{tmp_path}/auth"
log_format = "json"

[token]
file = "{token_file}"

[roles.deploy]
role_arn = "{A}deploy"
session_name = "{{sub}}"
duration = "2h"
default = true

[roles.upload]
auth_token_file = "{tmp_path}/upload-auth"
allowed_accounts = ["123456789012"]
[[roles.upload.hops]]
role_arn = "{A}ci"
duration = "12h"
[[roles.upload.hops]]
role_arn = "{A}upload-to-s3"
duration = "2h"
external_id = "build"
tags = {{ team = "build" }}
transitive_tag_keys = ["team"]
source_identity = "{{sub}}"
policy = {{ Version = "2012-10-17", Statement = [] }}
""",
    )
    assert config.default_role == "deploy"
    assert config.log_format == "json"
    deploy, upload = config.roles
    assert deploy.duration == 7200 and deploy.hops[0].session_name == "{sub}"
    assert deploy.auth_token_file is None
    assert upload.auth_token_file == tmp_path / "upload-auth"
    assert upload.hops[1].duration == 3600  # clamped, and said so
    assert upload.hops[1].tags == (("team", "build"),)
    assert upload.hops[1].policy == '{"Version":"2012-10-17","Statement":[]}'
    assert any("caps chained AssumeRole" in w for w in config_warnings(config))


def test_flags_override_file_settings(tmp_path: Path, token_file: Path) -> None:
    """A flag beats the file; the file beats AWS_* variables; SIDECAR_* beats the file."""
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'region = "eu-west-1"\nlisten = "127.0.0.1:7000"\n[token]\n'
        f'file = "{token_file}"\n[roles.a]\nrole_arn = "{A}a"\n'
    )
    env = {
        "AWS_REGION": "us-west-2",
        "SIDECAR_INSECURE_NO_AUTH": "1",
        "SIDECAR_LISTEN": "127.0.0.1:8000",
    }
    config = load_config({"config": str(path)}, env)
    assert config.sts.region == "eu-west-1"
    assert config.server.port == 8000
    assert load_config({"config": str(path), "listen": "127.0.0.1:9000"}, env).server.port == 9000
    assert config.default_role == "a"  # the only role is the default


def test_file_problems_are_all_reported(tmp_path: Path, token_file: Path) -> None:
    """Unknown keys, web-identity-only restrictions, bad ARNs, bad defaults: one error."""
    with pytest.raises(ConfigError) as caught:
        from_file(
            tmp_path,
            f"""
colour = "blue"
default_role = "nope"
[token]
file = "{token_file}"
[roles.a]
role_arn = "{A}a"
external_id = "x"
[roles."b c"]
role_arn = "not-an-arn"
[roles.d]
hops = []
""",
            SIDECAR_INSECURE_NO_AUTH="1",
        )
    text = str(caught.value)
    for fragment in (
        "unknown key 'colour'",
        "default_role = 'nope'",
        "external_id: AssumeRoleWithWebIdentity does not accept it",
        "'not-an-arn' is not an IAM role ARN",
        "role names are",
        "hops must be a non-empty array",
    ):
        assert fragment in text


def test_role_flags_conflict_with_file_roles(tmp_path: Path, token_file: Path) -> None:
    """--role-arn next to a file that declares roles is ambiguous and refused."""
    path = tmp_path / "sidecar.toml"
    path.write_text(f'[token]\nfile = "{token_file}"\n[roles.a]\nrole_arn = "{A}a"\n')
    with pytest.raises(ConfigError, match="cannot be combined with the roles"):
        load_config({"config": str(path), "role_arn": A + "b"}, {"SIDECAR_INSECURE_NO_AUTH": "1"})
    # an ambient AWS_ROLE_ARN (EKS injects it) is simply not used
    config = load_config(
        {"config": str(path)}, {"AWS_ROLE_ARN": A + "b", "SIDECAR_INSECURE_NO_AUTH": "1"}
    )
    assert [r.role_arn for r in config.roles] == [A + "a"]


def test_per_role_token_source(tmp_path: Path, token_file: Path) -> None:
    """A role's own [roles.x.token] table overrides the shared one."""
    config = from_file(
        tmp_path,
        f"""
[token]
file = "{token_file}"
[roles.a]
role_arn = "{A}a"
[roles.b]
role_arn = "{A}b"
token = {{ source = "env", env = "OTHER_TOKEN", audience = "gitlab" }}
""",
        SIDECAR_INSECURE_NO_AUTH="1",
        OTHER_TOKEN="a.b.c",
    )
    a, b = config.roles
    assert isinstance(a.token, FileSource)
    assert b.token == EnvSource("OTHER_TOKEN", "gitlab")
    assert config.default_role is None  # two roles, none marked


def test_missing_or_broken_file(tmp_path: Path) -> None:
    """A missing file or invalid TOML is named."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config({"config": str(tmp_path / "nope.toml")}, {})
    with pytest.raises(ConfigError, match="is not valid TOML"):
        from_file(tmp_path, "roles = [")


@pytest.mark.parametrize("value", ["true", '"1"'])
def test_exec_respects_insecure_no_auth_in_the_file(
    tmp_path: Path, token_file: Path, value: str
) -> None:
    """exec --config FILE with insecure_no_auth = true: no auth token file is supplied."""
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'insecure_no_auth = {value}\n[token]\nfile = "{token_file}"\n'
        f'[roles.a]\nrole_arn = "{A}a"\ndefault = true\n'
    )
    config = load_config({"config": str(path)}, {}, Supplied(exec_directory=tmp_path))
    assert config.server.insecure_no_auth is True
    assert config.server.auth_token_file is None


def test_exec_respects_the_files_auth_token_file(tmp_path: Path, token_file: Path) -> None:
    """exec --config FILE naming an auth token file uses that file, not a private one."""
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'auth_token_file = "/run/sidecar/auth"\n[token]\nfile = "{token_file}"\n'
        f'[roles.a]\nrole_arn = "{A}a"\ndefault = true\n'
    )
    config = load_config({"config": str(path)}, {}, Supplied(exec_directory=tmp_path / "x"))
    assert config.server.auth_token_file == Path("/run/sidecar/auth")


def test_file_values_keep_their_toml_types(tmp_path: Path) -> None:
    """TOML values reach the settings as TOML gave them: an array command keeps each
    argument whole (no shell words), numbers and true/false are taken as they are, and a
    table where a value belongs is refused with its key named."""
    config = from_file(
        tmp_path,
        f"""
        insecure_no_auth = true
        failed_request_burst = 7
        cold_start_wait = 0.5
        [token]
        command = ["print-token", "--label", "it's a \\"quoted\\" arg"]
        [roles.ci]
        role_arn = "{A}ci"
        duration = 1800
        """,
    )
    assert config.server.insecure_no_auth
    assert config.server.failed_request_burst == 7
    assert config.refresh.cold_start_wait == 0.5
    (role,) = config.roles
    assert role.token == CommandSource(("print-token", "--label", 'it\'s a "quoted" arg'))
    assert role.duration == 1800
    with pytest.raises(ConfigError, match=r"log_level must be a string, a number"):
        from_file(tmp_path, f'insecure_no_auth = true\nlog_level = {{ x = 1 }}\nrole_arn = "{A}x"')
    with pytest.raises(ConfigError, match=r"config file='True' must be a whole number"):
        from_file(tmp_path, f'failed_request_burst = true\n[roles.a]\nrole_arn = "{A}a"')
