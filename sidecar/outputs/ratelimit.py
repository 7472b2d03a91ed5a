"""A per-client rate limit on failing requests (answered 429 once a client's bucket is empty).

Only failures spend tokens: a request that presents the right auth token is served even when
its address's bucket is empty, because every process on a host shares ``127.0.0.1`` and an
attacker there must not lock out the real client. The limit makes a flood of wrong-token
or unknown-path requests cheap to answer, and bounds how fast anyone can guess.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: Client addresses tracked at once; the least recently seen is forgotten first. A forgotten
#: client restarts with a full bucket: no better than a fresh address, so eviction gains an
#: attacker nothing they could not get by using another loopback address.
MAX_CLIENTS = 4096


class FailureLimiter:
    """A token bucket per client address: ``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        monotonic: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be > 0, burst and max_clients >= 1")
        self.rate = rate
        self.burst = burst
        self._monotonic = monotonic
        self._max_clients = max_clients
        #: client -> (tokens left, when last updated); most recently charged last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def charge(self, client: str) -> float | None:
        """Spend one token for a failed request: None if there was one, else the seconds
        until the next one (for ``Retry-After``)."""
        now = self._monotonic()
        state = self._buckets.pop(client, None)
        if state is None:
            tokens = float(self.burst)
            while len(self._buckets) >= self._max_clients:
                self._buckets.popitem(last=False)
        else:
            tokens = min(float(self.burst), state[0] + (now - state[1]) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            return None
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate
