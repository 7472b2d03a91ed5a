"""Garbage collection for a process that holds many long-lived objects (the node agent).

With 5,000 identities cached the agent tracks ~440,000 objects, and every full collection
walks them all: a 0.3-0.4 s stop of the event loop every few seconds under load, which
was the whole p99 (docs/benchmarks.md). Objects that have lived through a full collection
are moved to the permanent generation (``gc.freeze``), so ordinary collections skip them;
every ``interval`` they are unfrozen, collected once (so cyclic garbage of evicted
identities is still freed) and frozen again: one pause per interval instead of one every
few seconds.
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
#: How often ``grown`` is asked whether to compact early (after a pod-start storm).
GROWTH_CHECK = 10.0


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
