"""Configuration: parsed once, validated completely, then frozen.

Every setting has one entry in ``SETTINGS``: its flag, the environment variables that
can provide it (our own ``SIDECAR_*`` name first, then the AWS SDK's name so an existing
web-identity setup works unchanged) and its default. Precedence, highest first:

    command-line flag  >  dev-mode values (``serve --dev``)  >  SIDECAR_*  >  AWS_*  >  default

``load_config`` reports every bad value in one ``ConfigError`` naming the value and the
expected form, so an operator fixes everything in one pass.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import ConfigError

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
MIN_DURATION, MAX_DURATION = 900, 43200
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
REGIONAL_ENDPOINTS = ("regional", "legacy")

#: Hosts the SDKs accept for plain-http container credentials (see docs/sdk-contract).
SDK_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1", "169.254.170.2", "169.254.170.23")


@dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    envs: tuple[str, ...]
    default: str | None
    help: str
    is_switch: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "role_arn",
        "--role-arn",
        ("SIDECAR_ROLE_ARN", "AWS_ROLE_ARN"),
        None,
        "IAM role to assume with the web-identity token",
    ),
    Setting(
        "token_file",
        "--token-file",
        ("SIDECAR_TOKEN_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE"),
        None,
        "file holding the OIDC token; re-read on every exchange",
    ),
    Setting(
        "session_name",
        "--session-name",
        ("SIDECAR_SESSION_NAME", "AWS_ROLE_SESSION_NAME"),
        None,
        "RoleSessionName (2-64 of [A-Za-z0-9_+=,.@-]); default credential-sidecar-<host>",
    ),
    Setting(
        "duration",
        "--duration",
        ("SIDECAR_DURATION",),
        "3600",
        "session length: seconds or 15m/1h/12h, 900..43200",
    ),
    Setting(
        "region",
        "--region",
        ("SIDECAR_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        "us-east-1",
        "STS region",
    ),
    Setting(
        "sts_endpoint",
        "--sts-endpoint",
        ("SIDECAR_STS_ENDPOINT", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"),
        None,
        "custom STS endpoint URL (VPC endpoint, FIPS, emulator)",
    ),
    Setting(
        "sts_regional_endpoints",
        "--sts-regional-endpoints",
        ("SIDECAR_STS_REGIONAL_ENDPOINTS", "AWS_STS_REGIONAL_ENDPOINTS"),
        "regional",
        "regional or legacy STS endpoint resolution",
    ),
    Setting(
        "listen",
        "--listen",
        ("SIDECAR_LISTEN",),
        "127.0.0.1:9911",
        "HOST:PORT to serve on ([::1]:PORT for IPv6; port 0 picks a free one)",
    ),
    Setting(
        "auth_token_file",
        "--auth-token-file",
        ("SIDECAR_AUTH_TOKEN_FILE",),
        None,
        "file with the token clients must send; created (0600) if missing",
    ),
    Setting(
        "insecure_no_auth",
        "--insecure-no-auth",
        ("SIDECAR_INSECURE_NO_AUTH",),
        None,
        "serve credentials to ANY local caller without an auth token (not recommended)",
        is_switch=True,
    ),
    Setting("log_format", "--log-format", ("SIDECAR_LOG_FORMAT",), "text", "text or json"),
    Setting(
        "log_level", "--log-level", ("SIDECAR_LOG_LEVEL",), "info", "debug, info, warning or error"
    ),
    Setting(
        "refresh_ahead_ratio",
        "--refresh-ahead-ratio",
        ("SIDECAR_REFRESH_AHEAD_RATIO",),
        "0.25",
        "refresh when this fraction of the session's lifetime is left (0.05..0.75)",
    ),
    Setting(
        "refresh_ahead_min",
        "--refresh-ahead-min",
        ("SIDECAR_REFRESH_AHEAD_MIN",),
        "35m",
        "...but never later than this long before expiry (capped at 3/4 of the lifetime)",
    ),
    Setting(
        "safety_margin",
        "--safety-margin",
        ("SIDECAR_SAFETY_MARGIN",),
        "2m",
        "never serve credentials with less than this left",
    ),
    Setting(
        "retry_base",
        "--retry-base",
        ("SIDECAR_RETRY_BASE",),
        "1s",
        "first retry delay after a transient STS failure",
    ),
    Setting(
        "retry_cap",
        "--retry-cap",
        ("SIDECAR_RETRY_CAP",),
        "60s",
        "longest delay between retries of transient failures",
    ),
    Setting(
        "slow_retry",
        "--slow-retry",
        ("SIDECAR_SLOW_RETRY",),
        "5m",
        "delay between retries of errors that need an operator (AccessDenied, ...)",
    ),
    Setting(
        "attempt_timeout",
        "--attempt-timeout",
        ("SIDECAR_ATTEMPT_TIMEOUT",),
        "10s",
        "timeout of one STS call",
    ),
    Setting(
        "cold_start_wait",
        "--cold-start-wait",
        ("SIDECAR_COLD_START_WAIT",),
        "0.8s",
        "how long a request waits for the first credentials before a 503 (< 1s)",
    ),
    Setting(
        "dev",
        "--dev",
        ("SIDECAR_DEV",),
        None,
        "dev mode: local OIDC issuer + STS emulator, no AWS account needed",
        is_switch=True,
    ),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class RoleConfig:
    role_arn: str
    token_file: Path
    session_name: str
    duration: int


@dataclass(frozen=True)
class StsConfig:
    region: str
    endpoint_url: str | None
    regional_endpoints: str


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh, when to stop serving, how to retry. All durations in seconds."""

    ahead_ratio: float = 0.25
    ahead_min: float = 35 * 60
    safety_margin: float = 120
    retry_base: float = 1
    retry_cap: float = 60
    slow_retry: float = 300
    attempt_timeout: float = 10
    cold_start_wait: float = 0.8

    def refresh_ahead(self, lifetime: float) -> float:
        """Seconds before expiry at which a session of ``lifetime`` seconds is renewed.

        Proportional to the lifetime so long sessions are not renewed needlessly, at least
        ``ahead_min`` so SDKs (botocore refreshes below 15 min, mandatorily below 10) always
        get comfortably long-lived credentials, and at most 3/4 of the lifetime so short
        sessions are still used for a while: a 15 min session is renewed after ~4 min and
        so always has > 10 min left.
        """
        return min(max(self.ahead_min, self.ahead_ratio * lifetime), 0.75 * lifetime)


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    auth_token_file: Path | None
    insecure_no_auth: bool


