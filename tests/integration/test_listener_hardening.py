"""A real ``serve`` process against hostile local clients: bad requests, slow and many sockets."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import DaemonProcess, EmulatorThread, emulator_args, http_get

#: Far above the small limits the daemons here run with.
CLIENT_TIMEOUT = 10.0


def start(emulator: EmulatorThread, tmp_path: Path, *extra: str) -> DaemonProcess:
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    args = emulator_args(emulator, token, tmp_path / "auth-token", *extra)
    return DaemonProcess(args)


@contextlib.contextmanager
def running(process: DaemonProcess) -> Iterator[DaemonProcess]:
    """Start the daemon; stop it (SIGTERM) at the end whatever happened."""
    try:
        yield process.start()
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()
        process.kill()


def address(process: DaemonProcess) -> tuple[str, int]:
    match = re.match(r"http://([\d.]+):(\d+)/", process.url)
    assert match, process.url
    return match.group(1), int(match.group(2))


def connect(process: DaemonProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address(process), CLIENT_TIMEOUT, (source, 0))
    return sock


def exchange(process: DaemonProcess, raw: bytes, source: str = "127.0.0.1") -> bytes:
    """Send ``raw`` and read until the daemon closes the connection."""
    with connect(process, source) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def json_error(answer: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer[:300]
    parsed: dict[str, str] = json.loads(body)
    assert set(parsed) == {"code", "message", "Code", "Message"}
    return int(head.split(b" ", 2)[1]), parsed


def leaky_requests(token: str) -> Iterator[bytes]:
    """The requests that put the auth token in the log through aiohttp's parser errors."""
    secret = token.encode()
    yield b"GET /v1/credentials HTTP/1.1\nHost: 127.0.0.1\nAuthorization: " + secret + b"\n\n"
    yield (
        b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + secret[:8]
        + b"\x00"
        + secret[8:]
        + b"\r\n\r\n"
    )
    yield (
        b"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + secret
        + b"\r\nX-Big: "
        + b"a" * 20000
        + b"\r\n\r\n"
    )


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_malformed_requests_never_log_the_auth_token(
    emulator: EmulatorThread, tmp_path: Path, log_format: str
) -> None:
    """Bare-LF lines, a NUL in Authorization, huge headers: JSON errors, token never logged."""
    process = start(emulator, tmp_path, "--log-format", log_format)
    process.start(wait_for=None)
    try:
        deadline = time.monotonic() + 20
        while "serving 1 role" not in process.output:
            assert time.monotonic() < deadline, process.output
            time.sleep(0.05)
        process.url = re.findall(r"http://127\.0\.0\.1:\d+/v1/credentials", process.output)[0]
        token = process.auth_token()
        for _ in range(30):
            for raw in leaky_requests(token):
                status, body = json_error(exchange(process, raw))
                assert status in (400, 431)
                assert token not in json.dumps(body)
        assert http_get(process.url, token)[0] == 200
    finally:
        process.stop()
    assert token not in process.output
    assert token[:16] not in process.output
    assert "Traceback" not in process.output
    # One line per interval (10 s) for 90 bad requests.
    assert 1 <= process.output.count("refused a malformed HTTP request") <= 2


def test_slow_and_idle_connections_are_closed(emulator: EmulatorThread, tmp_path: Path) -> None:
    """Half a request line and idle keep-alive sockets are closed; others are served."""
    process = start(
        emulator,
        tmp_path,
        "--idle-timeout",
        "1s",
        "--request-timeout",
        "300ms",
        "--cold-start-wait",
        "0",
    )
    with running(process):
        process.wait_event("exchanged")
        slow = [connect(process) for _ in range(50)]
        for sock in slow[:25]:
            sock.sendall(b"GET /v1/credentials HT")  # half a request line, then nothing
        assert http_get(process.url, process.auth_token())[0] == 200
        for sock in slow:
            assert sock.recv(100) == b""  # closed by the daemon, not by our timeout
            sock.close()
        kept = connect(process)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(1000).startswith(b"HTTP/1.1 200")
        rest = b""
        while chunk := kept.recv(1000):  # the idle keep-alive connection is closed
            rest += chunk
        kept.close()
        assert process.events("request_timeout")


def test_connection_caps_hold_and_other_clients_are_served(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """Per-address and per-listener caps: over them a JSON 503, under them a 200."""
    process = start(
        emulator, tmp_path, "--max-connections", "12", "--max-connections-per-client", "4"
    )
    with running(process):
        process.wait_event("exchanged")
        token = process.auth_token()
        held = [connect(process) for _ in range(4)]
        time.sleep(0.2)  # let the daemon accept them
        status, body = json_error(exchange(process, b""))
        assert (status, body["Code"]) == (503, "TooManyConnections")
        # Another local address is not blocked by the first one's connections.
        request = f"GET /v1/credentials HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n"
        answer = exchange(process, (request + "Connection: close\r\n\r\n").encode(), "127.0.0.2")
        assert answer.startswith(b"HTTP/1.1 200")
        held += [connect(process, f"127.0.0.{n}") for n in (3, 3, 4, 4, 5, 5, 6, 6)]
        time.sleep(0.2)
        status, body = json_error(exchange(process, b"", "127.0.0.7"))
        assert status == 503
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert http_get(process.url, token)[0] == 200
        assert process.events("connection_refused")


LOW_LIMIT = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'sidecar', *sys.argv[3:]])\n"
)


def with_nofile(process: DaemonProcess, soft: int, hard: int) -> DaemonProcess:
    process.args = [sys.executable, "-c", LOW_LIMIT, str(soft), str(hard), *process.args[3:]]
    return process


def test_soft_open_file_limit_is_raised(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A daemon started with a low soft RLIMIT_NOFILE lifts it to the hard limit and says so."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit is too low to lower the soft one below it")
    process = with_nofile(start(emulator, tmp_path), 256, hard)
    with running(process):
        assert process.proc is not None
        limits = Path(f"/proc/{process.proc.pid}/limits").read_text()
        soft_now = next(line for line in limits.splitlines() if "open files" in line).split()[3]
        assert soft_now == str(hard) or hard == resource.RLIM_INFINITY
        event = process.events("fd_limit_raised")[0]
        assert event["before"] == 256


def test_connection_flood_at_the_descriptor_limit_stays_quiet(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """With few descriptors, a flood is refused cheaply: no accept-error storm, still 200."""
    process = with_nofile(start(emulator, tmp_path), 150, 150)
    with running(process):
        process.wait_event("exchanged")
        token = process.auth_token()
        flood = []
        for n in range(400):
            try:
                flood.append(connect(process, f"127.0.1.{n % 200 + 1}"))
            except OSError:
                break
        time.sleep(1.5)
        for sock in flood:
            sock.close()
        time.sleep(0.3)
        assert http_get(process.url, token)[0] == 200
    assert len(process.events("accept_failed")) <= 2
    assert process.output.count("out of system resource") == 0
    assert process.events("max_connections_lowered")
