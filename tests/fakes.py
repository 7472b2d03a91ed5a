"""Fakes for timing logic: a clock tests advance by hand, a scripted STS exchanger, and a
role refreshed by them."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp.test_utils import RawTestServer, TestClient
from aiohttp.web_request import BaseRequest
from prometheus_client import CollectorRegistry

from sidecar.cache.refresher import Refresher
from sidecar.config import RefreshPolicy
from sidecar.core.clock import Alarm
from sidecar.core.credentials import Credentials
from sidecar.core.metrics import Metrics
from sidecar.outputs.router import Router
from sidecar.sources.base import TokenSource, WebIdentityToken

START_WALL = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


async def settle(rounds: int = 50) -> None:
    """Let every ready task run until the loop is quiet (no real time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Monotonic and wall time that move only when ``advance`` (or ``suspend``) is called.

    ``skew`` shifts the wall clock relative to "true" time (STS's clock in tests).
    ``sleep``, ``alarm`` and ``timeout`` run on this fake time.
    """

    def __init__(self, skew: float = 0.0) -> None:
        self._mono = 1000.0
        #: True time that passed without the monotonic clock seeing it (see ``suspend``).
        self._unseen = 0.0
        self.skew = skew
        self._alarms: list[Alarm] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def true_now(self) -> datetime:
        return START_WALL + timedelta(seconds=self._mono - 1000.0 + self._unseen)

    def now(self) -> datetime:
        return self.true_now() + timedelta(seconds=self.skew)

    def time(self) -> float:
        return self.now().timestamp()

    def gone(self) -> None:
        """An alarm rang or was cancelled (nothing to count here)."""

    def alarm(self, seconds: float, callback: Callable[[], object]) -> Alarm:
        alarm = Alarm(self._mono + max(0.0, seconds), next(self._seq), callback, self)
        heapq.heappush(self._alarms, alarm)
        return alarm

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        alarm = self.alarm(seconds, wake)
        try:
            await future
        finally:
            alarm.cancel()

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        """Like ``asyncio.timeout``, on fake time: fires when ``advance`` passes the deadline."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as scope:
            live = True

            def expire() -> None:
                if live:  # rung, then left before this ran: nothing to expire
                    scope.reschedule(loop.time())

            alarm = self.alarm(seconds, expire)
            try:
                yield
            finally:
                live = False
                alarm.cancel()

    def _ring_until(self, target: float) -> bool:
        """Ring the earliest alarm due by ``target`` (time moves to it); False if none is."""
        if not self._alarms or self._alarms[0].deadline > target:
            return False
        alarm = heapq.heappop(self._alarms)
        self._mono = max(self._mono, alarm.deadline)
        alarm.ring()
        return True

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
        while self._ring_until(self._mono):
            pass
        await settle()

    def next_wakeup(self) -> float | None:
        """Seconds from now until the earliest sleeper wakes, if any is sleeping."""
        live = [a.deadline for a in self._alarms if a.pending]
        return min(live) - self._mono if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order and letting them run."""
        target = self._mono + seconds
        await settle()
        while self._ring_until(target):
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


def client_of(router: Router) -> TestClient[BaseRequest, None]:
    """A test client of a listener's router, served by aiohttp's low-level server on
    127.0.0.1 as ``outputs.serving.listen`` serves it (without its connection guard)."""
    return TestClient(RawTestServer(router, host="127.0.0.1"))
