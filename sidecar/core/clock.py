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
import functools
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


class Alarm:
    """One deadline on a clock's heap: ``callback`` is called once (soon after, from the
    event loop) unless the alarm is cancelled first. A few dozen bytes: what rests on an
    alarm holds no task, no coroutine and no future (the node agent keeps thousands)."""

    __slots__ = ("_callback", "_clock", "deadline", "order")

    def __init__(
        self, deadline: float, order: int, callback: Callable[[], object], clock: AlarmHeap
    ) -> None:
        self.deadline = deadline
        self.order = order
        self._callback: Callable[[], object] | None = callback
        self._clock = clock

    def __lt__(self, other: Alarm) -> bool:
        return (self.deadline, self.order) < (other.deadline, other.order)

    @property
    def pending(self) -> bool:
        """Neither rung nor cancelled yet."""
        return self._callback is not None

    def cancel(self) -> None:
        if self._callback is not None:
            self._callback = None
            self._clock.gone()

    def ring(self) -> None:
        """Call the callback soon (once), unless cancelled: the clock's part."""
        callback = self._callback
        if callback is not None:
            self._callback = None
            self._clock.gone()
            asyncio.get_running_loop().call_soon(callback)


class AlarmHeap(Protocol):
    def gone(self) -> None: ...  # an alarm rang or was cancelled


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never jumps and counts suspend; only differences matter."""
        ...

    def now(self) -> datetime:
        """The current wall time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """``now()`` in seconds since the epoch: what the request path compares, without
        making a datetime."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``monotonic()`` has advanced by ``seconds``."""
        ...

    def alarm(self, seconds: float, callback: Callable[[], object]) -> Alarm:
        """Call ``callback`` once ``monotonic()`` has advanced by ``seconds``, unless the
        returned alarm is cancelled first."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Raise ``TimeoutError`` in the body if it takes longer than ``seconds``."""
        ...


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SystemClock:
    """The real clocks. ``boot_time`` and ``loop_sleep`` are injectable for tests.

    Every sleep and alarm waits on one shared heap of deadlines, watched by one driver task
    that wakes at most every ``chunk`` (to notice a suspend): the node agent rests
    thousands of refreshers at once, and one wake-up a second for all of them costs
    nothing, where one per sleeper cost a tenth of a core doing nothing.
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
        self._order = itertools.count()
        self._heap: _LoopHeap | None = None

    def monotonic(self) -> float:
        return self._boot_time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await self._loop_sleep(0)  # still a point where the task yields
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        alarm = self.alarm(seconds, functools.partial(_wake, woken))
        try:
            await woken
        finally:
            alarm.cancel()

    def alarm(self, seconds: float, callback: Callable[[], object]) -> Alarm:
        loop = asyncio.get_running_loop()
        heap = self._heap
        if heap is None or heap.driver.done() or heap.driver.get_loop() is not loop:
            # A new loop (tests run one per test): the old loop's alarms are gone.
            heap = self._heap = _LoopHeap(self._boot_time, self._loop_sleep, self._chunk)
        alarm = Alarm(self._boot_time() + max(0.0, seconds), next(self._order), callback, heap)
        heap.push(alarm)
        return alarm

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        # Timeouts are short (seconds): the event loop's clock is good enough for them.
        return asyncio.timeout(seconds)


class _LoopHeap:
    """One event loop's alarms, in deadline order, and the task that rings them."""

    def __init__(
        self,
        boot_time: Callable[[], float],
        loop_sleep: Callable[[float], Awaitable[None]],
        chunk: float,
    ) -> None:
        self._boot_time = boot_time
        self._loop_sleep = loop_sleep
        self._chunk = chunk
        self._alarms: list[Alarm] = []
        self._live = 0
        self._earlier = asyncio.Event()
        self._target = math.inf
        self.driver = asyncio.get_running_loop().create_task(self._drive(), name="clock")

    def push(self, alarm: Alarm) -> None:
        heapq.heappush(self._alarms, alarm)
        self._live += 1
        if alarm.deadline < self._target:
            self._earlier.set()

    def gone(self) -> None:
        self._live -= 1
        if self._live <= 0:
            self._earlier.set()  # nobody left: let the driver end now

    async def _drive(self) -> None:
        """Ring each alarm once its deadline passed on the boot clock; exit when none is left."""
        alarms = self._alarms
        while self._live > 0:
            now = self._boot_time()
            while alarms and (alarms[0].deadline <= now or not alarms[0].pending):
                heapq.heappop(alarms).ring()
            if not alarms or self._live <= 0:
                break
            self._target = alarms[0].deadline
            self._earlier.clear()
            nap = asyncio.ensure_future(self._loop_sleep(min(self._target - now, self._chunk)))
            earlier = asyncio.ensure_future(self._earlier.wait())
            try:
                await asyncio.wait({nap, earlier}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                nap.cancel()
                earlier.cancel()
        alarms.clear()
        self._target = math.inf
