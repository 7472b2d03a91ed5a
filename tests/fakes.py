"""Fakes for timing logic: a clock tests advance by hand, a scripted STS exchanger, and a
role refreshed by them."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry

from sidecar.cache.refresher import Refresher
from sidecar.config import RefreshPolicy
from sidecar.core.credentials import Credentials
from sidecar.core.metrics import Metrics
from sidecar.sources.base import TokenSource, WebIdentityToken

START_WALL = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until the loop is quiet (no real time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Monotonic and wall time that move only when ``advance`` (or ``suspend``) is called.

    ``skew`` shifts the wall clock relative to "true" time (STS's clock in tests).
    ``sleep`` and ``timeout`` run on this fake time.
    """

    def __init__(self, skew: float = 0.0) -> None:
        self._mono = 1000.0
        #: True time that passed without the monotonic clock seeing it (see ``suspend``).
        self._unseen = 0.0
        self.skew = skew
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def true_now(self) -> datetime:
        return START_WALL + timedelta(seconds=self._mono - 1000.0 + self._unseen)

    def now(self) -> datetime:
        return self.true_now() + timedelta(seconds=self.skew)

    async def sleep(self, seconds: float) -> None:
        await self.alarm(seconds)

    def alarm(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), future))
        return future

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        """Like ``asyncio.timeout``, on fake time: fires when ``advance`` passes the deadline."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), future))
        async with asyncio.timeout(None) as scope:
            live = True

            def expire(done: asyncio.Future[None]) -> None:
                if live and not done.cancelled():
                    scope.reschedule(loop.time())

            future.add_done_callback(expire)
            try:
                yield
            finally:
                live = False
                future.cancel()

    async def suspend(self, seconds: float, counted: bool = True) -> None:
        """The host sleeps for ``seconds``; the wall clock jumps.

        ``counted``: the monotonic clock counts the suspend (``CLOCK_BOOTTIME``), and
        sleepers due meanwhile all wake at resume. Otherwise (``CLOCK_MONOTONIC``) it does
        not move and no sleeper wakes.
        """
        await settle()
        if not counted:
            self._unseen += seconds
            return
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        await settle()

    def next_wakeup(self) -> float | None:
        """Seconds from now until the earliest sleeper wakes, if any is sleeping."""
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) - self._mono if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order and letting them run."""
        target = self._mono + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self._mono = target
        await settle()


def make_credentials(expiration: datetime, n: int = 1) -> Credentials:
    return Credentials(
        access_key_id=f"ASIATESTKEY{n:09d}",
        secret_access_key=f"secret-{n}-" + "s" * 30,
        session_token=f"token-{n}-" + "t" * 100,
        expiration=expiration,
        role_arn="arn:aws:iam::123456789012:role/test",
        assumed_role_arn="arn:aws:sts::123456789012:assumed-role/test/session",
    )


class NoTokens:
    """A token source for exchangers that never ask it (``FakeExchanger``)."""

    async def fetch(self) -> WebIdentityToken:
        raise AssertionError("FakeExchanger does not read tokens")


NO_TOKENS = NoTokens()


class FakeExchanger:
    """Plays a script of outcomes: a number (lifetime in s) issues credentials living that
    long by true time; an exception is raised. The last entry repeats forever."""

    def __init__(self, clock: FakeClock, script: Iterable[float | BaseException]) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls = 0
        self.dropped = 0
        self.gate: asyncio.Event | None = None

    def drop_cached(self) -> None:
        self.dropped += 1

    async def exchange(self, tokens: TokenSource) -> Credentials:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        step = self.script[min(self.calls - 1, len(self.script) - 1)]
        if isinstance(step, BaseException):
            raise step
        return make_credentials(self.clock.true_now() + timedelta(seconds=step), self.calls)


@dataclass
class FakeRole:
    """A role's refresher driven by a fake clock and a scripted exchanger (not started)."""

    refresher: Refresher
    exchanger: FakeExchanger
    clock: FakeClock
    metrics: Metrics


def fake_role(script: Iterable[float | BaseException] = (3600,), name: str = "default") -> FakeRole:
    """A one-hour role on a fresh fake clock and metrics registry, seeded jitter."""
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    exchanger = FakeExchanger(clock, script)
    refresher = Refresher(
        name, exchanger, NO_TOKENS, 3600, RefreshPolicy(), clock, metrics, random.Random(1)
    )
    metrics.watch_role(refresher.status)
    return FakeRole(refresher, exchanger, clock, metrics)
