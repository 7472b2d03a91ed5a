"""Configuration: parsed once, validated completely, then frozen.

Every command-line setting has one entry in ``SETTINGS``: its flag, the environment
variables that can provide it (our ``SIDECAR_*`` name first, then the AWS SDK's name so an
existing web-identity setup works unchanged) and its default. Precedence, highest first:

    flag > dev mode (serve --dev) > SIDECAR_* env > config file > AWS_* env > default

A TOML config file (``--config``, see ``config_file.py``) can declare several named roles;
without one, the flags and environment describe a single role named ``default``.
``load_config`` reports every bad value in one ``ConfigError`` naming the value and the
expected form, so an operator fixes everything in one pass.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import socket
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import ConfigError
from sidecar.secret import Secret

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
DEFAULT_AUDIENCE = "sts.amazonaws.com"
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
    _s("log_format", ("SIDECAR_LOG_FORMAT",), "text", "text or json"),
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


@dataclass(frozen=True)
class TokenSourceConfig:
    kind: str
    audience: str = DEFAULT_AUDIENCE
    path: Path | None = None
    env_var: str | None = None
    command: tuple[str, ...] = ()
    command_timeout: float = 10.0
    github_url: str | None = None
    github_token: Secret | None = None

    def describe(self) -> str:
        if self.kind == "file":
            return f"file {self.path}"
        if self.kind == "env":
            return f"environment variable {self.env_var}"
        if self.kind == "command":
            return f"command {self.command[0] if self.command else '?'}"
        return "GitHub Actions OIDC"


@dataclass(frozen=True)
class HopConfig:
    """One step of a role chain: hop 1 is AssumeRoleWithWebIdentity, later hops AssumeRole."""

    role_arn: str
    duration: int = 3600
    #: A RoleSessionName or a template (``{sub}``, ``{repository}``, ``{previous_session}``);
    #: None: the default name for hop 1, the previous hop's session name after it.
    session_name: str | None = None
    external_id: str | None = field(default=None, repr=False)
    policy: str | None = None
    policy_arns: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    transitive_tag_keys: tuple[str, ...] = ()
    source_identity: str | None = None


@dataclass(frozen=True)
class RoleConfig:
    name: str
    token: TokenSourceConfig
    hops: tuple[HopConfig, ...]
    #: None: the server-wide auth token opens this role.
    auth_token_file: Path | None = None
    allowed_accounts: tuple[str, ...] = ()
    default_session_name: str = "credential-sidecar"

    @property
    def role_arn(self) -> str:
        return self.hops[-1].role_arn

    @property
    def duration(self) -> int:
        return self.hops[-1].duration


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
    roles: tuple[RoleConfig, ...]
    #: The role served at /v1/credentials (None: only /v1/credentials/<name>).
    default_role: str | None
    sts: StsConfig
    refresh: RefreshPolicy
    server: ServerConfig
    log_format: str
    log_level: str
    dev: bool
    #: Valid but questionable choices, logged at startup.
    notes: tuple[str, ...] = ()

    def role(self, name: str) -> RoleConfig:
        return next(r for r in self.roles if r.name == name)


# -- raw values ---------------------------------------------------------------------------

Raw = dict[str, tuple[str | None, str]]


def resolve_raw(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    file_values: Mapping[str, str] | None = None,
) -> Raw:
    """Each setting's raw value and where it came from (named in error messages)."""
    raw: Raw = {}
    for setting in SETTINGS:
        candidates: list[tuple[str | None, str]] = [(flags.get(setting.name), setting.flag)]
        if overrides:
            candidates.append((overrides.get(setting.name), "dev mode"))
        ours = [e for e in setting.envs if e.startswith("SIDECAR_")]
        theirs = [e for e in setting.envs if not e.startswith("SIDECAR_")]
        candidates += [(environ.get(e) or None, e) for e in ours]
        if file_values:
            candidates.append((file_values.get(setting.name), "config file"))
        candidates += [(environ.get(e) or None, e) for e in theirs]
        value, source = next(
            ((v, s) for v, s in candidates if v is not None), (setting.default, "default")
        )
        raw[setting.name] = (value, source)
    return raw


# -- value checkers -----------------------------------------------------------------------

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


