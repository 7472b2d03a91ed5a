"""Configuration parsing: precedence, validation, one error listing every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import (
    DevSupply,
    RefreshPolicy,
    Supplied,
    config_warnings,
    load_config,
    parse_listen,
    parse_seconds,
)
from sidecar.config.checks import shown
from sidecar.core.errors import ConfigError
from sidecar.sources.env import EnvSource
from sidecar.sources.file import FileSource
from sidecar.sources.github import GithubSource

ROLE = "arn:aws:iam::123456789012:role/ci"
DEV_ROLE = "arn:aws:iam::111111111111:role/dev"


def dev_supply(directory: Path, token_file: Path) -> DevSupply:
    return DevSupply(DEV_ROLE, token_file, "http://127.0.0.1:1", "us-east-1", directory)


def base_env(token_file: Path, **extra: str) -> dict[str, str]:
    return {
        "AWS_ROLE_ARN": ROLE,
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "SIDECAR_AUTH_TOKEN_FILE": "/run/sidecar/auth-token",
        **extra,
    }


def test_sdk_environment_is_enough(token_file: Path) -> None:
    """The AWS SDK's own variables configure a working daemon with safe defaults."""
    config = load_config({}, base_env(token_file, AWS_REGION="eu-west-1"))
    (role,) = config.roles
    assert config.default_role == role.name == "default"
    assert role.role_arn == ROLE
    assert role.token == FileSource(token_file)
    assert role.duration == 3600
    assert role.hops[0].session_name is None
    assert role.default_session_name.startswith("credential-sidecar-")
    assert config.sts.region == "eu-west-1"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 9911)
    assert config.server.insecure_no_auth is False


def test_flags_beat_sidecar_env_beat_aws_env(token_file: Path) -> None:
    """Precedence: flag > SIDECAR_* > AWS_*."""
    env = base_env(
        token_file,
        AWS_REGION="eu-west-1",
        SIDECAR_REGION="eu-central-1",
        AWS_DEFAULT_REGION="ap-south-1",
    )
    assert load_config({}, env).sts.region == "eu-central-1"
    assert load_config({"region": "us-west-2"}, env).sts.region == "us-west-2"
    env.pop("SIDECAR_REGION")
    assert load_config({}, env).sts.region == "eu-west-1"
    env.pop("AWS_REGION")
    assert load_config({}, env).sts.region == "ap-south-1"


def test_dev_overrides_sit_between_flags_and_env(tmp_path: Path, token_file: Path) -> None:
    """Dev-mode values replace the environment but not explicit flags."""
    env = base_env(token_file, AWS_REGION="eu-west-1")
    supplied = Supplied(dev=dev_supply(tmp_path, token_file))
    config = load_config({"role_arn": ROLE}, env, supplied)
    assert config.sts.region == "us-east-1"
    assert config.sts.endpoint_url == "http://127.0.0.1:1"
    assert config.roles[0].role_arn == ROLE
    assert load_config({}, env, supplied).roles[0].role_arn == DEV_ROLE


def test_dev_mode_supplies_an_auth_token_file_only_if_auth_was_not_chosen(
    tmp_path: Path, token_file: Path
) -> None:
    """Dev mode's auth token file never contradicts --insecure-no-auth or a chosen file."""
    supplied = Supplied(dev=dev_supply(tmp_path, token_file))
    config = load_config({"dev": "1"}, {}, supplied)
    assert config.server.auth_token_file == tmp_path / "auth-token"
    for flags, env in [
        ({"dev": "1", "insecure_no_auth": "1"}, {}),
        ({"dev": "1"}, {"SIDECAR_INSECURE_NO_AUTH": "1"}),
    ]:
        config = load_config(flags, env, supplied)
        assert config.server.auth_token_file is None
        assert config.server.insecure_no_auth is True
    config = load_config({"dev": "1"}, {"SIDECAR_AUTH_TOKEN_FILE": "/run/a"}, supplied)
    assert config.server.auth_token_file == Path("/run/a")
    # an explicit contradiction of the user's own is still one
    with pytest.raises(ConfigError, match="contradict"):
        load_config({"insecure_no_auth": "1", "auth_token_file": "/run/a"}, {}, supplied)


