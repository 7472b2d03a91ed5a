"""Periodic compaction: long-lived objects frozen out of ordinary collections, and cyclic
garbage still freed at each compaction."""

from __future__ import annotations

import asyncio
import gc
import weakref

from sidecar.core.collector import compact_periodically
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
