"""The hardened listener in-process, over real loopback sockets: deadlines, caps, bad input.

Each test serves a tiny app through the daemon's own ``_listen`` wiring with small limits,
so a timeout of a fraction of a second stands in for the default of a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar.config import load_config
from sidecar.config.model import ListenerLimits
from sidecar.core import fdlimit
from sidecar.core.errors import ConfigError
from sidecar.core.fdlimit import raise_open_file_limit
from sidecar.logs import JsonFormatter, TextFormatter
from sidecar.outputs.http import LogThrottle
from sidecar.outputs.listener import (
    ACCEPT_ERROR,
    AcceptErrorThrottle,
    ConnectionCounter,
    ListenerGuard,
    fit_to_fd_limit,
)
from sidecar.outputs.router import Router
from sidecar.outputs.serving import listen
from tests.fakes import FakeClock, fake_role

SECRET = "s3cret-auth-token-0123456789abcdef"
#: Generous bound for "the server closed it": far above the limits used here.
CLIENT_TIMEOUT = 10.0


class Captured(logging.Handler):
    """Every record, rendered by both of the daemon's formatters."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines += [JsonFormatter().format(record), TextFormatter().format(record)]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield handler
    root.setLevel(level)
    root.removeHandler(handler)


class Served:
    def __init__(self, guard: ListenerGuard, port: int) -> None:
        self.guard = guard
        self.port = port

    async def connect(
        self, source: str = "127.0.0.1"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))

    async def exchange(self, raw: bytes, source: str = "127.0.0.1") -> bytes:
        """Send ``raw``, return everything the server sends until it closes."""
        reader, writer = await self.connect(source)
        writer.write(raw)
        try:
            return await asyncio.wait_for(reader.read(), CLIENT_TIMEOUT)
        finally:
            writer.close()

    async def get(self, source: str = "127.0.0.1") -> int:
        answer = await self.exchange(
            b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", source
        )
        return status_of(answer)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    parsed: dict[str, str] = json.loads(body)
    return parsed


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), CLIENT_TIMEOUT)


@contextlib.asynccontextmanager
async def serving(**limits: float) -> AsyncIterator[Served]:
    async def ok(_: BaseRequest, __: str | None) -> web.StreamResponse:
        return web.json_response({"ok": True})

    app = Router(fake_role().metrics, LogThrottle())
    app.add("GET", "/ok", ok)
    guard = ListenerGuard(ListenerLimits(**limits))  # type: ignore[arg-type]
    async with contextlib.AsyncExitStack() as stack:
        _, port = await listen(stack, app, "127.0.0.1", 0, "--listen", guard)
        yield Served(guard, port)


async def wait_for_count(guard: ListenerGuard, count: int) -> None:
    for _ in range(int(CLIENT_TIMEOUT / 0.01)):
        if guard.connections.total == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{guard.connections.total} connections open, expected {count}")


async def test_half_a_request_line_is_disconnected(captured: Captured) -> None:
    """A client that sends half a request line is cut off after --request-timeout, and the
    log line says so with the timeout filled in."""
    async with serving(idle_timeout=60, request_timeout=0.2) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /ok HT")
        assert await closed_by_server(reader) == b""
        writer.close()
        await wait_for_count(served.guard, 0)
    (line,) = [r for r in captured.records if getattr(r, "event", "") == "request_timeout"]
    assert line.getMessage().endswith("within 0.2s")


async def test_trickled_request_head_is_disconnected() -> None:
    """Bytes trickling in do not extend the deadline: the head must be complete in time."""
    async with serving(idle_timeout=60, request_timeout=0.3) as served:
        reader, writer = await served.connect()
        read = asyncio.ensure_future(reader.read())
        for byte in b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa":
            if read.done():
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(read, CLIENT_TIMEOUT) == b""
        writer.close()


async def test_silent_connection_is_closed() -> None:
    """A connection that never sends a byte is closed after --idle-timeout."""
    async with serving(idle_timeout=0.2, request_timeout=60) as served:
        reader, writer = await served.connect()
        assert await closed_by_server(reader) == b""
        writer.close()


async def test_idle_keep_alive_connection_is_closed() -> None:
    """After an answer, an idle keep-alive connection is closed after --idle-timeout."""
    async with serving(idle_timeout=0.2, request_timeout=60) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await closed_by_server(reader)
        assert answer.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_keep_alive_client_is_served_repeatedly() -> None:
    """A client that sends its next request in time keeps its connection."""
    async with serving(idle_timeout=1, request_timeout=1) as served:
        reader, writer = await served.connect()
        for _ in range(3):
            writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
            assert status.startswith(b"HTTP/1.1 200")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLIENT_TIMEOUT)
            await asyncio.wait_for(reader.readexactly(12), CLIENT_TIMEOUT)  # {"ok": true}
        writer.close()