def test_dev_token_file_yields_to_a_token_source_flag(tmp_path: Path, token_file: Path) -> None:
    """--dev --token-env NAME uses that variable, not dev mode's token file."""
    supplied = Supplied(dev=dev_supply(tmp_path, token_file))
    (role,) = load_config({"dev": "1"}, {}, supplied).roles
    assert role.token == FileSource(token_file)
    (role,) = load_config({"dev": "1", "token_env": "MY_JWT"}, {"MY_JWT": "a.b.c"}, supplied).roles
    assert role.token == EnvSource("MY_JWT")


def test_exec_supplies_a_private_auth_token_file_a_free_port_and_quiet_logs(
    tmp_path: Path, token_file: Path
) -> None:
    """exec's defaults apply where the user chose nothing, and only there."""
    env = base_env(token_file)
    env.pop("SIDECAR_AUTH_TOKEN_FILE")
    supplied = Supplied(exec_directory=tmp_path)
    config = load_config({}, env, supplied)
    assert config.server.auth_token_file == tmp_path / "auth-token"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 0)
    assert config.log_level == "warning"
    config = load_config({"log_level": "debug"}, {**env, "SIDECAR_LISTEN": "[::1]:0"}, supplied)
    assert (config.server.host, config.log_level) == ("::1", "debug")
    config = load_config({}, {**env, "SIDECAR_AUTH_TOKEN_FILE": "/run/a"}, supplied)
    assert config.server.auth_token_file == Path("/run/a")
    for flags, extra in [({"insecure_no_auth": "1"}, {}), ({}, {"SIDECAR_INSECURE_NO_AUTH": "1"})]:
        config = load_config(flags, {**env, **extra}, supplied)
        assert (config.server.auth_token_file, config.server.insecure_no_auth) == (None, True)


def test_exec_in_dev_mode_keeps_the_token_in_its_own_directory(
    tmp_path: Path, token_file: Path
) -> None:
    """exec --dev: the auth token file is exec's, not the dev environment's."""
    supplied = Supplied(dev=dev_supply(tmp_path / "dev", token_file), exec_directory=tmp_path)
    config = load_config({"dev": "1"}, {}, supplied)
    assert config.server.auth_token_file == tmp_path / "auth-token"


def test_sts_endpoint_from_sdk_variables(token_file: Path) -> None:
    """AWS_ENDPOINT_URL_STS wins over AWS_ENDPOINT_URL."""
    env = base_env(token_file, AWS_ENDPOINT_URL="http://a:1", AWS_ENDPOINT_URL_STS="http://b:2")
    assert load_config({}, env).sts.endpoint_url == "http://b:2"
    env.pop("AWS_ENDPOINT_URL_STS")
    assert load_config({}, env).sts.endpoint_url == "http://a:1"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Bad role ARN, duration, session name, token file and listen address: one error."""
    flags = {
        "role_arn": "arn:aws:iam::12345:user/bob",
        "token_file": str(tmp_path / "missing"),
        "session_name": "x",
        "duration": "60",
        "listen": "example.com:99999",
        "auth_token_file": str(tmp_path / "auth"),
    }
    with pytest.raises(ConfigError) as caught:
        load_config(flags, {})
    problems = caught.value.problems
    assert len(problems) == 5
    text = str(caught.value)
    assert "5 problems" in text
    assert "'arn:aws:iam::12345:user/bob' is not an IAM role ARN" in text
    assert "missing' does not exist" in text
    assert "--session-name='x' is not a valid RoleSessionName" in text
    assert "--duration='60' is outside STS's limits: use 900..43200" in text
    assert "--listen='example.com:99999' is not a listen address" in text


def test_error_names_the_environment_variable(token_file: Path) -> None:
    """A bad value from the environment is reported under its variable name."""
    with pytest.raises(ConfigError, match=r"AWS_ROLE_SESSION_NAME='bad name!'"):
        load_config({}, base_env(token_file, AWS_ROLE_SESSION_NAME="bad name!"))


def test_missing_role_and_token_explain_what_to_set() -> None:
    """With nothing configured, the error says which flags/variables to set (and --dev)."""
    with pytest.raises(ConfigError) as caught:
        load_config({}, {"SIDECAR_AUTH_TOKEN_FILE": "/x"})
    text = str(caught.value)
    assert "AWS_ROLE_ARN" in text and "AWS_WEB_IDENTITY_TOKEN_FILE" in text and "--dev" in text


def test_auth_is_required_unless_explicitly_disabled(token_file: Path) -> None:
    """No auth token file and no opt-out is an error; the opt-out is loudly named."""
    env = base_env(token_file)
    env.pop("SIDECAR_AUTH_TOKEN_FILE")
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        load_config({}, env)
    config = load_config({"insecure_no_auth": "1"}, env)
    assert config.server.auth_token_file is None
    assert any("ANY process" in w for w in config_warnings(config))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("900", 900), ("90s", 90), ("15m", 900), ("1h", 3600), ("500ms", 0.5), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations accept plain seconds and ms/s/m/h suffixes."""
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "-5", "h", "1 h"])
def test_bad_durations(text: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError):  # noqa: PT011
        parse_seconds(text)


