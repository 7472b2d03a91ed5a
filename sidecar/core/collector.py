"""Garbage collection for a process that holds many long-lived objects.

With 5,000 identities cached the agent tracks ~440,000 objects, and every full collection
walks them all: a 0.3-0.4 s stop of the event loop every few seconds under load, which
was the whole p99 (docs/benchmarks.md). Objects that have lived through a full collection
are moved to the permanent generation (``gc.freeze``), so ordinary collections skip them;
every ``interval`` they are unfrozen, collected once (so cyclic garbage of evicted
identities is still freed) and frozen again: one pause per interval instead of one every
few seconds.

The sidecar has the same problem at a smaller scale: ~80,000 objects after start-up
(aiobotocore's service models among them), a 30-90 ms full collection every few seconds
under load, which was its p99 at 200 connections. It compacts once its roles are ready
(``compact_once_ready``), so the pause never delays its first answers.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

from sidecar.core.clock import Clock

log = logging.getLogger(__name__)

#: Seconds between full collections of the frozen, long-lived objects.
COMPACT_INTERVAL = 300.0
#: How often ``grown`` is asked whether to compact early (after a pod-start storm): a
#: storm counts as settled after this long without a new identity.
GROWTH_CHECK = 2.0
#: The sidecar's first compaction: this long after every role is ready, and at the latest
#: this long after start even if one never is (its start-up objects exist by then anyway).
AFTER_READY = 1.0
AT_THE_LATEST = 60.0


class Growth:
    """``compact_periodically``'s ``grown`` for a population that arrives in storms (the
    node agent's identities): compact when it has doubled (and 500 more) since the last
    compaction, or once a storm has settled, when it grew by a tenth (and 100 more) and
    nothing was added since the last look. Either way the total work stays proportional to
    the population (geometric steps), and a storm that ends between two doublings does not
    leave its last objects to every ordinary full collection until the next interval."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size
        self._frozen_at = 0
        self._last_seen = -1

    def __call__(self) -> bool:
        size = self._size()
        settled, self._last_seen = size == self._last_seen, size
        more = size - self._frozen_at
        doubled = size >= 2 * self._frozen_at and more >= 500
        if doubled or (settled and more >= max(100, self._frozen_at // 10)):
            self._frozen_at = size
            return True
        return False


def compact() -> float:
    """Collect everything once, then freeze the survivors; the seconds it took."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def compact_periodically(
    clock: Clock,
    interval: float = COMPACT_INTERVAL,
    grown: Callable[[], bool] = lambda: False,
) -> None:
    """Run ``compact`` now and every ``interval`` seconds until cancelled; sooner when
    ``grown()`` says many long-lived objects arrived since (it is asked every few seconds)."""
    try:
        while True:
            took = compact()
            log.debug(
                "collected and froze %d long-lived objects in %.3fs",
                gc.get_freeze_count(),
                took,
                extra={"event": "gc_compacted", "frozen": gc.get_freeze_count()},
            )
            due = clock.monotonic() + interval
            while (left := due - clock.monotonic()) > 0 and not grown():
                await clock.sleep(min(left, GROWTH_CHECK))
    finally:
        gc.unfreeze()  # whoever runs next in this process starts from normal collection


async def compact_once_ready(
    clock: Clock,
    ready: Callable[[], bool],
    interval: float = COMPACT_INTERVAL,
    after: float = AFTER_READY,
    latest: float = AT_THE_LATEST,
) -> None:
    """``compact_periodically``, starting ``after`` seconds once ``ready()`` (asked every
    second), or ``latest`` seconds after start: the first full collection must not hold up
    the first answers or ``/readyz``."""
    deadline = clock.monotonic() + latest
    while not ready() and clock.monotonic() < deadline:
        await clock.sleep(min(1.0, max(0.0, deadline - clock.monotonic())))
    await clock.sleep(after)
    await compact_periodically(clock, interval)
