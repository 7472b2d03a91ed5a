"""The configuration as the daemon uses it: frozen dataclasses, built once by ``load``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final, Literal, get_args

from sidecar.sources.registry import TokenSourceConfig

#: What ``clear`` does at shutdown: drop our section, deleting the file if nothing else is
#: left ("remove"); drop our section but keep the file, even empty ("empty"); leave the
#: last credentials in place until they expire ("keep").
ClearMode = Literal["remove", "empty", "keep"]
CLEAR_MODES: Final[tuple[str, ...]] = get_args(ClearMode)


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

    def __hash__(self) -> int:
        # The node agent's identity keys hash their role on every request: once is enough
        # for a frozen value (dataclass keeps an explicit __hash__; __eq__ stays by fields).
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f.name) for f in fields(self)))
            object.__setattr__(self, "_hash", cached)
        return cached

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
    #: Refresh up to this fraction of the refresh-ahead time earlier, at random.
    refresh_jitter: float = 0.0

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
class ListenerLimits:
    """Bounds every HTTP listener puts on its clients (README: Connections and requests)."""

    #: No complete request head this long after the connection opened or its last answer.
    idle_timeout: float = 5.0
    #: From a request's first byte until its answer is written (slow heads, slow readers).
    request_timeout: float = 5.0
    max_connections: int = 1024
    #: Must stay above a cold-start storm of concurrent SDK clients on one address (~300).
    max_connections_per_client: int = 512


@dataclass(frozen=True)
class RequestLimits:
    """What failing clients may do, and where listeners without client auth may bind."""

    #: Per client address: failing requests allowed at once, and refilled per second
    #: (None: no limit). Only 4xx answers spend them; see outputs/ratelimit.py.
    failed_request_burst: int = 100
    failed_request_rate: float | None = 20.0
    #: Refused-request log lines per minute over all clients.
    refusal_log_budget: int = 60
    #: Allow listeners without client auth on non-local addresses (loudly named flag).
    allow_network_listener: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    auth_token_file: Path | None
    insecure_no_auth: bool
    audit_log: bool = False
    #: The IMDSv2-compatible listener, off when imds_host is None.
    imds_host: str | None = None
    imds_port: int = 0
    imds_role: str | None = None
    #: The IP TTL / hop limit of IMDS answers (EC2's "response hop limit").
    imds_hop_limit: int = 1
    #: The capability endpoint (``/v2/credentials/<id>``), off when relative_host is None;
    #: one id file per role in relative_id_dir.
    relative_host: str | None = None
    relative_port: int = 0
    relative_id_dir: Path | None = None
    #: Per client address: failing requests allowed at once, and refilled per second
    #: (None: no limit). Only 4xx answers spend them; see sidecar/outputs/ratelimit.py.
    failed_request_burst: int = 100
    failed_request_rate: float | None = 20.0
    #: Refused-request log lines per minute over all clients.
    refusal_log_budget: int = 60
    #: Allow listeners without client auth on non-local addresses (loudly named flag).
    allow_network_listener: bool = False
    limits: ListenerLimits = ListenerLimits()


@dataclass(frozen=True)
class CredentialsFileConfig:
    """``--write-credentials-file``: the default role kept in a shared-credentials file."""

    path: Path
    profile: str = "default"
    #: What shutdown does with the profile (``ClearMode``).
    on_exit: ClearMode = "remove"


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
    credentials_file: CredentialsFileConfig | None = None

    def role_named(self, name: str) -> RoleConfig:
        return next(r for r in self.roles if r.name == name)