def test_duration_with_suffix(token_file: Path) -> None:
    """--duration 2h means 7200 seconds."""
    assert load_config({"duration": "2h"}, base_env(token_file)).roles[0].duration == 7200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9911", ("127.0.0.1", 9911)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
        ("169.254.170.23:80", ("169.254.170.23", 80)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    """IPv4, bracketed IPv6 and localhost are accepted."""
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9911", "127.0.0.1", "host.docker.internal:80", "1.2.3.4:x"])
def test_bad_listen_addresses(text: str) -> None:
    """Missing ports and names other than localhost are refused."""
    with pytest.raises(ValueError):  # noqa: PT011
        parse_listen(text)


def test_short_duration_warns(token_file: Path) -> None:
    """A 900 s session cannot keep 30 min of life: warned, with the botocore consequence."""
    config = load_config({"duration": "900"}, base_env(token_file))
    warnings = config_warnings(config)
    assert any("botocore" in w and "900s" in w for w in warnings)
    assert not config_warnings(load_config({}, base_env(token_file)))


def test_listen_outside_sdk_allow_list_warns(token_file: Path) -> None:
    """Binding an address SDKs refuse for http is allowed but warned about."""
    config = load_config({"listen": "10.1.2.3:9911"}, base_env(token_file))
    assert any("refuse" in w for w in config_warnings(config))


@pytest.mark.parametrize("listen", ["0.0.0.0:9911", "[::]:9911"])
def test_listen_on_every_address_is_not_an_sdk_warning(token_file: Path, listen: str) -> None:
    """0.0.0.0 and :: include loopback, where SDKs on the host reach the daemon: no warning."""
    config = load_config({"listen": listen}, base_env(token_file))
    assert not any("refuse" in w for w in config_warnings(config))


@pytest.mark.parametrize("lifetime", [900, 1800, 3600, 7200, 43200])
def test_refresh_ahead_bounds(lifetime: int) -> None:
    """Refresh-ahead is >= 25% and >= 35 min, but leaves >= 1/4 of the lifetime in use."""
    ahead = RefreshPolicy().refresh_ahead(lifetime)
    assert ahead <= 0.75 * lifetime
    assert ahead >= min(35 * 60, 0.75 * lifetime)
    assert ahead >= min(0.25 * lifetime, 0.75 * lifetime)
    if lifetime >= 3600:
        assert ahead > 30 * 60


JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJyZXBvOm9yZy9hcHAiLCJhdWQiOiJzdHMifQ."
    "c2lnbmF0dXJlLXRoYXQtbG9va3MtcmVhbA"
)


@pytest.mark.parametrize(
    ("flags", "env", "where"),
    [
        ({"token_env": JWT}, {}, "--token-env"),
        ({"token_file": JWT}, {}, "--token-file"),
        ({}, {"AWS_WEB_IDENTITY_TOKEN_FILE": JWT}, "AWS_WEB_IDENTITY_TOKEN_FILE"),
    ],
)
def test_token_pasted_into_a_setting_is_not_printed(
    flags: dict[str, str], env: dict[str, str], where: str
) -> None:
    """A JWT given where a name or path belongs is named as such and never echoed."""
    environ = {"AWS_ROLE_ARN": ROLE, "SIDECAR_INSECURE_NO_AUTH": "1", **env}
    with pytest.raises(ConfigError) as caught:
        load_config(flags, environ)
    message = str(caught.value)
    assert "this looks like a token, not a variable name or a path" in message
    assert where in message
    assert JWT not in message
    assert JWT.split(".")[1] not in message


