"""What exec's child gets: its environment and its AWS config files (no process started)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import jwt as pyjwt
import pytest

from sidecar.config import load_config
from sidecar.core.secret import Secret
from sidecar.outputs.aws_files import MAX_CONFIG_BYTES, profile_settings, write_child_files
from sidecar.outputs.execute import (
    ChildEndpoint,
    child_environment,
    daemon_token_variables,
    loopback_url,
)

URL = "http://127.0.0.1:4000/v1/credentials"
FILES = {"AWS_CONFIG_FILE": "/p/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/p/c"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://0.0.0.0:9911/v1/credentials", "http://127.0.0.1:9911/v1/credentials"),
        ("http://[::]:9911/v1/credentials", "http://[::1]:9911/v1/credentials"),
        ("http://127.0.0.2:9911/v1/credentials", "http://127.0.0.2:9911/v1/credentials"),
        ("http://[::1]:80/", "http://[::1]:80/"),
        ("http://localhost:1/x", "http://localhost:1/x"),
    ],
)
def test_loopback_url(url: str, expected: str) -> None:
    """Unspecified addresses become loopback; every other URL is left alone."""
    assert loopback_url(url) == expected


def test_child_environment_removes_other_credentials_and_token_sources() -> None:
    """Static keys, profiles, credential files, token sources and SIDECAR_* are removed;
    the endpoint, both auth token variables and the generated files are set."""
    environ = {
        "PATH": "/bin",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_KEY": "go-spelling",
        "AWS_PROFILE": "prod",
        "AWS_CONFIG_FILE": "/home/me/.aws/config",
        "AWS_CREDENTIAL_FILE": "/home/me/ec2-creds",
        "BOTO_CONFIG": "/home/me/.boto",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "someone-elses",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-secret",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "https://example/",
        "CIRCLE_OIDC_TOKEN_V2": "a.b.c",
        "GITLAB_JWT": "d.e.f",
        "SIDECAR_ANYTHING": "x",
    }
    endpoint = ChildEndpoint("http://0.0.0.0:4000/v1/credentials", "/p/auth", Secret("tok"))
    env = child_environment(environ, endpoint, FILES, {"GITLAB_JWT", "CIRCLE_OIDC_TOKEN_V2"})
    assert env == {
        "PATH": "/bin",
        "AWS_REGION": "eu-west-1",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-secret",  # not in the given list
        "ACTIONS_ID_TOKEN_REQUEST_URL": "https://example/",
        **FILES,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": URL,
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/p/auth",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok",
    }
    assert "ACTIONS_ID_TOKEN_REQUEST_TOKEN" not in child_environment(
        environ, endpoint, FILES
    )  # the default list


def test_token_variables_include_the_configured_one(token_file: Path) -> None:
    """The --token-env variable joins the CI token variables that are never passed on."""
    env = {"SIDECAR_INSECURE_NO_AUTH": "1", "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/r"}
    config = load_config({"token_env": "MY_JWT"}, {**env, "MY_JWT": "a.b.c"})
    assert daemon_token_variables(config) >= {
        "MY_JWT",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "CIRCLE_OIDC_TOKEN_V2",
        "BITBUCKET_STEP_OIDC_TOKEN",
    }


def test_without_auth_no_token_variable_is_inherited() -> None:
    """With --insecure-no-auth the child gets neither token variable, not even inherited ones."""
    environ = {
        "AWS_CONTAINER_AUTHORIZATION_TOKEN": "x",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "y",
    }
    env = child_environment(environ, ChildEndpoint(URL), FILES)
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN" not in env
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" not in env


def test_dev_region_only_when_the_user_has_none() -> None:
    """Dev mode's region fills a gap; AWS_DEFAULT_REGION alone is kept consistent."""
    env = child_environment({}, ChildEndpoint(URL), FILES, default_region="us-east-1")
    assert (env["AWS_REGION"], env["AWS_DEFAULT_REGION"]) == ("us-east-1", "us-east-1")
    env = child_environment(
        {"AWS_DEFAULT_REGION": "eu-west-3"}, ChildEndpoint(URL), FILES, default_region="us-east-1"
    )
    assert (env["AWS_REGION"], env["AWS_DEFAULT_REGION"]) == ("eu-west-3", "eu-west-3")
    assert "AWS_REGION" not in child_environment({}, ChildEndpoint(URL), FILES)


