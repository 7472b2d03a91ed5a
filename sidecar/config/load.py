"""``load_config``: flags, environment, dev mode and the config file into one ``Config``."""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sidecar.config import file as config_file
from sidecar.config.checks import Checker, check_accounts_of, check_profile, shown
from sidecar.config.model import (
    CLEAR_MODES,
    ClearMode,
    Config,
    CredentialsFileConfig,
    HopConfig,
    ListenerLimits,
    RefreshPolicy,
    RequestLimits,
    RoleConfig,
    ServerConfig,
    StsConfig,
)
from sidecar.config.settings import (
    CHAINED_MAX_DURATION,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_DURATION,
    REGIONAL_ENDPOINTS,
    ROLE_SETTINGS,
    SDK_ALLOWED_HOSTS,
    SETTINGS_BY_NAME,
    Raw,
    Value,
    as_text,
    default_session_name,
    is_local_address,
    resolve_raw,
    split_list,
    truthy,
)
from sidecar.core.errors import ConfigError, ExportError
from sidecar.core.secret import holds_token
from sidecar.sources.registry import kind_of

#: Where every SDK sends AWS_CONTAINER_CREDENTIALS_RELATIVE_URI requests (port 80).
RELATIVE_URI_HOST = "169.254.170.2"
#: exec's defaults: a free loopback port, and only warnings on the stderr it shares.
EXEC_DEFAULTS = {"listen": "127.0.0.1:0", "log_level": "warning"}
#: Flags that choose a token source other than a file (dev mode's token file yields to them).
_OTHER_TOKEN_SOURCE_FLAGS = ("token_source", "token_env", "token_command")


@dataclass(frozen=True)
class DevSupply:
    """What a running dev environment (``--dev``) offers the configuration."""

    role_arn: str
    token_file: Path
    sts_endpoint: str
    region: str
    #: Private (0700) directory; the auth token file goes there unless auth was chosen.
    directory: Path


@dataclass(frozen=True)
class Supplied:
    """What the command being run supplies where the user chose nothing.

    Only ``load_config`` (through ``_supplied_values``) decides where these apply, so a
    supplied value never contradicts an explicit choice made by a flag, an environment
    variable or the config file.
    """

    dev: DevSupply | None = None
    #: ``exec``'s private directory: a fresh auth token file there unless auth is disabled
    #: or chosen anywhere; ``exec`` also brings ``EXEC_DEFAULTS``.
    exec_directory: Path | None = None