def test_secrets_in_any_setting_are_not_echoed(token_file: Path) -> None:
    """A JWT or a long random string in any setting is reported without its value."""
    secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY9x"
    flags = {
        "role_arn": JWT,
        "region": secret_key,
        "log_level": "Bearer " + JWT,
        "log_format": "0123456789abcdef0123456789abcdef01234567",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(flags, base_env(token_file))
    message = str(caught.value)
    assert "--role-arn=<a value that looks like a token, not shown>" in message
    assert "--region=<a value that looks like a token, not shown>" in message
    for secret in (JWT, secret_key, JWT.split(".")[1], flags["log_format"]):
        assert secret not in message
        assert secret.lower() not in message  # nor its lowercased form


@pytest.mark.parametrize(
    "value",
    [
        "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        "arn:aws:iam::123456789012:role/ci",
        "CI_JOB_JWT_V2",
        "us-east-1",
        "token.v2.jwt",
        "credential-sidecar-0123456789abcdef",
    ],
)
def test_ordinary_values_are_still_shown(value: str) -> None:
    """Names, paths, ARNs and regions are echoed as they are: only secrets are hidden."""
    assert shown(value) == repr(value)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://pipelines.actions.githubusercontent.com/abc/_apis/token?api-version=2.0", True),
        ("http://127.0.0.1:8080/token", True),
        ("http://127.5.6.7/token", True),
        ("http://[::1]:8080/token", True),
        ("http://localhost:8080/token", True),
        ("http://pipelines.actions.githubusercontent.com/token", False),
        ("http://10.0.0.5/token", False),
        ("http://127.0.0.1.nip.io/token", False),
        ("ftp://example.com/token", False),
    ],
)
def test_github_token_url_must_be_https_unless_loopback(url: str, ok: bool) -> None:
    """ACTIONS_ID_TOKEN_REQUEST_URL must be https://, except to a loopback host."""
    environ = {
        "AWS_ROLE_ARN": ROLE,
        "SIDECAR_INSECURE_NO_AUTH": "1",
        "ACTIONS_ID_TOKEN_REQUEST_URL": url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
    }
    if ok:
        token = load_config({}, environ).roles[0].token
        assert isinstance(token, GithubSource) and token.url == url
        return
    with pytest.raises(ConfigError, match="ACTIONS_ID_TOKEN_REQUEST_URL=") as caught:
        load_config({}, environ)
    assert "https://" in str(caught.value)


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        ({"listen": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY1234:80"}, {}),
        ({"imds_listen": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY1234:80"}, {}),
        ({"auth_token_file": JWT}, {}),
        ({"audience": JWT}, {}),
        (
            {"token_source": "github"},
            {
                "ACTIONS_ID_TOKEN_REQUEST_URL": "http://u:wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY1234@evil.example/x",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
            },
        ),
        (
            {"token_source": "github"},
            {
                "ACTIONS_ID_TOKEN_REQUEST_URL": "http://user:hunter2@evil.example/x",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
            },
        ),
    ],
)
def test_secrets_inside_addresses_urls_and_paths_are_not_echoed(
    token_file: Path, flags: dict[str, str], env: dict[str, str]
) -> None:
    """A secret inside a listen address, a URL's user info, or given as the auth token file
    or the audience, is refused without being printed."""
    with pytest.raises(ConfigError) as caught:
        load_config(flags, {**base_env(token_file), **env})
    message = str(caught.value)
    for secret in (JWT, JWT.split(".")[1], "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY1234", "hunter2"):
        assert secret not in message


def test_dev_mode_without_a_writable_temporary_directory_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A read-only container without a writable /tmp: a configuration error naming the fix,
    never a traceback."""
    import tempfile

    from sidecar.devmode.environment import private_directory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"writable temporary directory.*--tmpfs /tmp"):
        private_directory("credential-sidecar-dev-")
