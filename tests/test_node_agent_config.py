"""``node-agent`` configuration: flags > dev mode > SIDECAR_NODE_* > defaults, resolved once
into a frozen config; every problem reported together, each naming where it came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from sidecar.config.node_agent import (
    DEFAULT_LISTEN,
    NODE_SETTINGS,
    NodeAgentConfig,
    load_node_agent_config,
)
from sidecar.core.errors import ConfigError

REQUIRED = {"issuer": "https://oidc.example.com/cluster-1/", "associations": "/etc/a.toml"}
Flags = Mapping[str, str | Sequence[str] | None]


def load(
    flags: Flags | None = None,
    environ: Mapping[str, str] | None = None,
    dev: Mapping[str, str] | None = None,
) -> NodeAgentConfig:
    return load_node_agent_config({**REQUIRED, **(flags or {})}, environ or {}, dev)


def problems(
    flags: Flags, environ: Mapping[str, str] | None = None, base: Flags = REQUIRED
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_node_agent_config({**base, **flags}, environ or {})
    return caught.value.problems


def test_defaults() -> None:
    """With only the issuer and associations given: the link-local addresses, the STS
    audience, a few STS calls per second, an hour's idle timeout."""
    config = load()
    assert config.listen == (("169.254.170.23", 80), ("fd00:ec2::23", 80))
    assert ",".join(DEFAULT_LISTEN) == "169.254.170.23:80,[fd00:ec2::23]:80"
    # Exactly as given, trailing slash and all: tokens carry it so (AKS issuers end in /).
    assert config.issuer == "https://oidc.example.com/cluster-1/"
    assert config.associations == Path("/etc/a.toml")
    assert config.jwks_file is None
    assert config.audience == "sts.amazonaws.com"
    assert (config.sts_rate, config.sts_burst) == (5.0, 10)
    assert config.identity_idle == 3600.0
    assert config.max_identities == 10_000
    assert config.request_wait == 1.5
    assert config.refresh.cold_start_wait == 1.5
    assert config.limits.request_timeout >= config.request_wait
    assert config.sts.region == "us-east-1" and config.sts.endpoint_url is None
    assert not (config.dev or config.audit_log or config.setup_addresses)


def test_values_from_flags_are_typed() -> None:
    """Durations, numbers, repeated --listen and switches become typed values."""
    config = load(
        {
            "listen": ["127.0.0.1:0", "[::1]:8080"],
            "jwks_file": "/etc/jwks.json",
            "sts_rate": "0.5",
            "sts_burst": "3",
            "identity_idle_timeout": "2s",
            "max_identities": "7",
            "request_wait": "500ms",
            "refresh_jitter": "0.1",
            "sts_endpoint": "http://127.0.0.1:9999",
            "region": "eu-west-1",
            "audit_log": "1",
        }
    )
    assert config.listen == (("127.0.0.1", 0), ("::1", 8080))
    assert config.jwks_file == Path("/etc/jwks.json")
    assert (config.sts_rate, config.sts_burst) == (0.5, 3)
    assert config.identity_idle == 2.0
    assert config.max_identities == 7
    assert config.request_wait == 0.5
    assert config.refresh.refresh_jitter == 0.1
    assert config.sts.endpoint_url == "http://127.0.0.1:9999"
    assert config.sts.region == "eu-west-1"
    assert config.audit_log


def test_flags_beat_dev_mode_beats_the_environment() -> None:
    """A flag overrides dev mode, which overrides SIDECAR_NODE_*, which overrides the
    default."""
    environ = {"SIDECAR_NODE_STS_RATE": "7", "SIDECAR_NODE_LISTEN": "127.0.0.1:1"}
    assert load(environ=environ).sts_rate == 7.0
    assert load(environ=environ).listen == (("127.0.0.1", 1),)
    dev = {"listen": "127.0.0.1:2", "sts_rate": "8"}
    assert load(environ=environ, dev=dev).listen == (("127.0.0.1", 2),)
    assert load(environ=environ, dev=dev).sts_rate == 8.0
    flagged = load({"listen": ["127.0.0.1:3"], "sts_rate": "9"}, environ, dev)
    assert flagged.listen == (("127.0.0.1", 3),) and flagged.sts_rate == 9.0


