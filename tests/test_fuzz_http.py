"""Raw HTTP fuzzing of both listeners: no 5xx but 503, no hang, no secret logged, JSON errors.

Both apps (credentials and IMDS) run in a background event loop behind the daemon's own
listener wiring (``daemon._listen``) with small timeouts; hypothesis writes raw bytes to
them over loopback sockets: odd request lines, header counts, sizes and encodings, bare
LF, NUL and other control bytes, pipelined and truncated requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config.model import ListenerLimits
from sidecar.logs import JsonFormatter, TextFormatter
from sidecar.outputs.endpoint import create_router
from sidecar.outputs.imds import create_imds_router
from sidecar.outputs.listener import ListenerGuard
from sidecar.outputs.serving import listen
from sidecar.tenancy.auth_tokens import AuthToken
from sidecar.tenancy.static import StaticRole, StaticTenancy
from tests.fakes import fake_role, settle

AUTH_TOKEN = "fuzz-auth-token-7f3a9c0d5e2b4a61"
#: Put into header values: must never come back in a log line.
CANARY = "Cn4ryHdrV4lue"
ROLE_ARN = "arn:aws:iam::123456789012:role/build-role"
#: Replaced by the listener's own host:port, so most requests pass a Host check.
HOST = b"<host:port>"
#: Far above the listeners' timeouts: hitting it means the daemon hung.
HANG = 5.0
LIMITS = ListenerLimits(idle_timeout=0.2, request_timeout=0.2)

PATHS = {
    "credentials": [
        "/v1/credentials",
        "/v1/credentials/default",
        "/v1/credentials/nope",
        "/healthz",
        "/readyz",
        "/readyz/default",
        "/metrics",
    ],
    "imds": [
        "/latest/api/token",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/build-role",
        "/latest/meta-data/iam/security-credentials/other",
    ],
}
HEADER_NAMES = [
    "Host",
    "Authorization",
    "X-aws-ec2-metadata-token",
    "X-aws-ec2-metadata-token-ttl-seconds",
    "X-Forwarded-For",
    "User-Agent",
    "Accept",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Origin",
    "X-Custom",
]


class Capture(logging.Handler):
    """Every line the daemon would write, in both formats, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.levels: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        rendered = [JsonFormatter().format(record), TextFormatter().format(record)]
        # Handler.handle() holds the handler's lock around emit().
        self.lines += rendered
        self.levels.append(record.levelno)


