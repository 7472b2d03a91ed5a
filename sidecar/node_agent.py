"""The node agent: builds its parts from a ``NodeAgentConfig``, owns them, tears them down.

Start order: issuer keys (and their refresh), STS client under the rate cap, the identity
pool with its eviction, the associations watch, then the listeners; stop in reverse, so
SIGTERM stops listening first. The agent has no AWS identity of its own: every exchange
uses the token the pod presented.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.cache.identity import build_refresher
from sidecar.cache.pool import Entry, Pool
from sidecar.cache.refresher import Refresher
from sidecar.config.model import RoleConfig
from sidecar.config.node_agent import NodeAgentConfig
from sidecar.core.clock import Clock, SystemClock
from sidecar.core.collector import Growth, compact_periodically
from sidecar.core.credentials import role_name
from sidecar.core.errors import ListenError
from sidecar.core.metrics import Metrics, worst_per_role
from sidecar.exchange.rate_cap import StsRateCap
from sidecar.exchange.sts import StsClient
from sidecar.outputs.endpoint import CREDENTIALS_PATH, create_router
from sidecar.outputs.http import DEFAULT_REFUSAL_LOG_BUDGET, LogThrottle
from sidecar.outputs.link_local import add_addresses
from sidecar.outputs.listener import AcceptErrorThrottle, ListenerGuard
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.serving import base_url, listen, listener_limits
from sidecar.sources.presented import PresentedTokenSource
from sidecar.tenancy.associations_file import AssociationsFile
from sidecar.tenancy.jwks import DiscoveryKeys, JwksFileKeys, KeySource, KeySourceError
from sidecar.tenancy.pod_tokens import PodTokenVerifier
from sidecar.tenancy.pods import IdentityKey, PodTenancy

log = logging.getLogger(__name__)

#: The longest the STS rate cap may hold one exchange (a storm drains at --sts-rate); past
#: it the exchange fails as a timeout and backs off like any transient failure.
RATE_CAP_WAIT = 60.0
#: Failing requests per client: pods retrying a refused token must not flood the agent.
FAILED_REQUEST_RATE, FAILED_REQUEST_BURST = 20.0, 100


@dataclass(frozen=True)
class RunningAgent:
    urls: tuple[str, ...]
    tenancy: PodTenancy
    pool: Pool[IdentityKey]
    associations: AssociationsFile
    keys: KeySource
    #: ``http://host:port/metrics`` with --metrics-listen.
    metrics_url: str | None = None

    def reload(self) -> None:
        """SIGHUP: re-read the associations now, and retry at once every identity that has
        no credentials (an operator just fixed a trust policy)."""
        self.associations.reload()
        for _, entry in self.pool.items():
            if not entry.refresher.ready:
                entry.refresher.refresh_soon()


async def _background(stack: contextlib.AsyncExitStack, work: Awaitable[Any], name: str) -> None:
    task: asyncio.Task[Any] = asyncio.ensure_future(work)
    task.set_name(name)

    async def stop() -> None:
        task.cancel()
        await asyncio.wait([task])

    stack.push_async_callback(stop)


@contextlib.asynccontextmanager
async def running_node_agent(
    config: NodeAgentConfig,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[RunningAgent]:
    clock = clock or SystemClock()
    metrics = Metrics(registry or CollectorRegistry())
    assert config.associations is not None  # the loader insists
    tenancy: PodTenancy | None = None

    def associations_changed() -> None:
        if tenancy is not None:
            dropped = tenancy.prune()
            metrics.associations.set(len(associations.current))
            if dropped:
                log.info(
                    "dropped %d identities whose association changed",
                    dropped,
                    extra={"event": "identities_pruned", "count": dropped},
                )

    associations = AssociationsFile(config.associations, config.audience, associations_changed)
    metrics.associations.set(len(associations.current))

    async with contextlib.AsyncExitStack() as stack:
        keys: JwksFileKeys | DiscoveryKeys
        if config.jwks_file is not None:
            keys = JwksFileKeys(config.jwks_file, clock)
        else:
            http = await stack.enter_async_context(aiohttp.ClientSession(trust_env=True))
            keys = DiscoveryKeys(config.issuer, http, clock)
        stack.push_async_callback(keys.close)
        try:
            await keys.load()
        except KeySourceError as exc:
            # Not fatal: the issuer may come up later; /readyz says not ready meanwhile.
            log.error(
                "no issuer keys yet, retrying: %s", exc, extra={"event": "issuer_keys_missing"}
            )
        await _background(stack, keys.run(), "issuer-keys")
        verifier = PodTokenVerifier(keys, config.issuer, config.audience, clock)

        rate_cap = StsRateCap(config.sts_rate, config.sts_burst, clock, metrics)
        stack.push_async_callback(rate_cap.close)
        sts = await stack.enter_async_context(
            StsClient(config.sts, config.refresh.attempt_timeout, metrics, clock, rate_cap)
        )

        jitter = random.Random()  # noqa: S311 - jitter, not cryptography

        def clock_skew() -> float | None:  # one for every identity
            return sts.clock_skew

        def build(role: RoleConfig, source: PresentedTokenSource, namespace: str) -> Refresher:
            return build_refresher(
                role,
                source,
                0.0,
                sts,
                config.refresh,
                clock,
                metrics,
                name=role.name,
                label=role_name(role.role_arn),
                rate_wait=RATE_CAP_WAIT,
                rng=jitter,
                clock_skew=clock_skew,
            )

        def evicted(key: IdentityKey, entry: Entry, reason: str) -> None:
            if tenancy is not None:
                tenancy.forget(key, entry, reason)

        pool: Pool[IdentityKey] = Pool(clock, config.identity_idle, config.max_identities, evicted)
        # The per-role gauges (ready, expiry, failures), worst identity first, by role name.
        metrics.watch_roles(lambda: worst_per_role(e.refresher.status() for _, e in pool.items()))
        stack.push_async_callback(pool.close)
        await _background(stack, pool.run_eviction(), "identity-eviction")
        tenancy = PodTenancy(
            verifier,
            lambda: associations.current,
            pool,
            build,
            metrics,
            clock,
            keys_ready=lambda: keys.ready,
        )
        await _background(stack, associations.watch(clock), "associations-watch")
        compaction = compact_periodically(clock, grown=Growth(lambda: len(pool)))
        await _background(stack, compaction, "gc-compaction")

        refusals = LogThrottle(monotonic=clock.monotonic, budget=DEFAULT_REFUSAL_LOG_BUDGET)
        limiter = FailureLimiter(FAILED_REQUEST_RATE, FAILED_REQUEST_BURST, clock.monotonic)
        router = create_router(
            tenancy,
            metrics,
            config.request_wait,
            audit=config.audit_log,
            limiter=limiter,
            refusals=refusals,
            metrics_route=False,
        )
        listeners = len(config.listen) + (config.metrics_listen is not None)
        limits = listener_limits(config.limits, listeners)
        accept_errors = AcceptErrorThrottle(asyncio.get_running_loop())
        accept_errors.install()
        stack.callback(accept_errors.uninstall)
        urls = []
        for host, port in config.listen:
            try:
                bound = await listen(
                    stack, router, host, port, "--listen", ListenerGuard(limits, "node-agent")
                )
            except ListenError as exc:
                if _link_local(host):
                    exc = ListenError(
                        f"{exc}; if {host} is not on this node yet, run `credential-sidecar "
                        "link-local up` first (an init container with NET_ADMIN) or start the "
                        "agent with --setup-addresses (docs/link-local.md)"
                    )
                if _is_ipv6(host):
                    # Nodes without IPv6 are common: never a crash loop (eks-pod-identity-agent#16).
                    log.warning(
                        "not serving on %s: %s", host, exc, extra={"event": "listen_skipped"}
                    )
                    continue
                raise exc from None
            urls.append(base_url(*bound, CREDENTIALS_PATH))
        if not urls:
            raise ListenError("could not listen on any --listen address")
        metrics_url = None
        if config.metrics_listen is not None:
            observed = create_router(
                tenancy,
                metrics,
                config.request_wait,
                limiter=limiter,
                refusals=refusals,
                credentials=False,
            )
            host, port = config.metrics_listen
            bound = await listen(
                stack, observed, host, port, "--metrics-listen", ListenerGuard(limits, "metrics")
            )
            metrics_url = base_url(*bound, "/metrics")
            log.info(
                "metrics on %s", metrics_url, extra={"event": "metrics_started", "url": metrics_url}
            )
        log.info(
            "credential-sidecar %s node agent serving on %s",
            __version__,
            ", ".join(urls),
            extra={
                "event": "started",
                "urls": urls,
                "issuer": config.issuer,
                "associations": len(associations.current),
                "sts_endpoint": sts.endpoint,
            },
        )
        yield RunningAgent(tuple(urls), tenancy, pool, associations, keys, metrics_url)
        log.info("stopping: no longer accepting connections", extra={"event": "stopping"})
    log.info("stopped", extra={"event": "stopped"})


async def add_listen_addresses(config: NodeAgentConfig) -> None:
    """``--setup-addresses``: put the link-local ``--listen`` addresses on ``--interface``
    (raises ``LinkLocalError``, e.g. without CAP_NET_ADMIN)."""
    wanted = [host for host, _ in config.listen if _link_local(host)]
    if not wanted:
        return
    for change in await asyncio.to_thread(add_addresses, wanted, config.interface):
        log.info(change.describe(), extra={"event": "address_setup"})


def _link_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_link_local or address in ipaddress.ip_network("fc00::/7")


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
