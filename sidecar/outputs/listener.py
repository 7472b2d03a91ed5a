"""Hardened HTTP listeners: deadlines, connection caps, quiet JSON answers to bad requests.

aiohttp's defaults suit a server behind a reverse proxy, not one any local process can
reach directly: an idle connection lives an hour, nothing bounds how long a request head
may trickle in or how long a client may leave its answer unread, connections are
unlimited, and a malformed request is logged at ERROR with a traceback holding the raw
request bytes (Authorization header included) and answered in text/plain echoing them.

``GuardedSite`` serves an ``AppRunner`` with ``GuardedHandler``, aiohttp's own
``RequestHandler`` with these bounds added:

    idle_timeout      aiohttp's keep-alive timer, which also runs from the moment a
                      connection opens: no complete request head in time -> closed
    request_timeout   from a request's first byte until its answer is written (and after
                      each answer, for pipelined requests already queued) -> aborted
    max_connections   per listener and per client address; over either cap a canned 503
                      is written and the connection closed before any parsing

Every line these log is rate limited and names the client address and the reason,
never a request byte.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

from sidecar.config.model import ListenerLimits
from sidecar.outputs.http import LogThrottle, error_response

log = logging.getLogger(__name__)

#: A refused connection gets these bytes and is closed: nothing parsed, nothing allocated.
_REFUSAL_BODY = (
    b'{"code": "TooManyConnections", "message": "too many open connections; retry shortly",'
    b' "Code": "TooManyConnections", "Message": "too many open connections; retry shortly"}'
)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Cache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_REFUSAL_BODY)}\r\n\r\n".encode()
    + _REFUSAL_BODY
)
#: How long after an answer aiohttp keeps reading an unread request body before closing.
LINGERING_TIME = 1.0
#: One log line per event and interval at most; the next one counts those suppressed.
LOG_INTERVAL = 10.0
#: File descriptors kept free for everything but client connections (STS, token files...).
FD_RESERVE = 64
#: asyncio's message when accept() fails for want of descriptors or memory.
ACCEPT_ERROR = "socket.accept() out of system resource"


class ConnectionCounter:
    """Open connections in total and per client address, each under its cap."""

    def __init__(self, total: int, per_client: int) -> None:
        self.max_total = total
        self.max_per_client = per_client
        self.total = 0
        # Only addresses with an open connection are kept, so the table is bounded too.
        self._per_client: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        held = self._per_client.get(client, 0)
        if self.total >= self.max_total or held >= self.max_per_client:
            return False
        self.total += 1
        self._per_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        held = self._per_client.pop(client, 1) - 1
        if held > 0:
            self._per_client[client] = held

    def held_by(self, client: str) -> int:
        return self._per_client.get(client, 0)


class ListenerGuard:
    """One listener's limits, connection counts and log throttle, shared by its handlers."""

    def __init__(
        self,
        limits: ListenerLimits,
        name: str = "listener",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.name = name
        self.connections = ConnectionCounter(
            limits.max_connections, limits.max_connections_per_client
        )
        self._throttle = LogThrottle(LOG_INTERVAL, monotonic)

    def note(self, level: int, event: str, message: str, client: str, **fields: Any) -> None:
        """Log ``message`` unless one line of this event went out within the interval."""
        suppressed = self._throttle.allow(event, self.name)
        if suppressed is not None:
            extra = {"event": event, "listener": self.name, "remote": client, **fields}
            log.log(level, message, extra={**extra, "suppressed_since_last": suppressed})

    def handler(self, server: web.Server) -> GuardedHandler:
        """The protocol factory given to ``loop.create_server``."""
        return GuardedHandler(
            server,
            guard=self,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self.limits.idle_timeout,
            lingering_time=LINGERING_TIME,
            access_log=None,
        )


def _rejection(exc: BaseException | None) -> tuple[int, str, str]:
    """Status, JSON code and message for a request aiohttp could not parse."""
    if isinstance(exc, LineTooLong):
        return 431, "RequestHeaderFieldsTooLarge", "the request line or a header is too long"
    # aiohttp has no class of its own for it; both of its parsers say exactly this.
    if isinstance(exc, BadHttpMessage) and exc.message == "Too many headers received":
        return 431, "RequestHeaderFieldsTooLarge", "the request has too many headers"
    if isinstance(exc, HttpProcessingError):
        return 400, "MalformedRequest", "the request is not valid HTTP/1.1"
    return 400, "MalformedRequest", "the request could not be read"


class GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler with a request deadline, caps and quiet errors."""

    __slots__ = ("_admitted", "_client", "_deadline", "_guard", "_request_started")

    def __init__(self, manager: web.Server, *, guard: ListenerGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client = "?"
        self._admitted = False
        #: One timer per connection, not per request: it is armed for the first request,
        #: and when it fires it looks at the request in progress (if any) and either closes
        #: the connection or re-arms for that request's own deadline. A keep-alive client's
        #: requests thus cost a float each, not a timer scheduled and cancelled.
        self._deadline: asyncio.TimerHandle | None = None
        self._request_started: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._guard.connections.acquire(self._client):
            # Over a cap: answer without parsing, and never start aiohttp's request task.
            self._force_close = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(REFUSAL)
            transport.close()
            counter = self._guard.connections
            self._guard.note(
                logging.WARNING,
                "connection_refused",
                "refused a connection: too many open connections",
                self._client,
                open_total=counter.total,
                open_from_client=counter.held_by(self._client),
            )
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        if self._admitted:
            self._admitted = False
            self._guard.connections.release(self._client)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first byte of a request starts its deadline; an answer clears it.
        if data and self._request_started is None and not self._force_close:
            self._start_request()
        super().data_received(data)

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._request_started = None
        if self._messages:  # pipelined requests already parsed: each gets its own deadline
            self._start_request()
        return result

    def _start_request(self) -> None:
        self._request_started = now = self._loop.time()
        if self._deadline is None:
            self._deadline = self._loop.call_at(
                now + self._guard.limits.request_timeout, self._check_deadline
            )

    def _cancel_deadline(self) -> None:
        self._request_started = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check_deadline(self) -> None:
        assert self._deadline is not None
        armed_for, self._deadline = self._deadline.when(), None
        if self._request_started is None:
            return  # answered in time; the next request arms the timer again
        due = self._request_started + self._guard.limits.request_timeout
        if due > armed_for:  # a later request than the one the timer was armed for
            self._deadline = self._loop.call_at(due, self._check_deadline)
            return
        self._expired()

    def _expired(self) -> None:
        self._request_started = None
        transport = self.transport
        self.force_close()
        if transport is not None:
            # close() would wait for a client that does not read to take our answer.
            transport.abort()
        self._guard.note(
            logging.WARNING,
            "request_timeout",
            f"closed a connection whose request was not complete and answered within "
            f"{self._guard.limits.request_timeout:g}s",
            self._client,
            timeout=self._guard.limits.request_timeout,
        )

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON answer and one throttled line; the exception text may hold request bytes."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already partly sent")
        if status >= 500:
            # Our own bug, not the client's: keep the frames (code), drop the message (data).
            self._guard.note(
                logging.ERROR,
                "request_crashed",
                "a request handler failed with %s",
                self._client,
                error=type(exc).__name__,
                frames="".join(traceback.format_tb(exc.__traceback__)) if exc else "",
            )
            response = error_response(status, "InternalError", "the daemon failed; see its log")
        else:
            status, code, text = _rejection(exc)
            self._guard.note(
                logging.WARNING,
                "malformed_request",
                "refused a malformed HTTP request",
                self._client,
                error=type(exc).__name__,
                status=status,
            )
            response = error_response(status, code, text)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other error paths: never its message arguments or exception text."""
        exc = kw.get("exc_info")
        self._guard.note(
            logging.ERROR,
            "connection_error",
            "error while serving a connection",
            self._client,
            error=type(exc).__name__ if isinstance(exc, BaseException) else "unknown",
        )


class GuardedSite(web.BaseSite):
    """Like ``web.TCPSite``, but every connection is served by a ``GuardedHandler``."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ListenerGuard, **kw: Any
    ) -> None:
        super().__init__(runner, **kw)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        shown = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{shown}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._guard.handler(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )


def fit_to_fd_limit(limits: ListenerLimits, listeners: int, fd_limit: int) -> ListenerLimits:
    """Lower the per-listener cap so all listeners together cannot run out of descriptors.

    Refusing a connection over the cap is cheap; running out of descriptors is not (accept
    fails in a loop, and so does everything else that opens a file or socket).
    """
    room = max(1, (fd_limit - FD_RESERVE) // max(1, listeners))
    if fd_limit == resource.RLIM_INFINITY or limits.max_connections <= room:
        return limits
    return ListenerLimits(
        idle_timeout=limits.idle_timeout,
        request_timeout=limits.request_timeout,
        max_connections=room,
        max_connections_per_client=min(limits.max_connections_per_client, room),
    )


class AcceptErrorThrottle:
    """A loop exception handler that reports accept() running out of descriptors rarely.

    asyncio logs every failed accept (it pauses the listener for a second and retries), which
    under a connection flood is thousands of identical lines a second. Everything else goes
    to the handler that was installed before.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float = LOG_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._throttle = LogThrottle(interval, monotonic)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == ACCEPT_ERROR:
            suppressed = self._throttle.allow("accept_failed")
            if suppressed is not None:
                exc = context.get("exception")
                log.error(
                    "cannot accept connections: %s; refusing clients until descriptors are free",
                    getattr(exc, "strerror", None) or type(exc).__name__,
                    extra={"event": "accept_failed", "suppressed_since_last": suppressed},
                )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def install(self) -> None:
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        self._loop.set_exception_handler(self._previous)
