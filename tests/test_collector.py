"""Periodic compaction: long-lived objects frozen out of ordinary collections, and cyclic
garbage still freed at each compaction."""

from __future__ import annotations

import asyncio
import gc
import weakref

from sidecar.core.collector import Growth, compact_once_ready, compact_periodically
from tests.fakes import FakeClock, settle


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


async def test_compaction_freezes_survivors_and_frees_cycles_each_interval() -> None:
    """After a compaction the survivors are frozen; a cycle that became garbage after it is
    freed by the next one, on the injected clock; cancelling unfreezes."""
    clock = FakeClock()
    task = asyncio.create_task(compact_periodically(clock, interval=60))
    try:
        await settle()
        assert gc.get_freeze_count() > 0
        garbage = Node()
        gone = weakref.ref(garbage)
        del garbage
        gc.disable()  # only compaction may collect during the test
        try:
            await clock.advance(59)
            assert gone() is not None
            await clock.advance(1)
            await settle()
            assert gone() is None
        finally:
            gc.enable()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0


async def test_compaction_comes_early_when_told_the_process_grew() -> None:
    """``grown`` answering yes (a storm of new identities) compacts within the growth check,
    long before the interval."""
    clock = FakeClock()
    asked = 0

    def grown() -> bool:
        nonlocal asked
        asked += 1
        return asked == 3

    task = asyncio.create_task(compact_periodically(clock, interval=3600, grown=grown))
    try:
        await settle()
        before = gc.get_freeze_count()
        keep = [Node() for _ in range(1000)]
        await clock.advance(30)
        await settle()
        assert gc.get_freeze_count() > before  # compacted again at the third look, not in 1 h
        assert keep
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_sidecar_compacts_only_once_ready_and_then_after_a_moment() -> None:
    """No compaction (a full collection) while roles are not ready; the first one ``after``
    seconds once they are; and at the latest ``latest`` seconds after start."""
    clock = FakeClock()
    ready = False
    task = asyncio.create_task(
        compact_once_ready(clock, lambda: ready, interval=3600, after=1, latest=60)
    )
    try:
        await clock.advance(30)
        await settle()
        assert gc.get_freeze_count() == 0
        ready = True
        await clock.advance(1)  # noticed within a second
        await settle()
        assert gc.get_freeze_count() == 0  # not yet: a moment after readiness
        await clock.advance(1)
        await settle()
        assert gc.get_freeze_count() > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert gc.get_freeze_count() == 0

    never = asyncio.create_task(
        compact_once_ready(clock, lambda: False, interval=3600, after=1, latest=60)
    )
    try:
        await clock.advance(60)
        await settle()
        assert gc.get_freeze_count() == 0
        await clock.advance(1)
        await settle()
        assert gc.get_freeze_count() > 0  # a role that is never ready does not stop it
    finally:
        never.cancel()
        await asyncio.gather(never, return_exceptions=True)


def test_growth_compacts_on_doubling_or_once_a_storm_settled() -> None:
    """Doubling (and 500 more) triggers at once; a smaller growth (a tenth, and 100 more)
    only once nothing was added between two looks; small drifts never."""
    sizes = iter((600, 900, 1000, 1000, 1050, 1050, 1200, 1300, 1300))
    grown = Growth(lambda: next(sizes))
    looks = [grown() for _ in range(9)]
    # 600: doubled. 900, 1000: growing. 1000 again: settled, +400 -> yes. 1050 (twice):
    # settled but +50 -> no. 1200, 1300: growing. 1300 again: settled, +300 -> yes.
    assert looks == [True, False, False, True, False, False, False, False, True]
