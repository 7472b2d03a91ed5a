"""The daemon: builds every part from a ``Config``, owns them, and tears them down.

One owner for every long-lived resource, in start order (STS client, refresher task,
HTTP listener) and reverse stop order, so SIGTERM stops listening first, lets in-flight
requests finish, then stops refreshing and closes the STS client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.auth import AuthToken, ensure_token_file, loose_permissions
from sidecar.clock import Clock, SystemClock
from sidecar.config import Config, config_warnings
from sidecar.metrics import Metrics
from sidecar.refresher import Refresher
from sidecar.server import CREDENTIALS_PATH, create_app
from sidecar.sts import StsClient, WebIdentityExchanger
from sidecar.tokens import FileTokenSource

log = logging.getLogger(__name__)

#: How long in-flight requests may take to finish once we stop listening.
SHUTDOWN_GRACE = 3.0


@dataclass(frozen=True)
class Running:
    """What a started daemon tells its caller."""

    url: str
    refresher: Refresher
    auth_token_file: str | None


def load_auth(config: Config, clock: Clock) -> AuthToken | None:
    path = config.server.auth_token_file
    if path is None:
        return None
    if ensure_token_file(path):
        log.info(
            "generated a new auth token in %s (mode 0600)",
            path,
            extra={"event": "auth_token_created", "path": str(path)},
        )
    elif loose_permissions(path):
        log.warning(
            "auth token file %s is readable by group or others; chmod 600 it",
            path,
            extra={"event": "auth_token_permissions", "path": str(path)},
        )
    return AuthToken(path, clock.monotonic)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{CREDENTIALS_PATH}"


@contextlib.asynccontextmanager
async def running_daemon(
    config: Config, clock: Clock | None = None, registry: CollectorRegistry | None = None
) -> AsyncIterator[Running]:
    """Start everything; on exit, stop it all in reverse order."""
    clock = clock or SystemClock()
    metrics = Metrics(registry or CollectorRegistry())
    for warning in config_warnings(config):
        log.warning(warning, extra={"event": "config_warning"})
    auth = load_auth(config, clock)

    async with contextlib.AsyncExitStack() as stack:
        sts = await stack.enter_async_context(
            StsClient(config.sts, config.refresh.attempt_timeout, metrics)
        )
        exchanger = WebIdentityExchanger(
            config.role, FileTokenSource(config.role.token_file, clock), sts
        )
        refresher = Refresher(
            "default", exchanger, config.role.duration, config.refresh, clock, metrics
        )
        task = asyncio.create_task(refresher.run(), name="refresher:default")
        stack.push_async_callback(_cancel, task)

        runner = web.AppRunner(
            create_app(refresher, auth, metrics, config.refresh.cold_start_wait),
            handle_signals=False,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = _url(host, port)
        log.info(
            "credential-sidecar %s serving %s on %s",
            __version__,
            config.role.role_arn,
            url,
            extra={
                "event": "started",
                "url": url,
                "role_arn": config.role.role_arn,
                "sts_endpoint": sts.endpoint,
                "auth_required": auth is not None,
            },
        )
        yield Running(url, refresher, str(auth.path) if auth else None)
        log.info("stopping: no longer accepting connections", extra={"event": "stopping"})
    log.info("stopped", extra={"event": "stopped"})


async def _cancel(task: asyncio.Task[None]) -> None:
    # asyncio.wait neither re-raises the task's CancelledError nor swallows our own.
    task.cancel()
    await asyncio.wait([task])
