"""The STS rate cap: a token bucket on the fake clock; callers served in arrival order; a
caller that gives up passes its turn on."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.metrics import Metrics
from sidecar.exchange.rate_cap import StsRateCap
from tests.fakes import FakeClock, settle


class Callers:
    """Callers of one cap, each recording the fake time it was let through."""

    def __init__(self, rate: float, burst: int) -> None:
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.cap = StsRateCap(rate, burst, self.clock, Metrics(self.registry))
        self.passed: list[tuple[str, float]] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, *names: str) -> None:
        for name in names:
            self.tasks[name] = asyncio.create_task(self._call(name))

    async def _call(self, name: str) -> None:
        await self.cap.acquire()
        self.passed.append((name, self.clock.monotonic() - 1000.0))

    def names(self) -> list[str]:
        return [name for name, _ in self.passed]

    def limited(self) -> float:
        value = self.registry.get_sample_value("credential_sidecar_sts_rate_limited_total")
        return value or 0.0

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.cap.close()


async def test_burst_passes_at_once_then_the_rate_holds() -> None:
    """``burst`` callers pass without waiting; the rest pass at ``rate`` per second, never
    faster, on the fake clock."""
    c = Callers(rate=4, burst=3)
    c.start(*(f"c{i}" for i in range(15)))
    await settle()
    assert len(c.passed) == 3 and c.limited() == 12
    for _ in range(40):
        await c.clock.advance(0.1)
    assert len(c.passed) == 15
    for count, (_, at) in enumerate(c.passed, start=1):
        # At most burst + rate * t by time t (a tiny tolerance for float steps).
        assert count <= 3 + 4 * at + 1e-6, c.passed
    # ... and the waiters were let through as soon as the bucket allowed: 12 more at 4/s.
    assert c.passed[-1][1] == pytest.approx(3.0, abs=0.11)
    await c.close()


async def test_n_calls_per_second_over_a_long_run() -> None:
    """Over 10 fake seconds a steady queue gets rate x 10 (+ burst) calls, no more."""
    c = Callers(rate=5, burst=1)
    c.start(*(f"c{i}" for i in range(200)))
    await c.clock.advance(10.001)  # a hair over: float steps of 0.2 s add up
    assert len(c.passed) == 1 + 5 * 10
    await c.close()


async def test_waiters_are_served_in_arrival_order() -> None:
    """FIFO: callers that queue pass in the order they arrived."""
    c = Callers(rate=2, burst=1)
    order = [f"c{i}" for i in range(8)]
    for name in order:
        c.start(name)
        await settle()
    await c.clock.advance(10)
    assert c.names() == order
    await c.close()


async def test_a_new_caller_does_not_jump_the_queue() -> None:
    """When the bucket refills while callers wait, a newcomer still queues behind them."""
    c = Callers(rate=1, burst=1)
    c.start("first", "waiting")
    await settle()
    await c.clock.advance(0.5)
    c.start("late")
    await c.clock.advance(0.5)  # one token: it is the waiting caller's
    assert c.names() == ["first", "waiting"]
    await c.clock.advance(1)
    assert c.names() == ["first", "waiting", "late"]
    await c.close()


async def test_a_cancelled_waiter_gives_its_turn_to_the_next() -> None:
    """A caller that gives up while waiting consumes no token: the next one passes at the
    time the cancelled one would have."""
    c = Callers(rate=1, burst=1)
    c.start("a", "b", "c")
    await settle()
    c.tasks["b"].cancel()
    await settle()
    await c.clock.advance(1)
    assert c.names() == ["a", "c"]
    assert c.passed[-1][1] == pytest.approx(1.0)
    assert c.cap.waiting == 0
    await c.close()


async def test_the_bucket_refills_to_burst_and_no_more() -> None:
    """After a long quiet time only ``burst`` callers pass at once (tokens do not pile up)."""
    c = Callers(rate=10, burst=2)
    await c.clock.advance(3600)
    c.start("a", "b", "c")
    await settle()
    assert c.names() == ["a", "b"]
    await c.clock.advance(0.1)
    assert c.names() == ["a", "b", "c"]
    await c.close()


async def test_waits_are_measured_on_the_injected_clock() -> None:
    """The wait histogram records the fake time a caller waited."""
    c = Callers(rate=1, burst=1)
    c.start("a", "b")
    await c.clock.advance(1)
    total = c.registry.get_sample_value("credential_sidecar_sts_rate_limit_wait_seconds_sum")
    assert total == pytest.approx(1.0)
    await c.close()


def test_a_cap_that_would_never_pass_is_refused() -> None:
    """A zero rate or burst is refused at construction, not a silent hang."""
    clock, metrics = FakeClock(), Metrics(CollectorRegistry())
    with pytest.raises(ValueError, match="rate"):
        StsRateCap(0, 1, clock, metrics)
    with pytest.raises(ValueError, match="burst"):
        StsRateCap(1, 0, clock, metrics)


async def test_a_caller_cancelled_as_its_turn_comes_passes_the_turn_on() -> None:
    """A caller cancelled in the same instant its turn came (its exchange timed out just
    then) makes no call: its turn goes to the next caller, not to waste."""
    c = Callers(rate=1, burst=1)
    c.start("first", "a", "b")
    await settle()

    async def time_out_a() -> None:
        await c.clock.sleep(1)
        c.tasks["a"].cancel()

    timer = asyncio.create_task(time_out_a())
    await settle()
    await c.clock.suspend(1)  # the turn and the timeout fall due together
    assert c.tasks["a"].cancelled()
    assert c.names() == ["first", "b"]
    assert c.passed[-1][1] == pytest.approx(1.0)
    await timer
    await c.close()


async def test_a_turn_nobody_waits_for_goes_back_to_the_bucket() -> None:
    """When the caller cancelled at its turn was the last one waiting, the token returns:
    the next caller passes at once."""
    c = Callers(rate=1, burst=1)
    c.start("first", "a")
    await settle()

    async def time_out_a() -> None:
        await c.clock.sleep(1)
        c.tasks["a"].cancel()

    timer = asyncio.create_task(time_out_a())
    await settle()
    await c.clock.suspend(1)
    await timer
    c.start("c")
    await settle()
    assert c.names() == ["first", "c"]
    assert c.passed[-1][1] == pytest.approx(1.0)
    await c.close()