class Listeners:
    """The credentials and IMDS apps served by the daemon's wiring on a private loop."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self.ports: dict[str, int] = {}
        self.secrets: list[str] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        role = fake_role()
        refresher, metrics = role.refresher, role.metrics
        task = asyncio.create_task(refresher.run())
        await settle()
        assert refresher.status().ready
        token_path = self._tmp / "auth-token"
        token_path.write_text(AUTH_TOKEN)
        endpoint = StaticRole(refresher, AuthToken.from_file(token_path))
        apps = {
            "credentials": create_router(
                StaticTenancy({"default": endpoint}, "default"), metrics, 0.05
            ),
            "imds": create_imds_router(refresher, ROLE_ARN, metrics, 0.05),
        }
        async with contextlib.AsyncExitStack() as stack:
            for name, app in apps.items():
                guard = ListenerGuard(LIMITS, name)
                _, port = await listen(stack, app, "127.0.0.1", 0, "--listen", guard)
                self.ports[name] = port
            self._ready.set()
            await self._stop.wait()
        task.cancel()
        await asyncio.wait([task])

    def __enter__(self) -> Listeners:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.setLevel(level)
    root.removeHandler(handler)


@pytest.fixture(scope="module")
def listeners(capture: Capture, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    with Listeners(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def talk(port: int, raw: bytes) -> bytes:
    """Send ``raw``; everything the server sends until it closes (or HANG passes)."""
    deadline = time.monotonic() + HANG
    received = b""
    with socket.create_connection(("127.0.0.1", port), HANG) as sock:
        with contextlib.suppress(OSError):  # the server may close before taking it all
            sock.sendall(raw)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no close within {HANG}s: the listener hung") from None
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received


def responses(data: bytes) -> Iterator[tuple[int, dict[str, str], bytes]]:
    """Split pipelined answers (each has a Content-Length: ours never stream)."""
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete answer head: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        body, data = rest[:length], rest[length:]
        assert len(body) == length, f"truncated answer body: {data[:200]!r}"
        yield status, headers, body


text_bytes = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.text(st.characters(max_codepoint=255), max_size=40).map(lambda s: s.encode("latin-1")),
    st.binary(max_size=40),
)
header_value = st.one_of(
    st.sampled_from(
        [b"127.0.0.1", AUTH_TOKEN.encode(), b"21600", b"0", b"-1", b"close", b"chunked", b"5"]
    ),
    text_bytes,
    st.integers(0, 20000).map(lambda n: b"v" * n),
).map(lambda v: v + CANARY.encode())


@st.composite
def requests(draw: st.DrawFn, listener: str) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 4 + [b"\n", b"\r"]))
    method = draw(
        st.sampled_from([b"GET"] * 4 + [b"PUT", b"POST", b"DELETE", b"OPTIONS", b"G\x00T"])
        | text_bytes
    )
    target = draw(
        st.sampled_from([p.encode() for p in PATHS[listener]])
        | text_bytes.map(lambda t: b"/" + t)
        | st.sampled_from([b"*", b"http://x/v1/credentials", b"/%00", b"/%2e%2e/", b""])
        | st.integers(0, 20000).map(lambda n: b"/" + b"a" * n)
    )
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]))
    names = st.sampled_from([n.encode() for n in HEADER_NAMES]) | text_bytes
    headers = draw(st.lists(st.tuples(names, header_value), max_size=6))
    headers += [(b"X-Pad", b"p" + CANARY.encode())] * draw(st.sampled_from([0, 0, 0, 50, 200]))
    if draw(st.sampled_from([True] * 3 + [False])):
        headers.append((b"Host", HOST))
    body = draw(st.sampled_from([b"", b"", b"x" * 10, b"5\r\nhello\r\n0\r\n\r\n"]))
    line = method + b" " + target + b" " + version + eol
    return line + b"".join(n + b": " + v + eol for n, v in headers) + eol + body


@st.composite
def conversations(draw: st.DrawFn) -> tuple[str, bytes]:
    listener = draw(st.sampled_from(["credentials", "imds"]))
    pipelined = draw(st.lists(requests(listener), min_size=1, max_size=3))
    if draw(st.booleans()):  # most clients close: keep examples fast (no idle timeout)
        pipelined[-1] = pipelined[-1].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    raw = b"".join(pipelined)
    if draw(st.sampled_from([False] * 4 + [True])):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return listener, raw


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(conversation=conversations())
def test_raw_requests_never_break_either_listener(
    listeners: Listeners, capture: Capture, conversation: tuple[str, bytes]
) -> None:
    """Whatever bytes arrive: only documented statuses, JSON errors, no hang, nothing leaked."""
    listener, raw = conversation
    port = listeners.ports[listener]
    raw = raw.replace(HOST, f"127.0.0.1:{port}".encode())
    for status, headers, body in responses(talk(port, raw)):
        assert status < 500 or status == 503, (status, body)
        if status >= 400:
            assert headers.get("content-type", "").startswith("application/json"), body
            parsed = json.loads(body)
            assert set(parsed) >= {"code", "message", "Code", "Message"}, parsed
            assert CANARY.encode() not in body
            assert AUTH_TOKEN.encode() not in body
    assert_nothing_leaked(capture)


def assert_nothing_leaked(capture: Capture) -> None:
    lines = list(capture.lines)
    assert not any(CANARY in line or AUTH_TOKEN in line for line in lines)
    assert not any("Traceback" in line for line in lines)
    assert max(capture.levels, default=0) < logging.ERROR


def test_listeners_still_serve_after_the_fuzzing(listeners: Listeners, capture: Capture) -> None:
    """After every odd input, a well-formed request is still answered with 200."""
    get = b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n"
    answer = talk(listeners.ports["credentials"], get % AUTH_TOKEN.encode())
    (status, _, body), *_ = responses(answer)
    assert status == 200 and b"SecretAccessKey" in body
    put = (
        f"PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1:{listeners.ports['imds']}\r\n"
        "X-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n"
    )
    (status, _, _), *_ = responses(talk(listeners.ports["imds"], put.encode()))
    assert status == 200
    time.sleep(LIMITS.request_timeout * 2)  # let the last deadlines fire and log
    assert_nothing_leaked(capture)


@pytest.mark.parametrize(
    "raw",
    [
        b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
        b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        b"GET /latest/meta-data/iam/security-credentials/build-role HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    ],
    ids=["bad-ttl", "proxied", "list-without-token", "credentials-without-token"],
)
def test_imds_errors_are_json(listeners: Listeners, raw: bytes) -> None:
    """The IMDS listener's refusals use the same JSON error shape as the credentials one."""
    port = listeners.ports["imds"]
    raw = raw.replace(b"Host: x", f"Host: 127.0.0.1:{port}".encode())
    (status, headers, body), *_ = responses(talk(port, raw))
    assert status in (400, 401, 403)
    assert headers["content-type"].startswith("application/json")
    assert set(json.loads(body)) == {"code", "message", "Code", "Message"}
