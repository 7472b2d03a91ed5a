"""The system clock counts suspend, and its sleeps wake on that clock; the fake one agrees."""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.core.clock import SLEEP_CHUNK, SystemClock
from tests.fakes import FakeClock, settle


class Host:
    """A boot clock and a loop sleep under the test's control; it can suspend on the Nth sleep."""

    def __init__(self, suspend_on_call: int | None = None, suspend_for: float = 0.0) -> None:
        self.boot = 0.0
        self.sleeps: list[float] = []
        self._suspend_on_call = suspend_on_call
        self._suspend_for = suspend_for

    def boot_time(self) -> float:
        return self.boot

    async def loop_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.boot += seconds
        if len(self.sleeps) == self._suspend_on_call:
            # The event loop's clock stopped during the suspend; the boot clock did not.
            self.boot += self._suspend_for


async def test_sleep_ends_right_after_a_suspend_that_passed_its_deadline() -> None:
    """A 1 h sleep the host suspends through (2 h) ends one chunk after resume, not 1 h later."""
    host = Host(suspend_on_call=1, suspend_for=7200)
    clock = SystemClock(boot_time=host.boot_time, loop_sleep=host.loop_sleep)
    await clock.sleep(3600)
    assert host.sleeps == [SLEEP_CHUNK]


async def test_sleep_without_suspend_lasts_its_duration_in_chunks() -> None:
    """Without a suspend a sleep adds up to its duration, in chunks of at most SLEEP_CHUNK."""
    host = Host()
    clock = SystemClock(boot_time=host.boot_time, loop_sleep=host.loop_sleep, chunk=1.0)
    await clock.sleep(3.5)
    assert host.sleeps == [1.0, 1.0, 1.0, 0.5]
    assert host.boot == pytest.approx(3.5)


@pytest.mark.skipif(not hasattr(time, "CLOCK_BOOTTIME"), reason="Linux only")
def test_system_clock_is_the_boot_clock_on_linux() -> None:
    """On Linux, monotonic() reads CLOCK_BOOTTIME, which keeps counting while suspended."""
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    reading = SystemClock().monotonic()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= reading <= after


async def test_system_clock_timeout_raises() -> None:
    """SystemClock.timeout behaves like asyncio.timeout."""
    with pytest.raises(TimeoutError):
        async with SystemClock().timeout(0):
            await asyncio.sleep(1)


async def test_fake_timeout_fires_on_fake_time_only() -> None:
    """FakeClock.timeout expires when fake time passes its deadline, not before."""
    clock = FakeClock()
    outcome: list[str] = []

    async def body() -> None:
        try:
            async with clock.timeout(10):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("timeout")

    task = asyncio.create_task(body())
    await clock.advance(9.9)
    assert outcome == []
    await clock.advance(0.1)
    assert outcome == ["timeout"]
    await task


async def test_fake_timeout_left_early_is_harmless() -> None:
    """Leaving a FakeClock.timeout block early cancels it: later advances do nothing."""
    clock = FakeClock()
    async with clock.timeout(10):
        await settle()
    await clock.advance(20)
    assert clock.next_wakeup() is None


async def test_many_sleepers_share_one_driver() -> None:
    """Thousands of sleepers cost one timer that wakes once per chunk, not once per sleeper;
    each still wakes after its own deadline, in order."""
    host = Host()
    clock = SystemClock(boot_time=host.boot_time, loop_sleep=host.loop_sleep, chunk=1.0)
    woke: list[float] = []

    async def nap(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(seconds)

    await asyncio.gather(*(nap(3 + (n % 50) / 10) for n in range(2000)))
    assert woke == sorted(woke)
    # One nap per chunk and per distinct deadline (50), never one per sleeper (2000 x 4).
    assert len(host.sleeps) <= 3 + 50 + 5
    assert host.boot == pytest.approx(3 + 4.9)


async def test_a_shorter_sleep_is_not_held_up_by_longer_ones() -> None:
    """A short sleep started after long ones wakes the shared driver early."""
    clock = SystemClock()
    order: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        order.append(name)

    long = [asyncio.create_task(nap("long", 0.6)) for _ in range(100)]
    await settle()
    await nap("short", 0.05)
    assert order == ["short"]
    await asyncio.gather(*long)


async def test_a_cancelled_sleeper_stops_the_driver() -> None:
    """With no live sleeper left the driver task ends instead of waking every chunk."""
    clock = SystemClock()
    sleeper = asyncio.create_task(clock.sleep(3600))
    await settle()
    sleeper.cancel()
    await asyncio.gather(sleeper, return_exceptions=True)
    await asyncio.sleep(0.05)
    assert all(task.get_name() != "clock" for task in asyncio.all_tasks())


async def test_an_alarm_rings_on_the_boot_clock_and_a_cancelled_one_never() -> None:
    """SystemClock.alarm calls back once its time passed on the boot clock, holding no task
    of its own; a cancelled alarm never calls and, with nothing else waiting, lets the
    shared driver end."""
    host = Host()
    clock = SystemClock(boot_time=host.boot_time, loop_sleep=host.loop_sleep, chunk=1.0)
    rung: list[float] = []
    done = asyncio.Event()

    def ring() -> None:
        rung.append(host.boot)
        done.set()

    alarm = clock.alarm(2.5, ring)
    called_off = clock.alarm(1.0, ring)
    called_off.cancel()
    assert [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()] == [
        "clock"
    ]
    await done.wait()
    assert rung == [pytest.approx(2.5)]
    assert not alarm.pending and not called_off.pending
    await settle()
    assert all(task.get_name() != "clock" for task in asyncio.all_tasks())
