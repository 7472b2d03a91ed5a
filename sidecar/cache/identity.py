"""One identity's refresher, built from a role's configuration: the chain that exchanges
its token, under a time budget that covers the token fetch and every hop."""

from __future__ import annotations

import random
from collections.abc import Callable

from sidecar.cache.refresher import Refresher
from sidecar.config.model import RefreshPolicy, RoleConfig
from sidecar.core.clock import Clock
from sidecar.core.metrics import Metrics
from sidecar.exchange.chain import ChainExchanger
from sidecar.exchange.sts import StsClient
from sidecar.sources.base import TokenSource


def build_refresher(
    role: RoleConfig,
    tokens: TokenSource,
    token_fetch_time: float,
    sts: StsClient,
    policy: RefreshPolicy,
    clock: Clock,
    metrics: Metrics,
    name: str | None = None,
    label: str | None = None,
    rate_wait: float = 0.0,
    rng: random.Random | None = None,
    clock_skew: Callable[[], float | None] | None = None,
) -> Refresher:
    """A refresher for ``role`` fed by ``tokens``; ``rate_wait``: the longest the STS rate
    cap may delay one exchange, added to its budget; ``rng``: the jitter source, shared by
    a pool's refreshers (a ``random.Random`` is 2.5 KiB); ``clock_skew``: how STS's clock
    is read, shareable too (else a closure over ``sts`` per refresher)."""
    budget = policy.attempt_timeout * len(role.hops) + token_fetch_time + rate_wait
    return Refresher(
        name or role.name,
        ChainExchanger(role, sts, clock),
        tokens,
        role.duration,
        policy,
        clock,
        metrics,
        rng=rng,
        exchange_timeout=budget,
        clock_skew=clock_skew or (lambda: sts.clock_skew),
        label=label,
    )
