"""``node-agent``'s configuration: flags (and ``SIDECAR_NODE_*`` variables), resolved once
into one frozen ``NodeAgentConfig``, every problem reported together."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.config.checks import Checker, shown
from sidecar.config.model import ListenerLimits, RefreshPolicy, StsConfig
from sidecar.config.settings import (
    LOG_FORMATS,
    LOG_LEVELS,
    REGIONAL_ENDPOINTS,
    Setting,
    parse_listen,
)
from sidecar.core.errors import ConfigError
from sidecar.core.secret import holds_token
from sidecar.sources.base import DEFAULT_AUDIENCE

#: The addresses every current SDK accepts over plain http, as the EKS agent uses them.
DEFAULT_LISTEN = ("169.254.170.23:80", "[fd00:ec2::23]:80")
DEV_LISTEN = ("127.0.0.1:9923",)


def _n(name: str, default: str | None, help: str, **kw: bool) -> Setting:
    env = "SIDECAR_NODE_" + name.upper()
    return Setting(name, "--" + name.replace("_", "-"), (env,), default, help, **kw)


NODE_SETTINGS: tuple[Setting, ...] = (
    _n(
        "listen",
        ",".join(DEFAULT_LISTEN),
        "HOST:PORT to serve on; repeat for several (an IPv6 address that cannot be bound is "
        "a warning)",
        repeatable=True,
    ),
    _n(
        "metrics_listen",
        None,
        "HOST:PORT serving /metrics, /healthz and /readyz for Prometheus (the --listen "
        "addresses serve pods only: credentials and health)",
    ),
    _n("issuer", None, "the cluster's service-account issuer URL (the tokens' iss)"),
    _n(
        "jwks_file",
        None,
        "the issuer's keys as `kubectl get --raw /openid/v1/jwks` prints them, instead of "
        "OIDC discovery; re-read when it changes",
    ),
    _n("audience", DEFAULT_AUDIENCE, "the audience pod tokens must be issued for"),
    _n("associations", None, "TOML file: which service account gets which role"),
    _n("region", "us-east-1", "STS region"),
    _n("sts_endpoint", None, "STS endpoint URL (default: the region's)"),
    _n("sts_regional_endpoints", "regional", "regional or legacy"),
    _n("sts_rate", "5", "STS calls per second at most, over all identities"),
    _n("sts_burst", "10", "STS calls at once before --sts-rate applies"),
    _n("identity_idle_timeout", "1h", "drop an identity unused this long"),
    _n("max_identities", "10000", "identities cached at most (least recently used go first)"),
    _n(
        "request_wait",
        "1.5s",
        "how long a request for a new identity waits for its first credentials (then 503)",
    ),
    _n("refresh_jitter", "0.2", "refresh up to this fraction of the refresh-ahead time early"),
    _n("max_connections", "4096", "open connections per listener at most"),
    _n(
        "max_connections_per_client",
        "64",
        "open connections per client address at most (a pod uses a few; two clients must "
        "not be able to fill the listener)",
    ),
    _n("log_format", "text", "text or json"),
    _n("log_level", "info", "debug, info, warning or error"),
    _n("audit_log", None, "log every served request (role, subject, client)", is_switch=True),
    _n(
        "setup_addresses",
        None,
        "add the link-local --listen addresses to --interface first (needs CAP_NET_ADMIN)",
        is_switch=True,
    ),
    _n("interface", "lo", "where --setup-addresses puts the addresses"),
    _n("dev", None, "embedded issuer and STS emulator, two demo associations", is_switch=True),
)


@dataclass(frozen=True)
class NodeAgentConfig:
    listen: tuple[tuple[str, int], ...]
    metrics_listen: tuple[str, int] | None
    issuer: str
    jwks_file: Path | None
    audience: str
    associations: Path | None
    sts: StsConfig
    sts_rate: float
    sts_burst: int
    identity_idle: float
    max_identities: int
    request_wait: float
    refresh: RefreshPolicy
    limits: ListenerLimits
    log_format: str
    log_level: str
    audit_log: bool
    setup_addresses: bool
    interface: str
    dev: bool


def load_node_agent_config(
    flags: Mapping[str, str | Sequence[str] | None],
    environ: Mapping[str, str],
    dev_overrides: Mapping[str, str] | None = None,
) -> NodeAgentConfig:
    """Flags > dev mode > ``SIDECAR_NODE_*`` variables > defaults; ``ConfigError`` lists
    every problem."""
    check = Checker()
    raw: dict[str, tuple[str | None, str]] = {}
    for s in NODE_SETTINGS:
        flag_value = flags.get(s.name)
        given = (
            flag_value
            if flag_value is None or isinstance(flag_value, str)
            else ",".join(flag_value) or None
        )
        candidates = [(given, s.flag), ((dev_overrides or {}).get(s.name), "dev mode")]
        candidates.append((environ.get(s.envs[0]) or None, s.envs[0]))
        raw[s.name] = next(((v, w) for v, w in candidates if v is not None), (s.default, "default"))

    def value(name: str) -> str:
        return raw[name][0] or ""

    def where(name: str) -> str:
        return raw[name][1]

    listen = []
    items = [item for item in value("listen").split(",") if item]
    for item in items:
        try:
            listen.append(parse_listen(item.strip()))
        except ValueError as exc:
            check.add(f"{where('listen')}={shown(item)} is not HOST:PORT ({exc})")
    if not items:  # a bad one is reported above, once
        check.add("--listen: give at least one HOST:PORT")
    metrics_listen = None
    if value("metrics_listen"):
        try:
            metrics_listen = parse_listen(value("metrics_listen"))
        except ValueError as exc:
            shown_value = shown(value("metrics_listen"))
            check.add(f"{where('metrics_listen')}={shown_value} is not HOST:PORT ({exc})")
    # Exactly as given: tokens' iss must equal it, trailing slash and all (AKS has one).
    issuer = value("issuer")
    parts = urlsplit(issuer) if issuer else None
    if not issuer:
        check.add(
            "--issuer is required: the cluster's service-account issuer URL (kubectl get "
            "--raw /.well-known/openid-configuration shows it as issuer)"
        )
    elif parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        check.add(f"{where('issuer')}={shown(issuer)} is not a URL: expected https://host/path")
    audience = value("audience").strip()
    if not audience or holds_token(audience):
        # Every token would be refused for its audience (or a token would sit in the config).
        check.add(
            f"{where('audience')}: give the audience pod tokens are issued for (the projected "
            "token volume's audience, usually sts.amazonaws.com)"
        )
    jwks_file = Path(value("jwks_file")) if value("jwks_file") else None
    associations = Path(value("associations")) if value("associations") else None
    if associations is None:
        check.add("--associations is required: the TOML file mapping service accounts to roles")
    region = value("region")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", region):
        check.add(f"{where('region')}={shown(region)} is not an AWS region like us-east-1")
    regional = value("sts_regional_endpoints").lower()
    if regional not in REGIONAL_ENDPOINTS:
        check.add(f"{where('sts_regional_endpoints')} must be regional or legacy")
    endpoint = value("sts_endpoint") or None
    if endpoint and not re.match(r"^https?://[^/\s]+", endpoint):
        check.add(f"{where('sts_endpoint')}={shown(endpoint)} is not a URL")

    def number(name: str, low: float, high: float) -> float:
        try:
            result = float(value(name))
        except ValueError:
            result = low - 1
        if not low <= result <= high:
            check.add(
                f"{where(name)}={shown(value(name))} must be a number from {low:g} to {high:g}"
            )
            return low
        return result

    def whole(name: str, low: int, high: int) -> int:
        text = value(name).strip()
        if not text.isdigit() or not low <= int(text) <= high:
            check.add(f"{where(name)}={shown(text)} must be a whole number from {low} to {high}")
            return low
        return int(text)

    log_format, log_level = value("log_format").lower(), value("log_level").lower()
    if log_format not in LOG_FORMATS:
        check.add(f"{where('log_format')}={shown(log_format)} must be text or json")
    if log_level not in LOG_LEVELS:
        check.add(f"{where('log_level')}={shown(log_level)} must be one of {', '.join(LOG_LEVELS)}")
    request_wait = check.seconds(value("request_wait"), where("request_wait"), 0, 30)
    config = NodeAgentConfig(
        listen=tuple(listen),
        metrics_listen=metrics_listen,
        issuer=issuer,
        jwks_file=jwks_file,
        audience=audience,
        associations=associations,
        sts=StsConfig(region, endpoint, regional),
        sts_rate=number("sts_rate", 0.1, 10_000),
        sts_burst=whole("sts_burst", 1, 100_000),
        identity_idle=check.seconds(
            value("identity_idle_timeout"), where("identity_idle_timeout"), 1, 7 * 86400
        ),
        max_identities=whole("max_identities", 1, 10_000_000),
        request_wait=request_wait,
        refresh=RefreshPolicy(
            cold_start_wait=request_wait,
            refresh_jitter=number("refresh_jitter", 0, 0.5),
        ),
        limits=ListenerLimits(
            # Above a request's own wait for its first credentials.
            request_timeout=max(5.0, request_wait + 2),
            max_connections=whole("max_connections", 1, 1_000_000),
            max_connections_per_client=whole("max_connections_per_client", 1, 1_000_000),
        ),
        log_format=log_format,
        log_level=log_level,
        audit_log=bool(raw["audit_log"][0]),
        setup_addresses=bool(raw["setup_addresses"][0]),
        interface=value("interface"),
        dev=bool(raw["dev"][0]),
    )
    if check.problems:
        raise ConfigError(check.problems)
    return config
