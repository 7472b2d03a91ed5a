"""Identities and their refreshers: created on demand, kept while used, bounded.

The static sidecar is a pool filled at start that never evicts. The node agent's pool is
keyed by (issuer, subject, role): pods of one service account share one refresher (one
STS session), an identity unused for ``idle`` seconds is dropped, and above ``max_size``
the least recently used one goes. Creating is synchronous, so concurrent first requests
for one identity find the same refresher, whose single flight merges their exchanges: a
storm of N pods of M service accounts costs M exchanges.

The pool owns each refresher's schedule: adding starts it, evicting or closing stops it
and cancels the exchange in flight, which ``close`` waits for. A resting refresher holds
no task (one alarm on the clock): thousands of cached identities cost little memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sidecar.cache.refresher import Refresher
from sidecar.core.clock import Clock

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class Entry:
    refresher: Refresher
    last_used: float
    #: What the entry is counted under in metrics (a namespace or role, never more).
    label: str = field(default="")


class Pool(Generic[K]):
    def __init__(
        self,
        clock: Clock,
        idle: float | None = None,
        max_size: int | None = None,
        on_evict: Callable[[K, Entry, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self.idle = idle
        self.max_size = max_size
        self._entries: collections.OrderedDict[K, Entry] = collections.OrderedDict()
        self._on_evict = on_evict
        self._stopping: set[asyncio.Future[Any]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def items(self) -> Iterator[tuple[K, Entry]]:
        return iter(list(self._entries.items()))

    def get(self, key: K) -> Refresher | None:
        """The identity's refresher, marked as just used; None if it is not cached."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.last_used = self._clock.monotonic()
        self._entries.move_to_end(key)
        return entry.refresher

    def add(self, key: K, refresher: Refresher, label: str = "") -> Refresher:
        """Cache ``refresher`` for ``key`` and start refreshing it; evicts the least recently
        used identity when full. ``key`` must not be cached already."""
        if key in self._entries:
            raise KeyError(f"identity {key!r} is already cached")
        refresher.start()
        self._entries[key] = Entry(refresher, self._clock.monotonic(), label)
        while self.max_size is not None and len(self._entries) > self.max_size:
            oldest = next(iter(self._entries))
            self._evict(oldest, "size")
        return refresher

    def _evict(self, key: K, reason: str) -> None:
        entry = self._entries.pop(key)
        stopping = entry.refresher.stop()
        if stopping is not None:
            # Reaped in the background (and by close): eviction itself never waits.
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
        if self._on_evict is not None:
            self._on_evict(key, entry, reason)

    def remove(self, key: K, reason: str = "removed") -> bool:
        if key not in self._entries:
            return False
        self._evict(key, reason)
        return True

    def evict_idle(self) -> int:
        """Drop identities unused for ``idle`` seconds; how many were dropped."""
        if self.idle is None:
            return 0
        limit = self._clock.monotonic() - self.idle
        # Least recently used first: stop at the first one used since the limit.
        stale = []
        for key, entry in self._entries.items():
            if entry.last_used > limit:
                break
            stale.append(key)
        for key in stale:
            self._evict(key, "idle")
        return len(stale)

    async def run_eviction(self) -> None:
        """Evict idle identities forever (a few times per idle period); cancel to stop."""
        if self.idle is None:
            return
        while True:
            await self._clock.sleep(max(1.0, self.idle / 4))
            self.evict_idle()

    async def close(self) -> None:
        """Stop every refresher and wait for them."""
        for key in list(self._entries):
            self._evict(key, "shutdown")
        if self._stopping:
            await asyncio.wait(list(self._stopping))