async def test_a_later_request_has_its_own_deadline() -> None:
    """On a keep-alive connection the deadline of a request is counted from its own first
    byte: the timer armed for an earlier, answered request does not cut it short, and it
    is cut off once its own deadline passes."""
    async with serving(idle_timeout=60, request_timeout=0.5) as served:
        reader, writer = await served.connect()
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
        assert status.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLIENT_TIMEOUT)
        await asyncio.wait_for(reader.readexactly(12), CLIENT_TIMEOUT)
        await asyncio.sleep(0.3)
        writer.write(b"GET /ok HT")  # half a request, 0.3 s into the first one's deadline
        read = asyncio.ensure_future(reader.read())
        await asyncio.sleep(0.35)  # past the first request's deadline, not this one's
        assert not read.done()
        assert await asyncio.wait_for(read, CLIENT_TIMEOUT) == b""
        writer.close()


async def test_client_that_does_not_read_is_aborted() -> None:
    """Pipelined requests whose answers are never read do not hold the connection."""
    async with serving(idle_timeout=60, request_timeout=0.3) as served:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n" * 20000)
        await wait_for_count(served.guard, 1)
        await wait_for_count(served.guard, 0)
        writer.transport.abort()


async def test_per_client_cap_holds_and_other_clients_are_served(captured: Captured) -> None:
    """Over the per-address cap a connection gets a JSON 503; another address gets 200."""
    async with serving(max_connections=50, max_connections_per_client=5) as served:
        held = [await served.connect() for _ in range(5)]
        await wait_for_count(served.guard, 5)
        refused = await served.exchange(b"")
        assert status_of(refused) == 503
        assert body_of(refused)["Code"] == "TooManyConnections"
        assert await served.get("127.0.0.2") == 200
        for _, writer in held:
            writer.close()
        await wait_for_count(served.guard, 0)
        assert await served.get() == 200
    refusals = [r for r in captured.records if getattr(r, "event", "") == "connection_refused"]
    assert len(refusals) == 1
    assert all(r.levelno < logging.ERROR for r in captured.records)


async def test_listener_cap_holds_across_addresses() -> None:
    """The per-listener cap holds however many loopback addresses a client uses."""
    async with serving(max_connections=6, max_connections_per_client=2) as served:
        held = [await served.connect(f"127.0.0.{n}") for n in (10, 10, 11, 11, 12, 12)]
        await wait_for_count(served.guard, 6)
        assert status_of(await served.exchange(b"", "127.0.0.13")) == 503
        held[0][1].close()
        await wait_for_count(served.guard, 5)
        assert await served.get("127.0.0.14") == 200
        for _, writer in held[1:]:
            writer.close()


MALFORMED = [
    pytest.param(
        b"GET /ok HTTP/1.1\nHost: x\nAuthorization: " + SECRET.encode() + b"\n\n", 400, id="bare-lf"
    ),
    pytest.param(
        b"GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: s3cret\x00" + SECRET.encode() + b"\r\n\r\n",
        400,
        id="nul-in-header",
    ),
    pytest.param(
        b"GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: " + SECRET.encode() * 400 + b"\r\n\r\n",
        431,
        id="header-too-long",
    ),
    pytest.param(
        b"GET /ok HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + SECRET.encode()
        + b"\r\n"
        + b"X-Filler: 1\r\n" * 128
        + b"\r\n",
        431,
        id="too-many-headers",
    ),
    pytest.param(b"\x16\x03\x01" + SECRET.encode() + b"\r\n\r\n", 400, id="tls-hello"),
]


@pytest.mark.parametrize(("raw", "status"), MALFORMED)
async def test_malformed_request_gets_json_and_one_quiet_line(
    captured: Captured, raw: bytes, status: int
) -> None:
    """A parser error is answered in JSON; the log names the client, never request bytes."""
    async with serving() as served:
        answers = [await served.exchange(raw) for _ in range(20)]
    for answer in answers:
        assert status_of(answer) == status
        body = body_of(answer)
        assert set(body) == {"code", "message", "Code", "Message"}
        assert SECRET.encode() not in answer
    malformed = [r for r in captured.records if getattr(r, "event", "") == "malformed_request"]
    assert len(malformed) == 1
    assert getattr(malformed[0], "remote", "") == "127.0.0.1"
    assert all(r.levelno < logging.ERROR for r in captured.records)
    assert not any(SECRET[:12] in line for line in captured.lines)


