"""Putting a router on an address: aiohttp's low-level server behind the guarded site, the
bound address, and the limits that fit the open-file limit. Shared by the sidecar and the
node agent."""

from __future__ import annotations

import contextlib
import logging

from aiohttp import web

from sidecar.config.model import ListenerLimits
from sidecar.core.errors import ListenError
from sidecar.core.fdlimit import raise_open_file_limit
from sidecar.outputs.listener import GuardedSite, ListenerGuard, fit_to_fd_limit
from sidecar.outputs.router import Router

log = logging.getLogger(__name__)

#: How long in-flight requests may take to finish once we stop listening.
SHUTDOWN_GRACE = 3.0
#: Pending connections the kernel queues before we accept them (capped by somaxconn).
LISTEN_BACKLOG = 1024


def base_url(host: str, port: int, path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{path}"


async def listen(
    stack: contextlib.AsyncExitStack,
    router: Router,
    host: str,
    port: int,
    flag: str,
    guard: ListenerGuard,
) -> tuple[str, int]:
    """Serve ``router`` on host:port until ``stack`` closes; the address actually bound."""
    server = web.Server(router, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
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


def listener_limits(configured: ListenerLimits, listeners: int) -> ListenerLimits:
    """The configured limits, after lifting the open-file limit and fitting the caps into it."""
    before, after = raise_open_file_limit()
    if after != before:
        log.info(
            "raised the open-file limit from %d to %d",
            before,
            after,
            extra={"event": "fd_limit_raised", "before": before, "after": after},
        )
    limits = fit_to_fd_limit(configured, listeners, after)
    if limits != configured:
        log.warning(
            "open-file limit %d is too low for --max-connections %d on %d listener(s): "
            "capping at %d; raise the hard limit (ulimit -Hn) to allow more",
            after,
            configured.max_connections,
            listeners,
            limits.max_connections,
            extra={"event": "max_connections_lowered", "max_connections": limits.max_connections},
        )
    return limits
