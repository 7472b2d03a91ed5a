"""The credentials answer written as pre-rendered bytes, on a real listener, over raw sockets.

A keep-alive HTTP/1.1 request (what every SDK sends) gets the bytes rendered once per
snapshot plus the request's ``Date``; HTTP/1.0 and ``Connection: close`` get aiohttp's own
response with the same headers and body, and the connection handling they asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.config.model import ListenerLimits
from sidecar.outputs.endpoint import create_router, render_container_json
from sidecar.outputs.listener import ListenerGuard
from sidecar.outputs.rendered import Rendered, Wire
from sidecar.outputs.serving import listen
from sidecar.tenancy.auth_tokens import AuthToken
from sidecar.tenancy.static import StaticRole, StaticTenancy
from tests.fakes import fake_role, settle

TOKEN = "t0ken-for-prerendered-0123456789abcdef"
#: Generous bound for a local answer: far above anything this test waits for.
CLIENT_TIMEOUT = 10.0
GET = f"GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\n\r\n"


Answer = tuple[str, dict[str, str], bytes]


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP answer off the stream: status line, headers (lower-cased names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLIENT_TIMEOUT)
    status, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"header {name} sent twice"
        headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, body


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    role = fake_role()
    task = asyncio.create_task(role.refresher.run())
    await settle()
    (tmp_path / "auth").write_text(TOKEN)
    roles = {"default": StaticRole(role.refresher, AuthToken.from_file(tmp_path / "auth"))}
    router = create_router(StaticTenancy(roles, "default"), role.metrics, 0.2)
    async with contextlib.AsyncExitStack() as stack:
        _, bound = await listen(
            stack, router, "127.0.0.1", 0, "--listen", ListenerGuard(ListenerLimits())
        )
        yield bound
    task.cancel()
    await asyncio.wait([task])


async def exchange(port: int, raw: str, answers: int) -> tuple[list[Answer], bytes]:
    """Send ``raw`` at once, read ``answers`` answers, then what follows within a moment
    (b"" if the server closed the connection, else the answer to one more request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw.encode())
        got = [await read_answer(reader) for _ in range(answers)]
        if writer.transport.is_closing():
            return got, b""
        try:
            writer.write(GET.encode())
        except ConnectionError:
            return got, b""
        rest = await asyncio.wait_for(reader.read(65536), CLIENT_TIMEOUT)
        return got, rest
    finally:
        writer.close()


def assert_credentials(answer: Answer) -> None:
    status, headers, body = answer
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["content-length"] == str(len(body))
    sent = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
    assert abs(sent - time.time()) < 120  # a current date, in the HTTP format
    assert {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"} <= set(json.loads(body))


async def test_keep_alive_requests_pipelined_get_complete_answers_and_the_connection_stays(
    port: int,
) -> None:
    """Three pipelined keep-alive requests get three whole answers, and a fourth is served."""
    answers, rest = await exchange(port, GET * 3, 3)
    for answer in answers:
        assert_credentials(answer)
        assert "connection" not in answer[1]  # HTTP/1.1 keeps it open by default
    assert len({answer[2] for answer in answers}) == 1
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_connection_close_is_answered_and_closed(port: int) -> None:
    """``Connection: close`` gets the same answer with ``Connection: close``, then EOF."""
    raw = GET.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
    (answer,), rest = await exchange(port, raw, 1)
    assert_credentials(answer)
    assert answer[1]["connection"] == "close"
    assert rest == b""


async def test_http_1_0_gets_an_http_1_0_answer_and_is_closed(port: int) -> None:
    """An HTTP/1.0 client without keep-alive gets a 1.0 answer, and the connection ends."""
    raw = GET.replace("HTTP/1.1", "HTTP/1.0")
    ((status, headers, body),), rest = await exchange(port, raw, 1)
    assert status == "HTTP/1.0 200 OK"
    assert_credentials(("HTTP/1.1 200 OK", headers, body))
    assert rest == b""


async def test_prerendered_and_ordinary_answers_carry_the_same_headers(port: int) -> None:
    """The bytes rendered once say what aiohttp's own response says, but for the connection."""
    (fast,), _ = await exchange(port, GET, 1)
    (slow,), _ = await exchange(port, GET.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"), 1)
    ignored = {"date", "connection"}
    assert {k: v for k, v in fast[1].items() if k not in ignored} == {
        k: v for k, v in slow[1].items() if k not in ignored
    }
    assert fast[2] == slow[2]


async def test_no_rendering_shows_the_credentials_in_a_repr() -> None:
    """The rendered answer holds the secret key and token; neither its repr nor the
    snapshot's does (tracebacks with locals, debuggers)."""
    role = fake_role()
    task = asyncio.create_task(role.refresher.run())
    await settle()
    snap = role.refresher.servable()
    assert snap is not None
    wire = Rendered(lambda s: Wire.ok(render_container_json(s.credentials), "x", {}))(snap)
    secrets = (snap.credentials.secret_access_key, snap.credentials.session_token)
    assert all(secret.encode() in wire.body for secret in secrets)
    for text in (repr(wire), repr(snap), str(snap)):
        assert not any(secret in text for secret in secrets)
    task.cancel()
    await asyncio.wait([task])