async def test_handler_crash_is_json_500_without_the_exception_text(captured: Captured) -> None:
    """A bug in a handler is a JSON 500; the log keeps the frames but not the message."""

    async def broken(request: BaseRequest, _: str | None) -> web.StreamResponse:
        raise ValueError(request.headers["Authorization"])

    app = Router(fake_role().metrics, LogThrottle())
    app.add("GET", "/broken", broken)
    async with contextlib.AsyncExitStack() as stack:
        guard = ListenerGuard(ListenerLimits())
        _, port = await listen(stack, app, "127.0.0.1", 0, "--listen", guard)
        raw = b"GET /broken HTTP/1.1\r\nHost: x\r\nAuthorization: " + SECRET.encode() + b"\r\n\r\n"
        answer = await Served(guard, port).exchange(raw)
    assert status_of(answer) == 500
    assert body_of(answer)["Code"] == "InternalError"
    crashed = [r for r in captured.records if getattr(r, "event", "") == "request_crashed"]
    assert [getattr(r, "error", "") for r in crashed] == ["ValueError"]
    assert not any(SECRET[:12] in line for line in captured.lines)


def test_connection_counter_forgets_addresses_without_connections() -> None:
    """The per-address table only holds addresses with open connections."""
    counter = ConnectionCounter(total=3, per_client=2)
    assert counter.acquire("a") and counter.acquire("a")
    assert not counter.acquire("a")
    assert counter.acquire("b")
    assert not counter.acquire("c")
    for client in ("a", "a", "b"):
        counter.release(client)
    assert counter.total == 0 and counter.held_by("a") == 0
    assert counter._per_client == {}


async def test_accept_errors_are_logged_once_per_interval(captured: Captured) -> None:
    """Thousands of failed accepts give one line, then one line counting the rest."""
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    throttle = AcceptErrorThrottle(loop, interval=10, monotonic=clock.monotonic)
    throttle.install()
    try:
        for _ in range(5000):
            loop.call_exception_handler(
                {"message": ACCEPT_ERROR, "exception": OSError(24, "Too many open files")}
            )
        await clock.advance(10)
        loop.call_exception_handler({"message": ACCEPT_ERROR, "exception": OSError(24, "x")})
    finally:
        throttle.uninstall()
    lines = [r for r in captured.records if getattr(r, "event", "") == "accept_failed"]
    assert [getattr(r, "suppressed_since_last", None) for r in lines] == [0, 4999]
    assert loop.get_exception_handler() is None


async def test_other_loop_errors_still_reach_the_default_handler(captured: Captured) -> None:
    """Only the accept error is throttled; anything else is logged as asyncio would."""
    loop = asyncio.get_running_loop()
    throttle = AcceptErrorThrottle(loop)
    throttle.install()
    try:
        loop.call_exception_handler({"message": "something else broke"})
        loop.call_exception_handler({"message": "something else broke"})
    finally:
        throttle.uninstall()
    assert sum("something else broke" in r.getMessage() for r in captured.records) == 2


def test_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    """At start the soft RLIMIT_NOFILE is lifted to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(256, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        before, after = raise_open_file_limit()
        assert before == lowered
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after
        assert after == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        fdlimit.forget()


def test_caps_are_fitted_into_the_descriptor_limit() -> None:
    """All listeners together never accept more connections than there are descriptors."""
    limits = ListenerLimits(max_connections=1024, max_connections_per_client=512)
    assert fit_to_fd_limit(limits, 2, 1 << 20) == limits
    fitted = fit_to_fd_limit(limits, 2, 1024)
    assert fitted.max_connections * 2 <= 1024 - 64
    assert fitted.max_connections_per_client <= fitted.max_connections


def test_limits_come_from_settings(token_file: Path) -> None:
    """--idle-timeout, --request-timeout and the caps reach the config; bad values are named."""
    base = {"role_arn": "arn:aws:iam::123456789012:role/x", "token_file": str(token_file)}
    flags = {**base, "insecure_no_auth": "1"}
    config = load_config(
        {
            **flags,
            "idle_timeout": "2s",
            "request_timeout": "1500ms",
            "max_connections": "100",
            "max_connections_per_client": "10",
        },
        {},
    )
    assert config.server.limits == ListenerLimits(2.0, 1.5, 100, 10)
    assert load_config(flags, {}).server.limits == ListenerLimits()
    with pytest.raises(ConfigError) as caught:
        load_config({**flags, "max_connections": "lots", "idle_timeout": "0"}, {})
    assert "--max-connections='lots'" in str(caught.value)
    assert "--idle-timeout='0'" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config({**flags, "request_timeout": "500ms", "cold_start_wait": "800ms"}, {})
    assert "--request-timeout='500ms' must be longer than --cold-start-wait" in str(caught.value)
