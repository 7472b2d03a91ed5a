"""Time, injected: the refresher schedules on a clock that counts suspend and stamps with wall time.

``monotonic()`` never jumps backwards and, on Linux, keeps counting while the host is
suspended (``CLOCK_BOOTTIME``): ``time.monotonic`` stops during suspend, so after a laptop
resumes it would still believe expired credentials had an hour left. Elsewhere it falls back
to ``time.monotonic``; the refresher also checks STS's absolute ``Expiration`` against the
wall clock, so neither clock alone can make it serve expired credentials.

Waits and timeouts go through the clock too, so tests advance a fake clock instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Protocol

#: The longest real sleep between looks at the clock: asyncio's timers run on
#: ``CLOCK_MONOTONIC``, which stops during suspend, so a long sleep is cut into chunks and a
#: deadline that passed while suspended is noticed this soon after resume.
SLEEP_CHUNK = 1.0


def _boot_clock() -> Callable[[], float]:
    """``CLOCK_BOOTTIME`` where the platform has it (Linux), else ``time.monotonic``."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:
        return time.monotonic
    try:
        time.clock_gettime(clock_id)
    except OSError:  # a kernel or sandbox without it
        return time.monotonic
    return lambda: time.clock_gettime(clock_id)


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps and counts suspend; only differences matter."""
        ...

    def now(self) -> datetime:
        """The current wall time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``monotonic()`` has advanced by ``seconds``."""
        ...

    def alarm(self, seconds: float) -> asyncio.Future[None]:
        """A future that completes once ``monotonic()`` has advanced by ``seconds``; cancel
        it to call the alarm off. Lighter than a task in ``sleep``: what rests on it holds
        no coroutine (the node agent keeps thousands of resting refreshers)."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Raise ``TimeoutError`` in the body if it takes longer than ``seconds``."""
        ...


class SystemClock:
    """The real clocks. ``boot_time`` and ``loop_sleep`` are injectable for tests.

    Every sleeper waits on one shared heap of deadlines, watched by one driver task that
    wakes at most every ``chunk`` (to notice a suspend): the node agent sleeps thousands of
    refreshers at once, and one wake-up a second for all of them costs nothing, where one
    per sleeper cost a tenth of a core doing nothing.
    """

    def __init__(
        self,
        boot_time: Callable[[], float] | None = None,
        loop_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        chunk: float = SLEEP_CHUNK,
    ) -> None:
        self._boot_time = boot_time or _boot_clock()
        self._loop_sleep = loop_sleep
        self._chunk = chunk
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._live = 0
        self._driver: asyncio.Task[None] | None = None
        self._earlier = asyncio.Event()
        self._target = math.inf

    def monotonic(self) -> float:
        return self._boot_time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await self._loop_sleep(0)  # still a point where the task yields
            return
        await self.alarm(seconds)

    def alarm(self, seconds: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        driver = self._driver
        if driver is None or driver.done() or driver.get_loop() is not loop:
            # A new loop (tests run one per test): the old loop's sleepers are gone.
            self._sleepers, self._live, self._target = [], 0, math.inf
            self._earlier = asyncio.Event()
            self._driver = driver = loop.create_task(self._drive(), name="clock")
        deadline = self._boot_time() + seconds
        woken: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), woken))
        self._live += 1
        woken.add_done_callback(self._gone)
        if deadline < self._target:
            self._earlier.set()
        return woken

    def _gone(self, _: asyncio.Future[None]) -> None:
        self._live -= 1
        if self._live <= 0:
            self._earlier.set()  # nobody left: let the driver end now

    async def _drive(self) -> None:
        """Wake each sleeper once its deadline passed on the boot clock; exit when none is left."""
        sleepers = self._sleepers
        while self._live > 0:
            now = self._boot_time()
            while sleepers and (sleepers[0][0] <= now or sleepers[0][2].done()):
                woken = heapq.heappop(sleepers)[2]
                if not woken.done():
                    woken.set_result(None)
            if not sleepers or self._live <= 0:
                break
            self._target = sleepers[0][0]
            self._earlier.clear()
            nap = asyncio.ensure_future(self._loop_sleep(min(self._target - now, self._chunk)))
            earlier = asyncio.ensure_future(self._earlier.wait())
            try:
                await asyncio.wait({nap, earlier}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                nap.cancel()
                earlier.cancel()
        sleepers.clear()
        self._target = math.inf

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        # Timeouts are short (seconds): the event loop's clock is good enough for them.
        return asyncio.timeout(seconds)
