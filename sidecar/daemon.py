"""The daemon: builds every part from a ``Config``, owns them, and tears them down.

One owner for every long-lived resource, in start order (STS client, HTTP client for
token endpoints, one refresher task per role, HTTP listener) and reverse stop order, so
SIGTERM stops listening first, lets in-flight requests finish, then stops refreshing and
closes the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.auth import AuthToken, ensure_token_file
from sidecar.chain import ChainExchanger
from sidecar.clock import Clock, SystemClock
from sidecar.config import Config, config_warnings
from sidecar.config.model import ListenerLimits
from sidecar.errors import ListenError
from sidecar.fdlimit import raise_open_file_limit
from sidecar.imds import create_imds_app
from sidecar.listener import (
    AcceptErrorThrottle,
    GuardedSite,
    ListenerGuard,
    fit_to_fd_limit,
)
from sidecar.metrics import Metrics
from sidecar.ratelimit import FailureLimiter
from sidecar.refresher import Refresher
from sidecar.server import CREDENTIALS_PATH, LogThrottle, RoleEndpoint, create_app
from sidecar.sts import StsClient
from sidecar.tokens import HTTP_FETCH_TIMEOUT, build_token_source, watch_for

log = logging.getLogger(__name__)

#: How long in-flight requests may take to finish once we stop listening.
SHUTDOWN_GRACE = 3.0
#: Pending connections the kernel queues before we accept them (capped by somaxconn).
LISTEN_BACKLOG = 1024


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


async def load_auth(path: Path) -> AuthToken:
    """The auth token in ``path`` (generated if missing), read with every check."""
    if ensure_token_file(path):
        log.info(
            "generated a new auth token in %s (mode 0600)",
            path,
            extra={"event": "auth_token_created", "path": str(path)},
        )
    auth = await AuthToken.load(path)
    if auth.readable_by_others:
        log.warning(
            "auth token file %s is readable by group or others; chmod 600 it",
            path,
            extra={"event": "auth_token_permissions", "path": str(path)},
        )
    return auth


def _base_url(host: str, port: int, path: str = CREDENTIALS_PATH) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


async def _listen(
    stack: contextlib.AsyncExitStack,
    app: web.Application,
    host: str,
    port: int,
    flag: str,
    guard: ListenerGuard,
) -> tuple[str, int]:
    """Serve ``app`` on host:port until ``stack`` closes; the address actually bound."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    try:
        await GuardedSite(runner, host, port, guard, backlog=LISTEN_BACKLOG).start()
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another {flag} "
            "address or stop whatever holds it"
        ) from None
    bound_host, bound_port = runner.addresses[0][:2]
    return str(bound_host), int(bound_port)


def _listener_limits(config: Config) -> ListenerLimits:
    """The configured limits, after lifting the open-file limit and fitting the caps into it."""
    before, after = raise_open_file_limit()
    if after != before:
        log.info(
            "raised the open-file limit from %d to %d",
            before,
            after,
            extra={"event": "fd_limit_raised", "before": before, "after": after},
        )
    listeners = 1 if config.server.imds_host is None else 2
    limits = fit_to_fd_limit(config.server.limits, listeners, after)
    if limits != config.server.limits:
        log.warning(
            "open-file limit %d is too low for --max-connections %d on %d listener(s): "
            "capping at %d; raise the hard limit (ulimit -Hn) to allow more",
            after,
            config.server.limits.max_connections,
            listeners,
            limits.max_connections,
            extra={"event": "max_connections_lowered", "max_connections": limits.max_connections},
        )
    return limits


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
            StsClient(config.sts, config.refresh.attempt_timeout, metrics)
        )
        http = None
        if any(role.token.kind == "github" for role in config.roles):
            http = await stack.enter_async_context(aiohttp.ClientSession(trust_env=True))

        endpoints: dict[str, RoleEndpoint] = {}
        for role in config.roles:
            auth = await auth_for(role.auth_token_file) if role.auth_token_file else server_auth
            tokens = build_token_source(
                role.token, clock, http, environ if environ is not None else os.environ
            )
            # Token fetch (a command has its own timeout) plus one STS call per hop.
            token_time = (
                role.token.command_timeout if role.token.kind == "command" else HTTP_FETCH_TIMEOUT
            )
            budget = config.refresh.attempt_timeout * len(role.hops) + token_time
            refresher = Refresher(
                role.name,
                ChainExchanger(role, tokens, sts, clock),
                role.duration,
                config.refresh,
                clock,
                metrics,
                exchange_timeout=budget,
                token_watch=watch_for(tokens),
                clock_skew=lambda: sts.clock_skew,
            )
            task = asyncio.create_task(refresher.run(), name=f"refresher:{role.name}")
            stack.push_async_callback(_cancel, task)
            endpoints[role.name] = RoleEndpoint(refresher, auth)
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
        app = create_app(
            endpoints,
            config.default_role,
            metrics,
            config.refresh.cold_start_wait,
            audit=config.server.audit_log,
            limiter=limiter,
            refusals=refusals,
            check_host=any(e.auth is None for e in endpoints.values()),
        )
        limits = _listener_limits(config)
        accept_errors = AcceptErrorThrottle(asyncio.get_running_loop())
        accept_errors.install()
        stack.callback(accept_errors.uninstall)
        host, port = await _listen(
            stack,
            app,
            config.server.host,
            config.server.port,
            "--listen",
            ListenerGuard(limits, "credentials"),
        )
        base = _base_url(host, port)
        imds_url = None
        if config.server.imds_host is not None and config.server.imds_role is not None:
            role = config.role_named(config.server.imds_role)
            imds_app = create_imds_app(
                endpoints[role.name].refresher,
                role.role_arn,
                metrics,
                config.refresh.cold_start_wait,
                limiter=limiter,
                refusals=refusals,
            )
            imds_host, imds_port = await _listen(
                stack,
                imds_app,
                config.server.imds_host,
                config.server.imds_port,
                "--imds-listen",
                ListenerGuard(limits, "imds"),
            )
            imds_url = _base_url(imds_host, imds_port, "/")
            log.info(
                "serving role %s over IMDSv2 on %s (no client auth)",
                role.name,
                imds_url,
                extra={"event": "imds_started", "url": imds_url, "role": role.name},
            )
        roles = {r.name: r.role_arn for r in config.roles}
        log.info(
            "credential-sidecar %s serving %d role(s) on %s",
            __version__,
            len(roles),
            base,
            extra={
                "event": "started",
                "url": base,
                "roles": roles,
                "default_role": config.default_role,
                "sts_endpoint": sts.endpoint,
                "auth_required": all(e.auth is not None for e in endpoints.values()),
            },
        )
        default = endpoints.get(config.default_role) if config.default_role else None
        yield Running(
            url=base,
            refreshers={n: e.refresher for n, e in endpoints.items()},
            default=default.refresher if default else None,
            imds_url=imds_url,
            auth_token_file=str(default.auth.path) if default and default.auth else None,
        )
        log.info("stopping: no longer accepting connections", extra={"event": "stopping"})
    log.info("stopped", extra={"event": "stopped"})


async def _cancel(task: asyncio.Task[None]) -> None:
    # asyncio.wait neither re-raises the task's CancelledError nor swallows our own.
    task.cancel()
    await asyncio.wait([task])
