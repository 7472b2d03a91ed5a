"""Every command-line setting, where its value may come from, and how raw values parse.

Each setting has one entry in ``SETTINGS``: its flag, the environment variables that can
provide it (our ``SIDECAR_*`` name first, then the AWS SDK's name so an existing
web-identity setup works unchanged) and its default. ``resolve_raw`` picks each value by
precedence, highest first:

    flag > dev mode (serve --dev) > SIDECAR_* env > config file > AWS_* env > default
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.sources.base import DEFAULT_AUDIENCE

ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}$")
SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
ACCOUNT_ID = re.compile(r"^\d{12}$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MIN_DURATION, MAX_DURATION, CHAINED_MAX_DURATION = 900, 43200, 3600
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
REGIONAL_ENDPOINTS = ("regional", "legacy")
TOKEN_SOURCES = ("file", "github", "env", "command")
#: CI variables holding a ready token, auto-detected when exactly one is present.
CI_TOKEN_VARIABLES = ("CIRCLE_OIDC_TOKEN_V2", "BITBUCKET_STEP_OIDC_TOKEN")

#: Hosts the SDKs accept for plain-http container credentials (shared/sdk-contract.md).
SDK_ALLOWED_HOSTS = ("127.0.0.1", "localhost", "::1", "169.254.170.2", "169.254.170.23")


@dataclass(frozen=True)
class Setting:
    name: str
    flag: str
    envs: tuple[str, ...]
    default: str | None
    help: str
    is_switch: bool = False
    #: The flag may be given several times (its values are joined with commas).
    repeatable: bool = False


def _s(name: str, envs: tuple[str, ...], default: str | None, help: str, **kw: Any) -> Setting:
    return Setting(name, "--" + name.replace("_", "-"), envs, default, help, **kw)


SETTINGS: tuple[Setting, ...] = (
    _s("config", ("SIDECAR_CONFIG",), None, "TOML file declaring several roles (see README)"),
    _s(
        "role_arn",
        ("SIDECAR_ROLE_ARN", "AWS_ROLE_ARN"),
        None,
        "IAM role to assume with the web-identity token",
    ),
    _s(
        "chain",
        ("SIDECAR_CHAIN",),
        None,
        "comma-separated role ARNs to AssumeRole into, in order, after the first role",
    ),
    _s(
        "token_source",
        ("SIDECAR_TOKEN_SOURCE",),
        None,
        "file, github, env or command (default: detected from the other settings)",
    ),
    _s(
        "token_file",
        ("SIDECAR_TOKEN_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE"),
        None,
        "file holding the OIDC token; re-read on every exchange",
    ),
    _s(
        "token_env",
        ("SIDECAR_TOKEN_ENV",),
        None,
        "name of an environment variable holding the token (GitLab id_tokens, ...)",
    ),
    _s(
        "token_command",
        ("SIDECAR_TOKEN_COMMAND",),
        None,
        "command printing a fresh token on stdout, split like a shell would, run without one",
    ),
    _s(
        "token_command_timeout",
        ("SIDECAR_TOKEN_COMMAND_TIMEOUT",),
        "10s",
        "how long the token command may run",
    ),
    _s(
        "audience",
        ("SIDECAR_AUDIENCE",),
        DEFAULT_AUDIENCE,
        "audience the token must carry (and that GitHub tokens are requested for)",
    ),
    _s(
        "session_name",
        ("SIDECAR_SESSION_NAME", "AWS_ROLE_SESSION_NAME"),
        None,
        "RoleSessionName or a template of token claims like {sub}; "
        "default credential-sidecar-<host>",
    ),
    _s(
        "duration",
        ("SIDECAR_DURATION",),
        "3600",
        "session length: seconds or 15m/1h/12h, 900..43200",
    ),
    _s(
        "allowed_accounts",
        ("SIDECAR_ALLOWED_ACCOUNTS",),
        None,
        "comma-separated account ids; credentials for any other account are refused",
    ),
    _s("region", ("SIDECAR_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"), "us-east-1", "STS region"),
    _s(
        "sts_endpoint",
        ("SIDECAR_STS_ENDPOINT", "AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"),
        None,
        "custom STS endpoint URL (VPC endpoint, FIPS, emulator)",
    ),
    _s(
        "sts_regional_endpoints",
        ("SIDECAR_STS_REGIONAL_ENDPOINTS", "AWS_STS_REGIONAL_ENDPOINTS"),
        "regional",
        "regional or legacy STS endpoint resolution",
    ),
    _s(
        "listen",
        ("SIDECAR_LISTEN",),
        "127.0.0.1:9911",
        "HOST:PORT to serve on ([::1]:PORT for IPv6; port 0 picks a free one)",
    ),
    _s(
        "imds_listen",
        ("SIDECAR_IMDS_LISTEN",),
        None,
        "also serve one role over the IMDSv2 protocol on HOST:PORT (no client auth token!)",
    ),
    _s(
        "imds_role",
        ("SIDECAR_IMDS_ROLE",),
        None,
        "the role the IMDS listener serves (default: the default role)",
    ),
    _s(
        "imds_hop_limit",
        ("SIDECAR_IMDS_HOP_LIMIT",),
        "1",
        "IP hop limit (TTL) of the IMDS listener's answers, as EC2's: 1 keeps session tokens "
        "from reaching a client behind a router (1..64)",
    ),
    _s(
        "relative_listen",
        ("SIDECAR_RELATIVE_LISTEN",),
        None,
        "also serve every role at /v2/credentials/<id> on HOST:PORT (169.254.170.2:80), "
        "for clients that know only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (no auth token: "
        "the unguessable id is the credential)",
    ),
    _s(
        "relative_id_dir",
        ("SIDECAR_RELATIVE_ID_DIR",),
        None,
        "directory with one file per role holding its --relative-listen id; created "
        "(0700, files 0600) if missing, ids kept across restarts",
    ),
    _s(
        "idle_timeout",
        ("SIDECAR_IDLE_TIMEOUT",),
        "5s",
        "close a connection that sends no complete request head this long after it opened "
        "or after its last answer",
    ),
    _s(
        "request_timeout",
        ("SIDECAR_REQUEST_TIMEOUT",),
        "5s",
        "close a connection whose request, from its first byte to its answer being read, "
        "takes longer",
    ),
    _s(
        "max_connections",
        ("SIDECAR_MAX_CONNECTIONS",),
        "1024",
        "open connections per listener; more are answered 503 and closed at once",
    ),
    _s(
        "max_connections_per_client",
        ("SIDECAR_MAX_CONNECTIONS_PER_CLIENT",),
        "512",
        "open connections per listener from one client address (all local processes share "
        "127.0.0.1)",
    ),
    _s(
        "auth_token_file",
        ("SIDECAR_AUTH_TOKEN_FILE",),
        None,
        "file with the token clients must send; created (0600) if missing",
    ),
    _s(
        "insecure_no_auth",
        ("SIDECAR_INSECURE_NO_AUTH",),
        None,
        "serve credentials to ANY local caller without an auth token (not recommended)",
        is_switch=True,
    ),
    _s(
        "insecure_allow_unauthenticated_network_listener",
        ("SIDECAR_INSECURE_ALLOW_UNAUTHENTICATED_NETWORK_LISTENER",),
        None,
        "allow the IMDS listener, the capability endpoint (--relative-listen) or "
        "--insecure-no-auth on an address other than loopback "
        "or link-local: anything that reaches it gets credentials",
        is_switch=True,
    ),
    _s(
        "write_credentials_file",
        ("SIDECAR_WRITE_CREDENTIALS_FILE",),
        None,
        "keep the default role's credentials in this shared-credentials file, rewritten "
        "atomically (0600) after every refresh; other profiles are kept",
    ),
    _s(
        "profile",
        ("SIDECAR_PROFILE",),
        "default",
        "the profile (section) --write-credentials-file and `credentials --format ini` write",
    ),
    _s(
        "credentials_file_on_exit",
        ("SIDECAR_CREDENTIALS_FILE_ON_EXIT",),
        "remove",
        "what shutdown does to --write-credentials-file: remove (the profile; the file if "
        "nothing else is left), empty (the profile, keeping the file) or keep",
    ),
    _s("log_format", ("SIDECAR_LOG_FORMAT",), "text", "text or json"),
    _s(
        "audit_log",
        ("SIDECAR_AUDIT_LOG",),
        None,
        "log every credentials request served: role, client address, user agent, masked key",
        is_switch=True,
    ),
    _s(
        "refusal_log_budget",
        ("SIDECAR_REFUSAL_LOG_BUDGET",),
        "60",
        "refused-request log lines per minute over all clients; one line counts the rest",
    ),
    _s(
        "failed_request_rate",
        ("SIDECAR_FAILED_REQUEST_RATE",),
        "20",
        "failed requests (4xx) per second a client address may make before 429s; 0: no limit",
    ),
    _s(
        "failed_request_burst",
        ("SIDECAR_FAILED_REQUEST_BURST",),
        "100",
        "failed requests a client address may make at once before 429s",
    ),
    _s("log_level", ("SIDECAR_LOG_LEVEL",), "info", "debug, info, warning or error"),
    _s(
        "refresh_ahead_ratio",
        ("SIDECAR_REFRESH_AHEAD_RATIO",),
        "0.25",
        "refresh when this fraction of the session's lifetime is left (0.05..0.75)",
    ),
    _s(
        "refresh_ahead_min",
        ("SIDECAR_REFRESH_AHEAD_MIN",),
        "35m",
        "...but never later than this long before expiry (capped at 3/4 of the lifetime)",
    ),
    _s(
        "safety_margin",
        ("SIDECAR_SAFETY_MARGIN",),
        "2m",
        "never serve credentials with less than this left",
    ),
    _s(
        "retry_base",
        ("SIDECAR_RETRY_BASE",),
        "1s",
        "first retry delay after a transient STS failure",
    ),
    _s(
        "retry_cap",
        ("SIDECAR_RETRY_CAP",),
        "60s",
        "longest delay between retries of transient failures",
    ),
    _s(
        "slow_retry",
        ("SIDECAR_SLOW_RETRY",),
        "5m",
        "delay between retries of errors that need an operator (AccessDenied, ...)",
    ),
    _s("attempt_timeout", ("SIDECAR_ATTEMPT_TIMEOUT",), "10s", "timeout of one STS call"),
    _s(
        "cold_start_wait",
        ("SIDECAR_COLD_START_WAIT",),
        "0.8s",
        "how long a request waits for the first credentials before a 503 (< 1s)",
    ),
    _s(
        "dev",
        ("SIDECAR_DEV",),
        None,
        "dev mode: local OIDC issuer + STS emulator, no AWS account needed",
        is_switch=True,
    ),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}
#: Settings that describe the single flag/env role; a config file's roles replace them.
ROLE_SETTINGS = ("role_arn", "chain", "session_name", "duration", "allowed_accounts")
#: Settings that describe where the token comes from; a config file may set them too.
TOKEN_SETTINGS = (
    "token_source",
    "token_file",
    "token_env",
    "token_command",
    "token_command_timeout",
    "audience",
)


#: A setting's value as given: text from a flag or a variable; from the config file, the
#: TOML value itself (a bool, a number, an array of strings), never turned into text.
Value = str | bool | int | float | tuple[str, ...]
Raw = dict[str, tuple[Value | None, str]]


def as_text(value: Value | None) -> str:
    """A text setting's value ("" if absent). A number is its decimal text (the parsers of
    numeric settings take numbers as they are); a bool or an array is "" (the config file
    reader has already refused them for a text setting)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def resolve_raw(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    file_values: Mapping[str, Value] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> Raw:
    """Each setting's raw value and where it came from (named in error messages).

    ``overrides`` (dev mode) rank just below flags; ``defaults`` replace the built-in
    defaults (``exec`` listens on a free port, for instance).
    """
    raw: Raw = {}
    for setting in SETTINGS:
        candidates: list[tuple[Value | None, str]] = [(flags.get(setting.name), setting.flag)]
        if overrides:
            candidates.append((overrides.get(setting.name), "dev mode"))
        ours = [e for e in setting.envs if e.startswith("SIDECAR_")]
        theirs = [e for e in setting.envs if not e.startswith("SIDECAR_")]
        candidates += [(environ.get(e) or None, e) for e in ours]
        if file_values:
            candidates.append((file_values.get(setting.name), "config file"))
        candidates += [(environ.get(e) or None, e) for e in theirs]
        default = (defaults or {}).get(setting.name, setting.default)
        value, source = next(((v, s) for v, s in candidates if v is not None), (default, "default"))
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
        try:
            ipaddress.ip_address(host)
        except ValueError:  # its message repeats the value, which callers show with care
            raise ValueError("the host must be an IP address or localhost") from None
    return host, port


#: Where a listener without client auth may bind: loopback and link-local (EC2 and ECS use
#: fd00:ec2::23 and fd00:ec2::254). Not a docker bridge gateway: other hosts can route to it.
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::23/128",
        "fd00:ec2::254/128",
    )
)


def is_local_address(host: str) -> bool:
    """True for ``localhost`` and addresses in LOCAL_NETWORKS (never 0.0.0.0 or ::)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in LOCAL_NETWORKS)


def split_list(value: Value | None) -> tuple[str, ...]:
    """A comma-separated text, or an array from the config file, as its non-empty items."""
    parts = value if isinstance(value, tuple) else as_text(value).split(",")
    return tuple(part.strip() for part in parts if part.strip())


def truthy(value: Value | None) -> bool:
    if isinstance(value, bool):
        return value
    return as_text(value).strip().lower() in ("1", "true", "yes", "on")


def default_session_name() -> str:
    host = re.sub(r"[^\w+=,.@-]", "-", socket.gethostname())
    return f"credential-sidecar-{host}"[:64]


def is_template(text: str) -> bool:
    return "{" in text
