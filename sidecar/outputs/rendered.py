"""Answers rendered once per snapshot, by each output for itself, and written as bytes.

A snapshot is immutable and compared by identity, so an output keeps its rendering in the
snapshot itself: a hot endpoint answers from memory, and the bytes go when the refresher
replaces (or the pool evicts) the snapshot.

The rendering is the whole HTTP answer, status line and headers included, so serving it
is one write: no ``web.Response`` is built, no header is serialised per request (only
``Date``, once a second). That is less work than a bare aiohttp handler returning the same
body does (docs/benchmarks.md). Requests that are not HTTP/1.1 keep-alive (HTTP/1.0,
``Connection: close``) get an ordinary ``web.Response`` with the same headers and body, so
aiohttp decides the connection headers as for every other answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Generic, TypeVar, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.web_request import BaseRequest

from sidecar.cache.refresher import Snapshot

T = TypeVar("T")


class Rendered(Generic[T]):
    """One output's rendering of each snapshot, made on first use and kept in the
    snapshot (a dictionary lookup per request, gone when the snapshot is replaced)."""

    def __init__(self, render: Callable[[Snapshot], T]) -> None:
        self._render = render

    def __call__(self, snapshot: Snapshot) -> T:
        renderings = snapshot.renderings
        rendered = renderings.get(self)
        if rendered is None:
            rendered = renderings[self] = self._render(snapshot)
        return cast(T, rendered)


@dataclass(frozen=True, slots=True)
class Wire:
    """A 200 answer's bytes: everything up to the ``Date`` value, and the body."""

    head: bytes
    #: The credentials themselves: never in a repr (a traceback's locals, a debugger).
    body: bytes = field(repr=False)
    content_type: str
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def ok(cls, body: bytes, content_type: str, headers: dict[str, str]) -> Wire:
        fields = [("Content-Type", content_type), *headers.items()]
        fields += [("Content-Length", str(len(body))), ("Server", SERVER_SOFTWARE)]
        lines = "".join(f"{name}: {value}\r\n" for name, value in fields)
        head = f"HTTP/1.1 200 OK\r\n{lines}Date: ".encode("latin-1")
        return cls(head, body, content_type, tuple(headers.items()))


class _Clock:
    """The ``Date`` value, formatted once a second (aiohttp caches its own the same way)."""

    second = -1
    value = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.value = formatdate(now, usegmt=True).encode("ascii")
            cls.second = now
        return cls.value


def respond(request: BaseRequest, wire: Wire) -> web.StreamResponse:
    """``wire`` as one write for an HTTP/1.1 keep-alive request, else as a ``web.Response``."""
    if request.version == HttpVersion11 and request.keep_alive:
        return _Prerendered(wire)
    return web.Response(body=wire.body, content_type=wire.content_type, headers=dict(wire.headers))


class _Prerendered(web.StreamResponse):
    """A response aiohttp sends by calling ``prepare`` and ``write_eof``: the first writes
    the rendered bytes (and the request's ``Date``) and ends the message, the second has
    nothing left to do. The connection stays open, as the request asked."""

    def __init__(self, wire: Wire) -> None:
        super().__init__(status=200)
        self._wire = wire

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        self._eof_sent = True  # before the write: a second prepare must not send it again
        self._keep_alive = True
        wire = self._wire
        writer = request.writer
        await writer.write_eof(wire.head + _Clock.date() + b"\r\n\r\n" + wire.body)
        self._body_length = len(wire.body)
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            raise RuntimeError("a prerendered answer is complete: nothing can be added")
