"""A cap on STS calls per second over the whole daemon: a token bucket callers queue on.

The node agent serves thousands of identities from one node; a pod-start storm or a cron
burst must not turn into an STS throttling storm (eks-pod-identity-agent#50). Callers
wait their turn in arrival order, on the injected clock; nobody waits forever, because
every exchange runs under its own time budget (``Refresher``), and a request for
credentials waits only a bounded time for the exchange it triggered.
"""

from __future__ import annotations

import asyncio
import collections

from sidecar.core.clock import Clock
from sidecar.core.metrics import Metrics


class StsRateCap:
    """At most ``rate`` calls per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Clock, metrics: Metrics) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the STS rate cap needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._metrics = metrics
        self._tokens = float(burst)
        self._stamp = clock.monotonic()
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._wakeup: asyncio.Task[None] | None = None

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._queue if not f.done())

    async def acquire(self) -> None:
        """Return when a call may be made; cancellable (the turn goes to the next caller)."""
        self._refill()
        if not self._queue and self._tokens >= 1:
            self._tokens -= 1
            return
        self._metrics.sts_rate_limited.inc()
        started = self._clock.monotonic()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        self._schedule()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # Cancelled in the instant its turn came: it makes no call, so the turn
                # is the next caller's.
                self._pass_turn()
            raise
        finally:
            if not turn.done():
                turn.cancel()
            self._metrics.sts_rate_limit_wait.observe(self._clock.monotonic() - started)

    def _pass_turn(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._tokens = min(float(self.burst), self._tokens + 1)

    def _schedule(self) -> None:
        if self._wakeup is None or self._wakeup.done():
            self._wakeup = asyncio.ensure_future(self._serve_queue())

    async def _serve_queue(self) -> None:
        while self._queue:
            self._refill()
            while self._queue and self._tokens >= 1:
                turn = self._queue.popleft()
                if turn.done():  # its caller gave up
                    continue
                self._tokens -= 1
                turn.set_result(None)
            if self._queue:
                await self._clock.sleep((1 - self._tokens) / self.rate)

    async def close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            await asyncio.wait([self._wakeup])