CONFIG = """
[default]
region = eu-north-1
output = text
credential_process = /bin/steal
aws_access_key_id = AKIASTATIC
[profile work]
region = ap-southeast-2
source_profile = default
role_arn = arn:aws:iam::123456789012:role/x
s3 =
  addressing_style = path
[profile odd]
region = not a region
"""


def test_profile_settings_keep_only_harmless_keys(tmp_path: Path) -> None:
    """Region and output come from the user's profile (AWS_PROFILE's, else default);
    credential settings and nested values never do."""
    path = tmp_path / "config"
    path.write_text(CONFIG)
    env = {"AWS_CONFIG_FILE": str(path)}
    assert profile_settings(env) == {"region": "eu-north-1", "output": "text"}
    assert profile_settings({**env, "AWS_PROFILE": "work"}) == {"region": "ap-southeast-2"}
    assert profile_settings({**env, "AWS_DEFAULT_PROFILE": "odd"}) == {}
    assert profile_settings({**env, "AWS_PROFILE": "missing"}) == {}
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text(CONFIG)
    assert profile_settings({"HOME": str(tmp_path)})["region"] == "eu-north-1"


def test_profile_settings_never_block_or_read_much(tmp_path: Path) -> None:
    """A FIFO, a directory, an oversized or a broken file gives no settings, at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_text("[default]\nregion = eu-north-1\n" + "#" * MAX_CONFIG_BYTES)
    broken = tmp_path / "broken"
    broken.write_text("region = eu-north-1\n")  # no section header
    for path in (fifo, tmp_path, big, broken, tmp_path / "missing"):
        assert profile_settings({"AWS_CONFIG_FILE": str(path)}) == {}


def test_child_files_hold_no_credentials(tmp_path: Path) -> None:
    """The generated config has the kept settings only; the credential files are empty; 0600."""
    files = write_child_files(tmp_path, {"region": "eu-north-1"})
    assert set(files) == {"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "BOTO_CONFIG"}
    assert Path(files["AWS_CONFIG_FILE"]).read_text() == "[default]\nregion = eu-north-1\n"
    assert Path(files["AWS_SHARED_CREDENTIALS_FILE"]).read_text() == ""
    assert Path(files["BOTO_CONFIG"]).read_text() == ""
    for path in files.values():
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600


def test_other_ci_tokens_and_any_jwt_for_sts_are_removed() -> None:
    """CI token variables the daemon did not use (CircleCI v1, GitLab's CI_JOB_JWT*), and any
    variable holding a JWT for STS's audience, are not passed on; other JWTs are."""
    for_sts = pyjwt.encode({"aud": ["sts.amazonaws.com"], "sub": "x"}, "k" * 32, "HS256")
    for_other = pyjwt.encode({"aud": "api.example", "sub": "x"}, "k" * 32, "HS256")
    environ = {
        "CIRCLE_OIDC_TOKEN": "v1.token.value",
        "CI_JOB_JWT": "gitlab.old.token",
        "CI_JOB_JWT_V2": "gitlab.v2.token",
        "SYSTEM_OIDCREQUESTURI": "https://dev.azure.example/oidc",
        "DEPLOY_TOKEN": for_sts,
        "CUSTOM_AUD_TOKEN": pyjwt.encode({"aud": "my-sts"}, "k" * 32, "HS256"),
        "API_TOKEN": for_other,
        "NOT_A_JWT": "eyJ-but.not.decodable",
    }
    env = child_environment(environ, ChildEndpoint(URL), FILES, sts_audiences={"my-sts"})
    assert env["API_TOKEN"] == for_other
    assert env["NOT_A_JWT"] == "eyJ-but.not.decodable"
    assert env["DEPLOY_TOKEN"] == for_sts  # its audience is not the configured one
    for gone in ("CIRCLE_OIDC_TOKEN", "CI_JOB_JWT", "CI_JOB_JWT_V2", "SYSTEM_OIDCREQUESTURI"):
        assert gone not in env
    assert "CUSTOM_AUD_TOKEN" not in env
    assert "DEPLOY_TOKEN" not in child_environment(environ, ChildEndpoint(URL), FILES)
