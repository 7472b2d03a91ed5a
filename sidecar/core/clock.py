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

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """Raise ``TimeoutError`` in the body if it takes longer than ``seconds``."""
        ...


class SystemClock:
    """The real clocks. ``boot_time`` and ``loop_sleep`` are injectable for tests."""

    def __init__(
        self,
        boot_time: Callable[[], float] | None = None,
        loop_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        chunk: float = SLEEP_CHUNK,
    ) -> None:
        self._boot_time = boot_time or _boot_clock()
        self._loop_sleep = loop_sleep
        self._chunk = chunk

    def monotonic(self) -> float:
        return self._boot_time()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        deadline = self._boot_time() + seconds
        while (left := deadline - self._boot_time()) > 0:
            await self._loop_sleep(min(left, self._chunk))
        if seconds <= 0:
            await self._loop_sleep(0)  # still a point where the task yields

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        # Timeouts are short (seconds): the event loop's clock is good enough for them.
        return asyncio.timeout(seconds)
