"""STS through an HTTP proxy: the daemon honours HTTP(S)_PROXY and NO_PROXY for STS calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.peers import EmulatorThread, clean_aws_env, daemon, emulator_args


class ForwardingProxy:
    """A plain HTTP forward proxy on loopback that counts what it forwards."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _forward(self, request: web.Request) -> web.Response:
        target = str(request.url)  # absolute-form request line: the origin server's URL
        self.forwarded.append(f"{request.method} {target}")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "proxy-connection", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target, headers=headers, data=await request.read()
            ) as upstream,
        ):
            body = await upstream.read()
            return web.Response(
                status=upstream.status, body=body, content_type=upstream.content_type
            )

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> ForwardingProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    with ForwardingProxy() as running:
        yield running


@pytest.mark.parametrize(("no_proxy", "proxied"), [("", True), ("127.0.0.1", False)])
def test_sts_calls_honour_the_proxy_settings(
    emulator: EmulatorThread,
    proxy: ForwardingProxy,
    tmp_path: Path,
    no_proxy: str,
    proxied: bool,
) -> None:
    """With HTTP_PROXY set the exchange goes through the proxy, unless NO_PROXY lists STS."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    env = clean_aws_env(HTTP_PROXY=proxy.url, NO_PROXY=no_proxy)
    with daemon(emulator_args(emulator, token, tmp_path / "auth"), env=env) as process:
        process.wait_event("exchanged")
    if proxied:
        assert f"POST {emulator.url}/" in proxy.forwarded, proxy.forwarded
    else:
        assert proxy.forwarded == []