def split_list(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def default_session_name() -> str:
    host = re.sub(r"[^\w+=,.@-]", "-", socket.gethostname())
    return f"credential-sidecar-{host}"[:64]


def is_template(text: str) -> bool:
    return "{" in text


class Checker:
    """Collects problems instead of raising at the first, so all are reported together."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def role_arn(self, value: str, where: str) -> str:
        if not ROLE_ARN.match(value):
            self.add(
                f"{where}={value!r} is not an IAM role ARN: "
                "expected arn:aws:iam::<12-digit account>:role/<name>"
            )
        return value

    def seconds(self, value: str | int | float, where: str, low: float, high: float) -> float:
        text = str(value)
        try:
            result = parse_seconds(text)
        except ValueError:
            self.add(f"{where}={text!r} is not a duration: use seconds or 500ms/90s/15m/1h")
            return low
        if not low <= result <= high:
            self.add(f"{where}={text!r} must be between {low:g}s and {high:g}s")
        return result

    def duration(self, value: str | int, where: str, chained: bool) -> int:
        text = str(value)
        try:
            seconds = int(parse_seconds(text))
        except ValueError:
            self.add(f"{where}={text!r} is not a duration: use 3600 or 1h")
            return 3600
        if not MIN_DURATION <= seconds <= MAX_DURATION:
            self.add(
                f"{where}={text!r} is outside STS's limits: "
                f"use {MIN_DURATION}..{MAX_DURATION} seconds (15m..12h)"
            )
            return 3600
        if chained and seconds > CHAINED_MAX_DURATION:
            self.notes.append(
                f"{where}={text!r}: STS caps chained AssumeRole sessions at 1 h; using 3600 s"
            )
            return CHAINED_MAX_DURATION
        return seconds

    def session_name(self, value: str, where: str) -> str:
        if is_template(value):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(value) if f]
            except ValueError as exc:
                self.add(f"{where}={value!r} is not a valid template ({exc}): use {{claim}}")
                return value
            if any(not re.fullmatch(r"[\w-]+", f) for f in fields):
                self.add(
                    f"{where}={value!r}: template fields must be plain claim names "
                    "like {sub} or {repository}"
                )
        elif not SESSION_NAME.match(value):
            self.add(
                f"{where}={value!r} is not a valid RoleSessionName: "
                "use 2-64 characters of letters, digits and _+=,.@-"
            )
        return value

    def accounts(self, values: tuple[str, ...], where: str) -> tuple[str, ...]:
        for account in values:
            if not ACCOUNT_ID.match(account):
                self.add(f"{where}: {account!r} is not a 12-digit AWS account id")
        return values

    def token_source(self, raw: Raw, environ: Mapping[str, str]) -> TokenSourceConfig:
        """Where the web-identity token comes from: chosen, or detected when unambiguous."""
        kind = (raw["token_source"][0] or "").lower()
        path_text = raw["token_file"][0]
        env_var = raw["token_env"][0]
        command_text = raw["token_command"][0]
        audience = raw["audience"][0] or DEFAULT_AUDIENCE
        if not kind:
            if path_text:
                kind = "file"
            elif command_text:
                kind = "command"
            elif env_var:
                kind = "env"
            elif environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
                kind = "github"
            else:
                present = [v for v in CI_TOKEN_VARIABLES if environ.get(v)]
                if len(present) == 1:
                    kind, env_var = "env", present[0]
        if not kind:
            self.add(
                "no web-identity token: pass --token-file or set "
                "AWS_WEB_IDENTITY_TOKEN_FILE (or --token-env, --token-command, "
                "--token-source github)"
            )
            return TokenSourceConfig("file")
        if kind not in TOKEN_SOURCES:
            self.add(f"{raw['token_source'][1]}={kind!r} must be one of {', '.join(TOKEN_SOURCES)}")
            return TokenSourceConfig("file")
        timeout = self.seconds(
            raw["token_command_timeout"][0] or "10s", raw["token_command_timeout"][1], 0.1, 600
        )
        if kind == "file":
            if not path_text:
                self.add("--token-source file needs --token-file (or AWS_WEB_IDENTITY_TOKEN_FILE)")
                return TokenSourceConfig("file")
            path = Path(path_text)
            if not path.is_file() or not os.access(path, os.R_OK):
                reason = "does not exist" if not path.exists() else "is not a readable file"
                self.add(
                    f"{raw['token_file'][1]}={path_text!r} {reason}: point it at the "
                    "mounted OIDC token (e.g. /var/run/secrets/eks.amazonaws.com/"
                    "serviceaccount/token)"
                )
            return TokenSourceConfig("file", audience, path=path)
        if kind == "env":
            if not env_var or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_var):
                self.add(f"--token-source env needs --token-env NAME (got {env_var!r})")
            elif not environ.get(env_var):
                self.add(f"environment variable {env_var} (--token-env) is not set or empty")
            return TokenSourceConfig("env", audience, env_var=env_var)
        if kind == "command":
            try:
                argv = tuple(shlex.split(command_text or ""))
            except ValueError as exc:
                self.add(f"{raw['token_command'][1]}={command_text!r} cannot be split: {exc}")
                argv = ()
            if not argv:
                self.add("--token-source command needs --token-command 'PROGRAM ARGS...'")
            return TokenSourceConfig("command", audience, command=argv, command_timeout=timeout)
        url = environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
        request_token = environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
        if not url or not request_token:
            self.add(
                "--token-source github needs ACTIONS_ID_TOKEN_REQUEST_URL and "
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN: give the job `permissions: id-token: "
                "write`"
            )
        elif not url.startswith(("https://", "http://")):
            self.add(f"ACTIONS_ID_TOKEN_REQUEST_URL={url!r} is not a URL")
        return TokenSourceConfig(
            "github", audience, github_url=url, github_token=Secret(request_token)
        )


# -- the whole configuration --------------------------------------------------------------


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Build the validated ``Config`` or raise one ``ConfigError`` listing every problem."""
    from sidecar import config_file  # the file format builds on the checkers above

    check = Checker()
    first = resolve_raw(flags, environ, overrides)
    document = None
    file_values: dict[str, str] = {}
    config_path = first["config"][0]
    if config_path:
        document = config_file.read(Path(config_path), check)
        file_values = config_file.settings(document, check) if document is not None else {}
    raw = resolve_raw(flags, environ, overrides, file_values)

    def value(name: str) -> str:
        return raw[name][0] or ""

    region = value("region")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", region):
        check.add(f"{raw['region'][1]}={region!r} is not an AWS region like us-east-1")
    endpoint = raw["sts_endpoint"][0]
    if endpoint and not re.match(r"^https?://[^/\s]+", endpoint):
        check.add(
            f"{raw['sts_endpoint'][1]}={endpoint!r} is not a URL: expected https://host[:port]"
        )
    regional = value("sts_regional_endpoints").lower()
    if regional not in REGIONAL_ENDPOINTS:
        check.add(f"{raw['sts_regional_endpoints'][1]}={regional!r} must be regional or legacy")

    host, port = "127.0.0.1", 0
    try:
        host, port = parse_listen(value("listen"))
    except ValueError as exc:
        check.add(
            f"{raw['listen'][1]}={value('listen')!r} is not a listen address ({exc}): "
            "use 127.0.0.1:9911, [::1]:9911 or 169.254.170.23:80"
        )

    auth_text = raw["auth_token_file"][0]
    insecure = truthy(raw["insecure_no_auth"][0])
    if auth_text and insecure:
        check.add("--auth-token-file and --insecure-no-auth contradict each other: pick one")

    log_format = value("log_format").lower()
    if log_format not in LOG_FORMATS:
        check.add(f"{raw['log_format'][1]}={log_format!r} must be text or json")
    log_level = value("log_level").lower()
    if log_level not in LOG_LEVELS:
        check.add(f"{raw['log_level'][1]}={log_level!r} must be one of {', '.join(LOG_LEVELS)}")

    ratio = -1.0
    with contextlib.suppress(ValueError):
        ratio = float(value("refresh_ahead_ratio"))
    if not 0.05 <= ratio <= 0.75:
        check.add(
            f"{raw['refresh_ahead_ratio'][1]}={value('refresh_ahead_ratio')!r} must be "
            "a number from 0.05 to 0.75"
        )

    def secs(name: str, low: float, high: float) -> float:
        return check.seconds(value(name), raw[name][1], low, high)

    policy = RefreshPolicy(
        ahead_ratio=ratio,
        ahead_min=secs("refresh_ahead_min", 0, MAX_DURATION),
        safety_margin=secs("safety_margin", 0, 3600),
        retry_base=secs("retry_base", 0.001, 3600),
        retry_cap=secs("retry_cap", 0.001, 3600),
        slow_retry=secs("slow_retry", 0.001, 86400),
        attempt_timeout=secs("attempt_timeout", 0.1, 300),
        cold_start_wait=secs("cold_start_wait", 0, 0.95),
    )

    if document is not None and config_file.declares_roles(document):
        explicit = [
            SETTINGS_BY_NAME[n].flag
            for n in ROLE_SETTINGS
            if raw[n][1] in (SETTINGS_BY_NAME[n].flag, *SETTINGS_BY_NAME[n].envs[:1])
        ]
        if explicit:
            check.add(
                f"{', '.join(explicit)} cannot be combined with the roles of "
                f"{config_path}: declare the role in the file instead"
            )
        roles, default_role = config_file.roles(document, raw, environ, check)
    else:
        roles = (flag_role(raw, environ, check),)
        default_role = "default"

    if not auth_text and not insecure and any(r.auth_token_file is None for r in roles):
        check.add(
            "no auth token file: pass --auth-token-file PATH (created with a random "
            "token if missing) or, to serve credentials to any local process, "
            "--insecure-no-auth"
        )

    if check.problems:
        raise ConfigError(check.problems)
    return Config(
        roles=roles,
        default_role=default_role,
        sts=StsConfig(region, endpoint, regional),
        refresh=policy,
        server=ServerConfig(host, port, Path(auth_text) if auth_text else None, insecure),
        log_format=log_format,
        log_level=log_level,
        dev=truthy(raw["dev"][0]),
        notes=tuple(check.notes),
    )


def flag_role(raw: Raw, environ: Mapping[str, str], check: Checker) -> RoleConfig:
    """The single role described by flags and environment variables."""
    role_arn = raw["role_arn"][0]
    if not role_arn:
        check.add(
            "no role to assume: pass --role-arn or set AWS_ROLE_ARN "
            "(arn:aws:iam::<12-digit account>:role/<name>), or try --dev"
        )
        role_arn = ""
    else:
        check.role_arn(role_arn, raw["role_arn"][1])
    session = raw["session_name"][0]
    if session:
        check.session_name(session, raw["session_name"][1])
    duration = check.duration(raw["duration"][0] or "3600", raw["duration"][1], chained=False)
    hops = [HopConfig(role_arn, duration, session)]
    for i, arn in enumerate(split_list(raw["chain"][0]), start=2):
        check.role_arn(arn, f"{raw['chain'][1]} (hop {i})")
        hops.append(HopConfig(arn, min(duration, CHAINED_MAX_DURATION)))
    if len(hops) > 1 and duration > CHAINED_MAX_DURATION:
        check.notes.append(
            f"chained hops are capped at 1 h by STS; the first hop keeps "
            f"{duration} s and is reused to re-run the chain"
        )
    accounts = check.accounts(split_list(raw["allowed_accounts"][0]), raw["allowed_accounts"][1])
    role = RoleConfig(
        name="default",
        token=check.token_source(raw, environ),
        hops=tuple(hops),
        allowed_accounts=accounts,
        default_session_name=default_session_name(),
    )
    check_accounts_of(role, check)
    return role


def check_accounts_of(role: RoleConfig, check: Checker) -> None:
    if not role.allowed_accounts:
        return
    for hop in role.hops:
        account = hop.role_arn.split(":")[4] if hop.role_arn.count(":") >= 5 else ""
        if account and account not in role.allowed_accounts:
            check.add(
                f"role {role.name}: {hop.role_arn} is in account {account}, which is not "
                f"in allowed_accounts ({', '.join(role.allowed_accounts)})"
            )


def config_warnings(config: Config) -> list[str]:
    """Valid but risky choices, logged at startup."""
    warnings = list(config.notes)
    for role in config.roles:
        duration = role.duration
        ahead = config.refresh.refresh_ahead(duration)
        if ahead < 30 * 60:
            warnings.append(
                f"role {role.name}: sessions of {duration}s can only be kept "
                f"{ahead / 60:.0f} min from expiry (30+ min needs >= 1h). "
                + (
                    "With 900s sessions botocore/AWS CLI refetch credentials on nearly every call. "
                    if duration <= 900
                    else ""
                )
                + "Raise --duration (and the role's MaxSessionDuration) if you can."
            )
        if role.token.kind == "env":
            warnings.append(
                f"role {role.name}: the token in {role.token.env_var} cannot be renewed; "
                "credentials stop refreshing once it expires"
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
