"""The daemon: builds every part from a ``Config``, owns them, and tears them down.

One owner for every long-lived resource, in start order (STS client, HTTP client for
token endpoints, one refresher per role, HTTP listener, garbage compaction) and reverse
stop order, so
SIGTERM stops listening first, lets in-flight requests finish, then stops refreshing and
closes the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.cache.identity import build_refresher
from sidecar.cache.pool import Pool
from sidecar.cache.refresher import Refresher
from sidecar.config import Config, config_warnings
from sidecar.core.clock import Clock, SystemClock
from sidecar.core.collector import compact_once_ready
from sidecar.core.metrics import Metrics
from sidecar.exchange.sts import StsClient
from sidecar.outputs.capability import create_capability_router
from sidecar.outputs.endpoint import CREDENTIALS_PATH, create_router
from sidecar.outputs.file_sink import credentials_file_sink
from sidecar.outputs.http import LogThrottle
from sidecar.outputs.imds import create_imds_router
from sidecar.outputs.listener import AcceptErrorThrottle, ListenerGuard
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.serving import base_url, listen, listener_limits
from sidecar.sources.registry import SourceContext, build_source, kind_of
from sidecar.tenancy.auth_tokens import AuthToken, load_auth
from sidecar.tenancy.capability import (
    RELATIVE_PREFIX,
    CapabilityRole,
    CapabilityTenancy,
    load_ids,
)
from sidecar.tenancy.static import StaticRole, StaticTenancy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Running:
    """What a started daemon tells its caller."""

    #: ``http://host:port/v1/credentials``: the default role; ``/<name>`` for any role.
    url: str
    refreshers: Mapping[str, Refresher]
    #: The role served at ``url`` (None if there is no default role)...
    default: Refresher | None
    #: ...and the file holding the token that opens it (None without auth).
    auth_token_file: str | None
    #: ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` for the IMDS listener, if there is one.
    imds_url: str | None = None
    #: The capability endpoint (``http://host:port``), if there is one, and each role's id
    #: file: ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` is /v2/credentials/ + its content.
    relative_url: str | None = None
    relative_id_files: Mapping[str, str] = field(default_factory=dict)

    def refresh_now(self) -> None:
        """Every role refreshes at once (whole chain) instead of waiting for its schedule
        or backoff; requests are coalesced per role (see ``Refresher.refresh_soon``)."""
        accepted = [name for name, r in self.refreshers.items() if r.refresh_soon()]
        if accepted:
            log.info(
                "refreshing now: %s",
                ", ".join(accepted),
                extra={"event": "refresh_requested", "roles": accepted},
            )


@contextlib.asynccontextmanager
async def running_daemon(
    config: Config,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Running]:
    """Start everything; on exit, stop it all in reverse order."""
    clock = clock or SystemClock()
    metrics = Metrics(registry or CollectorRegistry())
    for warning in config_warnings(config):
        log.warning(warning, extra={"event": "config_warning"})
    # One AuthToken per file, shared by the roles naming it; each watched by one task.
    auths: dict[Path, AuthToken] = {}

    async def auth_for(path: Path | None) -> AuthToken | None:
        if path is None:
            return None
        if path not in auths:
            auths[path] = await load_auth(path)
        return auths[path]

    server_auth = await auth_for(config.server.auth_token_file)

    async with contextlib.AsyncExitStack() as stack:
        sts = await stack.enter_async_context(
            StsClient(config.sts, config.refresh.attempt_timeout, metrics, clock)
        )
        http = None
        if any(kind_of(role.token).needs_http for role in config.roles):
            http = await stack.enter_async_context(aiohttp.ClientSession(trust_env=True))
        context = SourceContext(clock, http, environ if environ is not None else os.environ)

        # The sidecar's identities: a pool filled at start that never evicts.
        pool: Pool[str] = Pool(clock)
        stack.push_async_callback(pool.close)
        roles: dict[str, StaticRole] = {}
        for role in config.roles:
            auth = await auth_for(role.auth_token_file) if role.auth_token_file else server_auth
            refresher = build_refresher(
                role,
                build_source(role.token, context),
                kind_of(role.token).fetch_time(role.token),
                sts,
                config.refresh,
                clock,
                metrics,
            )
            metrics.watch_role(refresher.status)
            pool.add(role.name, refresher)
            roles[role.name] = StaticRole(refresher, auth)
        tenancy = StaticTenancy(roles, config.default_role)
        for path, auth_token in auths.items():
            watcher = asyncio.create_task(auth_token.watch(clock), name=f"auth-watch:{path}")
            stack.push_async_callback(_cancel, watcher)

        # One refusal log budget and one failure limit per client across both listeners.
        refusals = LogThrottle(monotonic=clock.monotonic, budget=config.server.refusal_log_budget)
        rate = config.server.failed_request_rate
        limiter = (
            FailureLimiter(rate, config.server.failed_request_burst, clock.monotonic)
            if rate
            else None
        )
        router = create_router(
            tenancy,
            metrics,
            config.refresh.cold_start_wait,
            audit=config.server.audit_log,
            limiter=limiter,
            refusals=refusals,
            check_host=tenancy.open_roles,
        )
        listeners = 1 + sum(
            h is not None for h in (config.server.imds_host, config.server.relative_host)
        )
        limits = listener_limits(config.server.limits, listeners)
        accept_errors = AcceptErrorThrottle(asyncio.get_running_loop())
        accept_errors.install()
        stack.callback(accept_errors.uninstall)
        host, port = await listen(
            stack,
            router,
            config.server.host,
            config.server.port,
            "--listen",
            ListenerGuard(limits, "credentials"),
        )
        base = base_url(host, port, CREDENTIALS_PATH)
        imds_url = None
        if config.server.imds_host is not None and config.server.imds_role is not None:
            role = config.role_named(config.server.imds_role)
            imds_router = create_imds_router(
                roles[role.name].refresher,
                role.role_arn,
                metrics,
                config.refresh.cold_start_wait,
                limiter=limiter,
                refusals=refusals,
                hop_limit=config.server.imds_hop_limit,
            )
            imds_host, imds_port = await listen(
                stack,
                imds_router,
                config.server.imds_host,
                config.server.imds_port,
                "--imds-listen",
                ListenerGuard(limits, "imds"),
            )
            imds_url = base_url(imds_host, imds_port, "/")
            log.info(
                "serving role %s over IMDSv2 on %s (no client auth)",
                role.name,
                imds_url,
                extra={"event": "imds_started", "url": imds_url, "role": role.name},
            )
        relative_url: str | None = None
        id_files: dict[str, str] = {}
        if config.server.relative_host is not None and config.server.relative_id_dir is not None:
            relative_url, id_files = await _serve_capabilities(
                stack,
                config,
                {name: entry.refresher for name, entry in roles.items()},
                metrics,
                clock,
                limiter,
                refusals,
                ListenerGuard(limits, "capability"),
            )
        if config.credentials_file is not None and config.default_role is not None:
            await stack.enter_async_context(
                credentials_file_sink(roles[config.default_role].refresher, config.credentials_file)
            )
        arns = {r.name: r.role_arn for r in config.roles}
        log.info(
            "credential-sidecar %s serving %d role(s) on %s",
            __version__,
            len(arns),
            base,
            extra={
                "event": "started",
                "url": base,
                "roles": arns,
                "default_role": config.default_role,
                "sts_endpoint": sts.endpoint,
                "auth_required": not tenancy.open_roles,
            },
        )
        compaction = asyncio.create_task(
            compact_once_ready(clock, lambda: all(r.refresher.ready for r in roles.values())),
            name="gc-compaction",
        )
        stack.push_async_callback(_cancel, compaction)
        default = roles.get(config.default_role) if config.default_role else None
        yield Running(
            url=base,
            refreshers={n: e.refresher for n, e in roles.items()},
            default=default.refresher if default else None,
            imds_url=imds_url,
            relative_url=relative_url,
            relative_id_files=id_files,
            auth_token_file=str(default.auth.path) if default and default.auth else None,
        )
        log.info("stopping: no longer accepting connections", extra={"event": "stopping"})
    log.info("stopped", extra={"event": "stopped"})


async def _serve_capabilities(
    stack: contextlib.AsyncExitStack,
    config: Config,
    refreshers: Mapping[str, Refresher],
    metrics: Metrics,
    clock: Clock,
    limiter: FailureLimiter | None,
    refusals: LogThrottle,
    guard: ListenerGuard,
) -> tuple[str, dict[str, str]]:
    """The capability endpoint (``--relative-listen``), owned by ``stack``: its URL and each
    role's id file. Ids are never logged; their files' paths are."""
    assert config.server.relative_host is not None
    assert config.server.relative_id_dir is not None
    ids = await load_ids(config.server.relative_id_dir, refreshers)
    for name, capability in ids.items():
        watcher = asyncio.create_task(capability.watch(clock), name=f"capability-watch:{name}")
        stack.push_async_callback(_cancel, watcher)
    tenancy = CapabilityTenancy(
        {name: CapabilityRole(refreshers[name], ids[name]) for name in refreshers}
    )
    router = create_capability_router(
        tenancy,
        metrics,
        config.refresh.cold_start_wait,
        refusals,
        audit=config.server.audit_log,
        limiter=limiter,
    )
    host, port = await listen(
        stack,
        router,
        config.server.relative_host,
        config.server.relative_port,
        "--relative-listen",
        guard,
    )
    url = base_url(host, port, "")
    files = {name: str(capability.path) for name, capability in ids.items()}
    for name, path in files.items():
        log.info(
            "serving role %s on %s for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI clients (no "
            "client auth: the id is the credential); hand out "
            'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="%s$(cat %s)"',
            name,
            url,
            RELATIVE_PREFIX,
            shlex.quote(path),
            extra={"event": "relative_started", "url": url, "role": name, "id_file": path},
        )
    return url, files


async def _cancel(task: asyncio.Task[None]) -> None:
    # asyncio.wait neither re-raises the task's CancelledError nor swallows our own.
    task.cancel()
    await asyncio.wait([task])
