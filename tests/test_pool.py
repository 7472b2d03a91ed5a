"""The identity pool: create on demand, idle eviction, the LRU bound, and that an evicted
identity's refresher stops (its task and its exchange in flight), all on the fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry

from sidecar.cache.pool import Entry, Pool
from sidecar.cache.refresher import REFRESH_REQUEST_DEBOUNCE, Refresher
from sidecar.config import RefreshPolicy
from sidecar.core.metrics import Metrics
from tests.fakes import NO_TOKENS, FakeClock, FakeExchanger, settle

IDLE = 600.0


class Cluster:
    """A pool on a fake clock, its evictions recorded, refreshers made by ``make``."""

    def __init__(self, idle: float | None = IDLE, max_size: int | None = None) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics(CollectorRegistry())
        self.evicted: list[tuple[str, str]] = []
        self.exchangers: dict[str, FakeExchanger] = {}
        self.pool: Pool[str] = Pool(self.clock, idle, max_size, self._on_evict)

    def _on_evict(self, key: str, entry: Entry, reason: str) -> None:
        self.evicted.append((key, reason))

    def make(self, key: str, gate: asyncio.Event | None = None) -> Refresher:
        exchanger = FakeExchanger(self.clock, [3600])
        exchanger.gate = gate
        self.exchangers[key] = exchanger
        return Refresher(
            key,
            exchanger,
            NO_TOKENS,
            3600,
            RefreshPolicy(),
            self.clock,
            self.metrics,
            random.Random(1),
        )

    async def add(self, *keys: str) -> None:
        for key in keys:
            self.pool.add(key, self.make(key))
        await settle()


async def test_add_starts_refreshing_and_get_finds_it() -> None:
    """An added identity is refreshed at once by its own task; get returns that refresher."""
    c = Cluster()
    refresher = c.make("a")
    assert c.pool.add("a", refresher) is refresher
    await settle()
    assert c.exchangers["a"].calls == 1
    assert refresher.ready
    assert c.pool.get("a") is refresher
    assert c.pool.get("b") is None
    assert "a" in c.pool and len(c.pool) == 1
    await c.pool.close()


async def test_adding_a_cached_identity_twice_is_refused() -> None:
    """A second add of a cached key raises and leaves the first refresher (and only its
    task) in place: concurrent first requests must share one refresher."""
    c = Cluster()
    first = c.make("a")
    c.pool.add("a", first)
    tasks_before = len(asyncio.all_tasks())
    with pytest.raises(KeyError):
        c.pool.add("a", c.make("a2"))
    assert len(asyncio.all_tasks()) == tasks_before
    assert c.pool.get("a") is first
    assert len(c.pool) == 1
    await c.pool.close()


async def test_idle_identities_are_evicted_and_used_ones_kept() -> None:
    """evict_idle drops exactly the identities unused for the idle period; a get counts
    as use."""
    c = Cluster()
    await c.add("a", "b", "c")
    await c.clock.advance(IDLE / 2)
    c.pool.get("b")
    await c.clock.advance(IDLE / 2)
    assert c.pool.evict_idle() == 2
    assert sorted(c.evicted) == [("a", "idle"), ("c", "idle")]
    assert "b" in c.pool and len(c.pool) == 1
    await c.clock.advance(IDLE / 2 - 1)
    assert c.pool.evict_idle() == 0
    await c.pool.close()


async def test_eviction_runs_by_itself_on_the_clock() -> None:
    """run_eviction drops an idle identity within a quarter of the idle period after it
    went idle, and never a used one."""
    c = Cluster()
    runner = asyncio.create_task(c.pool.run_eviction())
    await c.add("idle", "busy")
    for _ in range(8):
        await c.clock.advance(IDLE / 4)
        c.pool.get("busy")
    # Idle since t=0: gone by idle + idle/4 at the latest.
    assert c.evicted == [("idle", "idle")]
    assert "busy" in c.pool
    runner.cancel()
    await asyncio.wait([runner])
    await c.pool.close()


async def test_without_idle_period_nothing_is_evicted() -> None:
    """A pool without an idle period (the static sidecar's) never evicts by age."""
    c = Cluster(idle=None)
    await c.add("a")
    await c.clock.advance(100 * IDLE)
    assert c.pool.evict_idle() == 0
    await c.pool.run_eviction()  # returns at once
    assert "a" in c.pool
    await c.pool.close()


async def test_the_size_bound_evicts_the_least_recently_used() -> None:
    """Above max_size the least recently used identity goes (use, not age of creation)."""
    c = Cluster(max_size=2)
    await c.add("a", "b")
    await c.clock.advance(1)
    c.pool.get("a")  # b is now the least recently used
    await c.add("c")
    assert c.evicted == [("b", "size")]
    assert "a" in c.pool and "c" in c.pool and len(c.pool) == 2
    await c.add("d")
    assert c.evicted[-1] == ("a", "size")
    await c.pool.close()


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def test_an_evicted_refresher_stops_with_its_exchange_in_flight() -> None:
    """Evicting stops the refresher and cancels its exchange waiting on STS, and the pool
    reaps it: no task or alarm of an evicted identity lives on."""
    c = Cluster()
    gate = asyncio.Event()
    refresher = c.make("a", gate=gate)
    c.pool.add("a", refresher)
    await settle()
    assert c.exchangers["a"].calls == 1  # waiting on the gate: in flight
    assert other_tasks()
    assert c.pool.remove("a", "association")
    await settle()
    assert not refresher.running
    assert c.evicted == [("a", "association")]
    assert not other_tasks()
    gate.set()
    await settle()
    assert refresher.servable() is None  # the cancelled exchange never landed
    assert c.clock.next_wakeup() is None
    assert not c.pool.remove("a")


async def test_idle_eviction_stops_the_refresher_and_the_identity_comes_back_fresh() -> None:
    """An idle-evicted identity's refresher stops for good; adding it again starts a new
    refresher with a new exchange."""
    c = Cluster()
    await c.add("a")
    old = dict(c.pool.items())["a"]
    old_exchanger = c.exchangers["a"]
    await c.clock.advance(IDLE)
    c.pool.evict_idle()
    await settle()
    assert not old.refresher.running
    assert c.clock.next_wakeup() is None  # its alarm is called off
    await c.add("a")
    assert c.exchangers["a"].calls == 1  # the new refresher's own first exchange
    assert dict(c.pool.items())["a"].refresher is not old.refresher
    await c.clock.advance(86400)
    assert old_exchanger.calls == 1  # the evicted one never refreshed again
    await c.pool.close()


async def test_close_stops_every_refresher_as_shutdown() -> None:
    """close stops every refresher and awaits their exchanges; evictions are reported as
    shutdown."""
    c = Cluster()
    gate = asyncio.Event()
    c.pool.add("a", c.make("a", gate=gate))
    await c.add("b")
    entries = [entry for _, entry in c.pool.items()]
    await c.pool.close()
    assert not any(entry.refresher.running for entry in entries)
    assert not other_tasks()
    assert c.clock.next_wakeup() is None
    assert sorted(c.evicted) == [("a", "shutdown"), ("b", "shutdown")]
    assert len(c.pool) == 0


async def test_resting_identities_hold_no_task() -> None:
    """Cached identities between refreshes hold no task each, only an alarm on the clock;
    each still refreshes on time (the node agent keeps thousands of them)."""
    c = Cluster()
    await c.add(*(f"id-{n}" for n in range(100)))
    assert all(e.refresher.ready for _, e in c.pool.items())
    assert not other_tasks()
    wake = c.clock.next_wakeup()
    assert wake is not None and 0 < wake <= 3600
    await c.clock.advance(3600)
    assert all(x.calls >= 2 for x in c.exchangers.values())
    assert not other_tasks()
    await c.pool.close()


async def test_a_refresh_request_wakes_a_resting_identity() -> None:
    """refresh_soon on a resting identity brings its next exchange forward to the debounce
    after its last one (at once when that has passed), without a task of its own."""
    c = Cluster()
    await c.add("a", "b")
    a, b = (dict(c.pool.items())[key].refresher for key in "ab")
    await c.clock.advance(2)
    assert a.refresh_soon()
    assert c.clock.next_wakeup() == pytest.approx(REFRESH_REQUEST_DEBOUNCE - 2)
    await c.clock.advance(REFRESH_REQUEST_DEBOUNCE - 2 - 0.1)
    assert c.exchangers["a"].calls == 1
    await c.clock.advance(0.1)
    assert c.exchangers["a"].calls == 2
    assert c.exchangers["a"].dropped == 1  # the whole chain, as SIGHUP asks
    await c.clock.advance(60)
    assert b.refresh_soon()
    await settle()
    assert c.exchangers["b"].calls == 2
    assert not other_tasks()
    await c.pool.close()