@dataclass(frozen=True)
class Config:
    role: RoleConfig
    sts: StsConfig
    refresh: RefreshPolicy
    server: ServerConfig
    log_format: str
    log_level: str
    dev: bool


def resolve_raw(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> dict[str, tuple[str | None, str]]:
    """Each setting's raw value and where it came from (for error messages)."""
    raw: dict[str, tuple[str | None, str]] = {}
    for setting in SETTINGS:
        value: str | None = None
        source = "default"
        flag_value = flags.get(setting.name)
        if flag_value is not None:
            value, source = flag_value, setting.flag
        elif overrides and setting.name in overrides:
            value, source = overrides[setting.name], "dev mode"
        else:
            for env in setting.envs:
                if environ.get(env, "") != "":
                    value, source = environ[env], env
                    break
            else:
                value = setting.default
        raw[setting.name] = (value, source)
    return raw


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_seconds(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``500ms`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9911``, ``[::1]:9911``, ``localhost:0`` -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError("expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0..65535")
    if host != "localhost":
        ipaddress.ip_address(host)  # raises ValueError for names we cannot bind predictably
    return host, port


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def default_session_name() -> str:
    host = re.sub(r"[^\w+=,.@-]", "-", socket.gethostname())
    return f"credential-sidecar-{host}"[:64]


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Build the validated ``Config`` or raise one ``ConfigError`` listing every problem."""
    raw = resolve_raw(flags, environ, overrides)
    problems: list[str] = []

    def value(name: str) -> str | None:
        return raw[name][0]

    def where(name: str) -> str:
        return raw[name][1]

    def seconds(name: str, low: float, high: float) -> float:
        text = value(name) or ""
        try:
            result = parse_seconds(text)
        except ValueError:
            problems.append(
                f"{where(name)}={text!r} is not a duration: use seconds or 500ms/90s/15m/1h"
            )
            return 0.0
        if not low <= result <= high:
            problems.append(f"{where(name)}={text!r} must be between {low:g}s and {high:g}s")
        return result

    role_arn = value("role_arn")
    if not role_arn:
        problems.append(
            "no role to assume: pass --role-arn or set AWS_ROLE_ARN "
            "(arn:aws:iam::<12-digit account>:role/<name>), or try --dev"
        )
    elif not ROLE_ARN.match(role_arn):
        problems.append(
            f"{where('role_arn')}={role_arn!r} is not an IAM role ARN: "
            "expected arn:aws:iam::<12-digit account>:role/<name>"
        )

    token_text = value("token_file")
    token_file = Path(token_text) if token_text else Path()
    if not token_text:
        problems.append(
            "no web-identity token: pass --token-file or set AWS_WEB_IDENTITY_TOKEN_FILE"
        )
    elif not os.access(token_file, os.R_OK) or not token_file.is_file():
        reason = "does not exist" if not token_file.exists() else "is not a readable file"
        problems.append(
            f"{where('token_file')}={token_text!r} {reason}: point it at the mounted OIDC "
            "token (e.g. /var/run/secrets/eks.amazonaws.com/serviceaccount/token)"
        )

    session_name = value("session_name") or default_session_name()
    if not SESSION_NAME.match(session_name):
        problems.append(
            f"{where('session_name')}={session_name!r} is not a valid RoleSessionName: "
            "use 2-64 characters of letters, digits and _+=,.@-"
        )

    duration_text = value("duration") or ""
    duration = 0
    try:
        duration = int(parse_seconds(duration_text))
    except ValueError:
        problems.append(f"{where('duration')}={duration_text!r} is not a duration: use 3600 or 1h")
    else:
        if not MIN_DURATION <= duration <= MAX_DURATION:
            problems.append(
                f"{where('duration')}={duration_text!r} is outside STS's limits: "
                f"use {MIN_DURATION}..{MAX_DURATION} seconds (15m..12h)"
            )

    region = value("region") or ""
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", region):
        problems.append(f"{where('region')}={region!r} is not an AWS region like us-east-1")

    endpoint = value("sts_endpoint")
    if endpoint and not re.match(r"^https?://[^/\s]+", endpoint):
        problems.append(
            f"{where('sts_endpoint')}={endpoint!r} is not a URL: expected https://host[:port]"
        )

    regional = (value("sts_regional_endpoints") or "").lower()
    if regional not in REGIONAL_ENDPOINTS:
        problems.append(
            f"{where('sts_regional_endpoints')}={regional!r} must be regional or legacy"
        )

    host, port = "", 0
    listen = value("listen") or ""
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        problems.append(
            f"{where('listen')}={listen!r} is not a listen address ({exc}): "
            "use 127.0.0.1:9911, [::1]:9911 or 169.254.170.23:80"
        )

    auth_text = value("auth_token_file")
    insecure = _truthy(value("insecure_no_auth"))
    if not auth_text and not insecure:
        problems.append(
            "no auth token file: pass --auth-token-file PATH (created with a random token if "
            "missing) or, to serve credentials to any local process, --insecure-no-auth"
        )
    if auth_text and insecure:
        problems.append("--auth-token-file and --insecure-no-auth contradict each other: pick one")

    log_format = (value("log_format") or "").lower()
    if log_format not in LOG_FORMATS:
        problems.append(f"{where('log_format')}={log_format!r} must be text or json")
    log_level = (value("log_level") or "").lower()
    if log_level not in LOG_LEVELS:
        levels = ", ".join(LOG_LEVELS)
        problems.append(f"{where('log_level')}={log_level!r} must be one of {levels}")

    ratio_text = value("refresh_ahead_ratio") or ""
    ratio = 0.0
    try:
        ratio = float(ratio_text)
    except ValueError:
        ratio = -1.0
    if not 0.05 <= ratio <= 0.75:
        problems.append(
            f"{where('refresh_ahead_ratio')}={ratio_text!r} must be a number from 0.05 to 0.75"
        )
    policy = RefreshPolicy(
        ahead_ratio=ratio,
        ahead_min=seconds("refresh_ahead_min", 0, MAX_DURATION),
        safety_margin=seconds("safety_margin", 0, 3600),
        retry_base=seconds("retry_base", 0.001, 3600),
        retry_cap=seconds("retry_cap", 0.001, 3600),
        slow_retry=seconds("slow_retry", 0.001, 86400),
        attempt_timeout=seconds("attempt_timeout", 0.1, 300),
        cold_start_wait=seconds("cold_start_wait", 0, 0.95),
    )

    if problems:
        raise ConfigError(problems)
    return Config(
        role=RoleConfig(role_arn or "", token_file, session_name, duration),
        sts=StsConfig(region, endpoint, regional),
        refresh=policy,
        server=ServerConfig(host, port, Path(auth_text) if auth_text else None, insecure),
        log_format=log_format,
        log_level=log_level,
        dev=_truthy(value("dev")),
    )


def config_warnings(config: Config) -> list[str]:
    """Valid but risky choices, logged at startup."""
    warnings: list[str] = []
    duration = config.role.duration
    ahead = config.refresh.refresh_ahead(duration)
    if ahead < 30 * 60:
        warnings.append(
            f"--duration {duration}s: served credentials can only be kept {ahead / 60:.0f} min "
            "from expiry (30+ min needs >= 1h). "
            + (
                "With 900s sessions botocore/AWS CLI refetch credentials on nearly every call. "
                if duration <= 900
                else ""
            )
            + "Raise --duration (and the role's MaxSessionDuration) if you can."
        )
    if config.server.insecure_no_auth:
        warnings.append(
            "--insecure-no-auth: ANY process that can reach "
            f"{config.server.host}:{config.server.port} gets AWS credentials"
        )
    host = config.server.host
    if host not in SDK_ALLOWED_HOSTS and not host.startswith("127."):
        warnings.append(
            f"listening on {host}: AWS SDKs refuse plain-http container credentials from any "
            "host but 127.0.0.0/8, [::1], localhost, 169.254.170.2 and 169.254.170.23; "
            "clients must use a different route (see README, 'Reaching docker builds')"
        )
    return warnings