def test_every_setting_has_its_variable() -> None:
    """Each setting can come from SIDECAR_NODE_<NAME> (the DaemonSet's env)."""
    names = {s.name for s in NODE_SETTINGS}
    assert {"issuer", "associations", "sts_rate", "identity_idle_timeout"} <= names
    for setting in NODE_SETTINGS:
        assert setting.envs == ("SIDECAR_NODE_" + setting.name.upper(),)
        assert setting.flag == "--" + setting.name.replace("_", "-")
    config = load_node_agent_config(
        {},
        {
            "SIDECAR_NODE_ISSUER": "https://issuer.example.com",
            "SIDECAR_NODE_ASSOCIATIONS": "/a.toml",
            "SIDECAR_NODE_IDENTITY_IDLE_TIMEOUT": "10m",
        },
    )
    assert config.issuer == "https://issuer.example.com"
    assert config.identity_idle == 600.0


def test_the_required_settings_are_named_with_how_to_find_them() -> None:
    """Without --issuer and --associations both are reported, saying where to find them."""
    found = problems({}, base={})
    assert len(found) == 2, found
    assert "--issuer is required" in found[0] and "openid-configuration" in found[0]
    assert "--associations is required" in found[1]


def test_every_problem_is_reported_together_naming_its_source() -> None:
    """One error lists every bad value, each naming its flag or variable and the expected
    form."""
    found = problems(
        {
            "listen": ["nowhere"],
            "issuer": "ftp://x",
            "region": "moon-1",
            "sts_regional_endpoints": "global",
            "sts_endpoint": "sts.example.com",
            "sts_rate": "fast",
            "sts_burst": "0",
            "identity_idle_timeout": "forever",
            "max_identities": "-3",
            "request_wait": "90s",
            "refresh_jitter": "0.9",
            "log_format": "xml",
            "log_level": "loud",
        }
    )
    text = "\n".join(found)
    assert len(found) == 13, text
    for expected in (
        "--listen='nowhere' is not HOST:PORT",
        "--issuer='ftp://x' is not a URL",
        "--region='moon-1' is not an AWS region",
        "--sts-regional-endpoints must be regional or legacy",
        "--sts-endpoint='sts.example.com' is not a URL",
        "--sts-rate='fast' must be a number from 0.1 to 10000",
        "--sts-burst='0' must be a whole number from 1 to 100000",
        "--identity-idle-timeout='forever' is not a duration",
        "--max-identities='-3' must be a whole number",
        "--request-wait='90s' must be between 0s and 30s",
        "--refresh-jitter='0.9' must be a number from 0 to 0.5",
        "--log-format='xml' must be text or json",
        "--log-level='loud' must be one of",
    ):
        assert expected in text, (expected, text)


def test_a_bad_variable_is_named_as_the_variable() -> None:
    """A bad value from the environment names SIDECAR_NODE_*, not the flag."""
    found = problems({}, {"SIDECAR_NODE_STS_RATE": "0"})
    assert found == ["SIDECAR_NODE_STS_RATE='0' must be a number from 0.1 to 10000"]


def test_an_empty_listen_list_is_refused() -> None:
    """--listen with no usable address says to give one."""
    assert problems({"listen": ","}) == ["--listen: give at least one HOST:PORT"]


def test_the_idle_timeout_has_a_floor() -> None:
    """An idle timeout under a second would drop identities between a pod's requests."""
    assert "must be between 1s and" in problems({"identity_idle_timeout": "100ms"})[0]


@pytest.mark.parametrize(
    "audience", ["", "  ", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"]
)
def test_an_empty_audience_or_a_token_as_audience_is_refused(audience: str) -> None:
    """--audience "" would refuse every pod's token; a token pasted there would sit in the
    configuration: both are configuration errors (the value never shown)."""
    found = problems({"audience": audience})
    assert len(found) == 1 and found[0].startswith("--audience: give the audience")
    assert "eyJ" not in found[0]