def dev_requested(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> bool:
    """``--dev`` or ``SIDECAR_DEV``: never a config file, so known before the dev environment
    (whose values the configuration needs) is started."""
    return truthy(resolve_raw(flags, environ)["dev"][0])


def load_config(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    supplied: Supplied | None = None,
) -> Config:
    """Build the validated ``Config`` or raise one ``ConfigError`` listing every problem."""
    check = Checker()
    document = None
    file_values: dict[str, Value] = {}
    config_path = as_text(resolve_raw(flags, environ)["config"][0])  # only a flag or SIDECAR_CONFIG
    if config_path:
        document = config_file.read(Path(config_path), check)
        file_values = config_file.settings(document, check) if document is not None else {}
    chosen = resolve_raw(flags, environ, file_values=file_values)
    overrides, defaults = _supplied_values(supplied or Supplied(), flags, chosen)
    raw = resolve_raw(flags, environ, overrides, file_values, defaults)

    def value(name: str) -> str:
        return as_text(raw[name][0])

    region = value("region")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", region):
        check.add(f"{raw['region'][1]}={shown(region)} is not an AWS region like us-east-1")
    endpoint = as_text(raw["sts_endpoint"][0]) or None
    if endpoint and not re.match(r"^https?://[^/\s]+", endpoint):
        check.add(
            f"{raw['sts_endpoint'][1]}={shown(endpoint)} is not a URL: expected https://host[:port]"
        )
    regional = value("sts_regional_endpoints").lower()
    if regional not in REGIONAL_ENDPOINTS:
        check.add(
            f"{raw['sts_regional_endpoints'][1]}={shown(value('sts_regional_endpoints'))} "
            "must be regional or legacy"
        )

    examples = "127.0.0.1:9911, [::1]:9911 or 169.254.170.23:80"
    host, port = check.listen(raw, "listen", examples, required=True)
    host = host or "127.0.0.1"

    auth_text = as_text(raw["auth_token_file"][0])
    if auth_text and holds_token(auth_text):
        check.add(
            f"{raw['auth_token_file'][1]}: this looks like a token, not a path: give the path "
            "of the auth token file (it is created with a random token if missing)"
        )
        auth_text = ""
    insecure = truthy(raw["insecure_no_auth"][0])
    if auth_text and insecure:
        check.add("--auth-token-file and --insecure-no-auth contradict each other: pick one")

    log_format = value("log_format").lower()
    if log_format not in LOG_FORMATS:
        check.add(f"{raw['log_format'][1]}={shown(value('log_format'))} must be text or json")
    log_level = value("log_level").lower()
    if log_level not in LOG_LEVELS:
        check.add(
            f"{raw['log_level'][1]}={shown(value('log_level'))} must be one of "
            f"{', '.join(LOG_LEVELS)}"
        )

    ratio = _number(raw["refresh_ahead_ratio"][0])
    if not 0.05 <= ratio <= 0.75:
        check.add(
            f"{raw['refresh_ahead_ratio'][1]}={shown(value('refresh_ahead_ratio'))} must be "
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

    def count(name: str, low: int, high: int) -> int:
        return _count(raw, name, low, high, check)

    limits = ListenerLimits(
        idle_timeout=secs("idle_timeout", 0.01, 3600),
        request_timeout=secs("request_timeout", 0.01, 3600),
        max_connections=count("max_connections", 1, 1_000_000),
        max_connections_per_client=count("max_connections_per_client", 1, 1_000_000),
    )
    if limits.request_timeout <= policy.cold_start_wait:
        check.add(
            f"{raw['request_timeout'][1]}={value('request_timeout')!r} must be longer than "
            f"--cold-start-wait ({policy.cold_start_wait:g}s), which a request may spend waiting"
        )

    if document is not None and config_file.declares_roles(document):
        # Given on purpose (a flag or our own variable) rather than ambient (AWS_ROLE_ARN,
        # which EKS injects into every pod): only the former is ambiguous.
        explicit = [
            SETTINGS_BY_NAME[n].flag
            for n in ROLE_SETTINGS
            if raw[n][1] == SETTINGS_BY_NAME[n].flag or raw[n][1].startswith("SIDECAR_")
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

    imds_role = as_text(raw["imds_role"][0]) or default_role
    imds_host, imds_port = check.listen(raw, "imds_listen", "127.0.0.1:8077 or 169.254.170.23:80")
    if as_text(raw["imds_listen"][0]):
        if imds_role is None:
            check.add("--imds-listen needs --imds-role NAME: there is no default role")
        elif imds_role not in {r.name for r in roles}:
            check.add(
                f"{raw['imds_role'][1]}={shown(imds_role)} is not one of the roles "
                f"({', '.join(r.name for r in roles)})"
            )

    relative_dir = as_text(raw["relative_id_dir"][0])
    relative_host, relative_port = check.listen(
        raw,
        "relative_listen",
        "169.254.170.2:80 (after `credential-sidecar link-local up`) or 127.0.0.1:9912",
    )
    if as_text(raw["relative_listen"][0]):
        if not relative_dir:
            check.add(
                "--relative-listen needs --relative-id-dir DIR: the directory keeping each "
                "role's id (created 0700 if missing), so ids survive restarts"
            )
        elif holds_token(relative_dir):
            check.add(
                f"{raw['relative_id_dir'][1]}: this looks like a token, not a path: give the "
                "directory that holds one id file per role"
            )
            relative_dir = ""

    if not auth_text and not insecure and any(r.auth_token_file is None for r in roles):
        check.add(
            "no auth token file: pass --auth-token-file PATH (created with a random "
            "token if missing) or, to serve credentials to any local process, "
            "--insecure-no-auth"
        )

    credentials_file = credentials_file_config(raw, default_role, check)
    refusals = request_limits(raw, host, insecure, imds_host, check, relative_host)

    if check.problems:
        raise ConfigError(check.problems)
    return Config(
        roles=roles,
        default_role=default_role,
        sts=StsConfig(region, endpoint, regional),
        refresh=policy,
        server=ServerConfig(
            host,
            port,
            Path(auth_text) if auth_text else None,
            insecure,
            audit_log=truthy(raw["audit_log"][0]),
            imds_host=imds_host,
            imds_port=imds_port,
            imds_role=imds_role if imds_host is not None else None,
            imds_hop_limit=_count(raw, "imds_hop_limit", 1, 64, check),
            relative_host=relative_host,
            relative_port=relative_port,
            relative_id_dir=Path(relative_dir) if relative_host and relative_dir else None,
            failed_request_burst=refusals.failed_request_burst,
            failed_request_rate=refusals.failed_request_rate,
            refusal_log_budget=refusals.refusal_log_budget,
            allow_network_listener=refusals.allow_network_listener,
            limits=limits,
        ),
        log_format=log_format,
        log_level=log_level,
        dev=truthy(raw["dev"][0]),
        notes=tuple(check.notes),
        credentials_file=credentials_file,
    )


def credentials_file_config(
    raw: Raw, default_role: str | None, check: Checker
) -> CredentialsFileConfig | None:
    """``--write-credentials-file`` and its companions, checked together."""
    path = as_text(raw["write_credentials_file"][0])
    profile = as_text(raw["profile"][0]) or "default"
    on_exit_text = as_text(raw["credentials_file_on_exit"][0]).lower()
    on_exit: ClearMode = "remove"
    if on_exit_text in CLEAR_MODES:
        on_exit = cast(ClearMode, on_exit_text)
    else:
        check.add(
            f"{raw['credentials_file_on_exit'][1]}={shown(on_exit_text)} must be one of "
            f"{', '.join(CLEAR_MODES)}"
        )
    try:
        check_profile(profile)
    except ExportError as exc:
        check.add(f"{raw['profile'][1]}: {exc}")
    if not path:
        return None
    if holds_token(path):
        check.add(
            f"{raw['write_credentials_file'][1]}: this looks like a token, not a path: give "
            "the path of the shared-credentials file to keep current"
        )
        return None
    if profile == configparser.DEFAULTSECT:
        check.add(
            f"{raw['profile'][1]}={shown(profile)} is the defaults section of an ini file, "
            "which applies to every profile; choose another name (default is fine)"
        )
    if default_role is None:
        check.add(
            "--write-credentials-file writes the default role, and the config file names "
            "none: set default_role"
        )
    return CredentialsFileConfig(Path(path), profile, on_exit)


def request_limits(
    raw: Raw,
    host: str,
    insecure: bool,
    imds_host: str | None,
    check: Checker,
    relative_host: str | None = None,
) -> RequestLimits:
    """The refusal and rate-limit settings, and where listeners without client auth may bind.

    An unauthenticated listener on a non-local address serves anyone who can route to it,
    and one on 0.0.0.0 or :: also every address of the host: both need the loud override.
    """
    allow_network = truthy(raw["insecure_allow_unauthenticated_network_listener"][0])
    override = SETTINGS_BY_NAME["insecure_allow_unauthenticated_network_listener"].flag
    unauthenticated = [
        (imds_host, raw["imds_listen"][1], "the IMDS listener"),
        (relative_host, raw["relative_listen"][1], "the capability endpoint"),
    ]
    if insecure:
        unauthenticated.append((host, raw["listen"][1], "--insecure-no-auth"))
    for bind, source, what in unauthenticated:
        if bind is not None and not allow_network and not is_local_address(bind):
            unspecified = ipaddress.ip_address(bind).is_unspecified
            kind = "every network of this host" if unspecified else "the network"
            check.add(
                f"{source}: {bind} exposes {what} (no client auth) to {kind}: bind a "
                "loopback or link-local address (127.0.0.1, 169.254.170.23), or accept "
                f"that anything reaching {bind} gets credentials with {override}"
            )

    rate = _number(raw["failed_request_rate"][0])
    if not 0 <= rate <= 100_000:
        check.add(
            f"{raw['failed_request_rate'][1]}={shown(raw['failed_request_rate'][0])} must be a "
            "number of requests per second from 0 (no limit) to 100000"
        )
    return RequestLimits(
        failed_request_burst=_count(raw, "failed_request_burst", 1, 1_000_000, check),
        failed_request_rate=rate if rate > 0 else None,
        refusal_log_budget=_count(raw, "refusal_log_budget", 1, 1_000_000, check),
        allow_network_listener=allow_network,
    )


def _number(value: Value | None) -> float:
    """A number setting (a config file's number as it is); -1 if it is not a number."""
    if isinstance(value, bool) or value is None or isinstance(value, tuple):
        return -1.0
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except ValueError:
        return -1.0


def _count(raw: Raw, name: str, low: int, high: int, check: Checker) -> int:
    """A whole-number setting between ``low`` and ``high``."""
    value = raw[name][0]
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or not low <= number <= high:
        check.add(f"{raw[name][1]}={shown(value)} must be a whole number from {low} to {high}")
        return low
    return number


def _supplied_values(
    supplied: Supplied, flags: Mapping[str, str | None], chosen: Raw
) -> tuple[dict[str, str], dict[str, str]]:
    """(overrides, defaults) for ``resolve_raw``: the one place that knows what dev mode and
    exec supply unless the user chose otherwise. ``chosen`` is the user's own resolution
    (flags, environment, config file, built-in defaults)."""
    overrides: dict[str, str] = {}
    defaults: dict[str, str] = {}
    if supplied.exec_directory is not None:
        defaults.update(EXEC_DEFAULTS)
    dev = supplied.dev
    if dev is not None:
        defaults["relative_id_dir"] = str(dev.directory / "relative-ids")
        # Rank just below flags (documented), so an ambient AWS_ROLE_ARN does not leak in.
        overrides.update(role_arn=dev.role_arn, sts_endpoint=dev.sts_endpoint, region=dev.region)
        # Detection prefers a token file: it must not hide a source a flag asked for.
        if not any(flags.get(name) for name in _OTHER_TOKEN_SOURCE_FLAGS):
            overrides["token_file"] = str(dev.token_file)
    # A generated auth token file only where nothing about auth was chosen, anywhere: it
    # must never contradict --insecure-no-auth (flag, variable or config file).
    auth_chosen = bool(chosen["auth_token_file"][0]) or truthy(chosen["insecure_no_auth"][0])
    directory = supplied.exec_directory or (dev.directory if dev else None)
    if directory is not None and not auth_chosen:
        defaults["auth_token_file"] = str(directory / "auth-token")
    return overrides, defaults


def flag_role(raw: Raw, environ: Mapping[str, str], check: Checker) -> RoleConfig:
    """The single role described by flags and environment variables."""
    role_arn = as_text(raw["role_arn"][0])
    if not role_arn:
        check.add(
            "no role to assume: pass --role-arn or set AWS_ROLE_ARN "
            "(arn:aws:iam::<12-digit account>:role/<name>), or try --dev"
        )
        role_arn = ""
    else:
        check.role_arn(role_arn, raw["role_arn"][1])
    session = as_text(raw["session_name"][0]) or None
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
        if not kind_of(role.token).renewable:
            warnings.append(
                f"role {role.name}: its {kind_of(role.token).name} token cannot be renewed; "
                "credentials stop refreshing once it expires"
            )
    if config.server.imds_host is not None:
        role = config.role_named(config.server.imds_role or "")
        warnings.append(
            f"IMDS listener on {config.server.imds_host}:{config.server.imds_port} has no "
            f"client auth: anything that can reach it gets role {role.name} "
            f"({role.role_arn}); bind it to an address only your build containers reach"
        )
    relative = (config.server.relative_host, config.server.relative_port)
    if relative[0] is not None and relative != (RELATIVE_URI_HOST, 80):
        warnings.append(
            f"--relative-listen {relative[0]}:{relative[1]}: clients given "
            f"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI always connect to {RELATIVE_URI_HOST}:80, "
            "so they reach this listener only through a DNAT rule (docs/link-local.md)"
        )
    if config.server.allow_network_listener:
        warnings.append(
            "--insecure-allow-unauthenticated-network-listener: listeners without client auth "
            "may be reachable from other containers or hosts; anything that reaches them gets "
            "credentials"
        )
    if config.server.insecure_no_auth:
        warnings.append(
            "--insecure-no-auth: ANY process that can reach "
            f"{config.server.host}:{config.server.port} gets AWS credentials"
        )
    host = config.server.host
    # On 0.0.0.0 or :: the daemon is also on loopback, where SDKs on this host reach it.
    reachable = (
        host in SDK_ALLOWED_HOSTS
        or host.startswith("127.")
        or ipaddress.ip_address(host).is_unspecified
    )
    if not reachable:
        warnings.append(
            f"listening on {host}: AWS SDKs refuse plain-http container credentials from any "
            "host but 127.0.0.0/8, [::1], localhost, 169.254.170.2 and 169.254.170.23; "
            "clients must use a different route (see README, 'Reaching docker builds')"
        )
    return warnings
