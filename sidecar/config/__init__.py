"""Configuration: parsed once, validated completely, then frozen.

    settings.py   every flag, its environment variables and default; raw value parsers
    model.py      the frozen dataclasses the daemon uses (Config, RoleConfig, HopConfig, ...)
    checks.py     value checks that collect every problem (role ARNs, durations, tokens)
    file.py       the TOML config file: server settings and named roles with their chains
    load.py       load_config(): flags > dev mode > SIDECAR_* > config file > AWS_* > default

A single ``ConfigError`` lists every bad value with the expected form, so an operator
fixes everything in one pass.
"""

from sidecar.config.load import (
    EXEC_DEFAULTS,
    DevSupply,
    Supplied,
    config_warnings,
    dev_requested,
    load_config,
)
from sidecar.config.model import (
    Config,
    HopConfig,
    RefreshPolicy,
    RoleConfig,
    ServerConfig,
    StsConfig,
)
from sidecar.config.settings import (
    CHAINED_MAX_DURATION,
    MAX_DURATION,
    MIN_DURATION,
    ROLE_ARN,
    SESSION_NAME,
    SETTINGS,
    SETTINGS_BY_NAME,
    parse_listen,
    parse_seconds,
    resolve_raw,
    truthy,
)

__all__ = [
    "CHAINED_MAX_DURATION",
    "EXEC_DEFAULTS",
    "MAX_DURATION",
    "MIN_DURATION",
    "ROLE_ARN",
    "SESSION_NAME",
    "SETTINGS",
    "SETTINGS_BY_NAME",
    "Config",
    "DevSupply",
    "HopConfig",
    "RefreshPolicy",
    "RoleConfig",
    "ServerConfig",
    "StsConfig",
    "Supplied",
    "config_warnings",
    "dev_requested",
    "load_config",
    "parse_listen",
    "parse_seconds",
    "resolve_raw",
    "truthy",
]
