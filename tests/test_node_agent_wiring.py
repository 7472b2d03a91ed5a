"""The node agent's wiring, in process on the fake clock: identities created together
refresh at spread-out times, idle ones are evicted on the injected clock, and a reload
prunes only changed associations. Real peers: the STS emulator and loopback listeners."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidecar.config.node_agent import load_node_agent_config
from sidecar.node_agent import RunningAgent, running_node_agent
from sidecar.tenancy.grant import Grant
from tests.fakes import FakeClock
from tests.peers import EmulatorThread

ACCOUNTS = [("team", f"sa{i}") for i in range(20)]


def toml(accounts: list[tuple[str, str]], suffix: str = "") -> str:
    return "\n".join(
        f'[[associations]]\nnamespace = "{ns}"\nservice_account = "{sa}"\n'
        f'role_arn = "arn:aws:iam::123456789012:role/{ns}-{sa}{suffix}"\n'
        for ns, sa in accounts
    )


async def until(condition: Callable[[], bool]) -> None:
    """Wait (real time, short steps) for the exchanges with the emulator to land."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


class Node:
    def __init__(self, emulator: EmulatorThread, tmp_path: Path, **flags: str) -> None:
        self.emulator = emulator
        self.clock = FakeClock()
        self.associations = tmp_path / "associations.toml"
        self.associations.write_text(toml(ACCOUNTS))
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(emulator.issuer.jwks()))
        self.config = load_node_agent_config(
            {
                "issuer": emulator.issuer.url,
                "jwks_file": str(jwks),
                "associations": str(self.associations),
                "sts_endpoint": emulator.url,
                "listen": ["127.0.0.1:0"],
                # The cap would hold a storm on the fake clock; test_rate_cap covers it.
                "sts_rate": "1000",
                "sts_burst": "1000",
                **flags,
            },
            {},
        )

    def token(self, namespace: str, account: str) -> str:
        # Valid by the fake clock (the agent's) and by real time (the emulator's).
        now = self.clock.now().timestamp()
        ttl = time.time() - now + 3600
        return self.emulator.issuer.mint(
            f"system:serviceaccount:{namespace}:{account}", ttl=ttl, now=now
        )

    async def grant_all(self, agent: RunningAgent, accounts: list[tuple[str, str]]) -> list[Grant]:
        grants = [await agent.tenancy.grant(None, self.token(*a)) for a in accounts]
        await until(lambda: all(g.refresher.ready for g in grants))
        return grants


async def test_identities_created_together_refresh_at_spread_times(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """A storm of 20 identities gets 20 refresh times spread over the jitter window
    (--refresh-jitter, 0.2 by default), all earlier than the unjittered one."""
    node = Node(emulator, tmp_path)
    async with running_node_agent(node.config, node.clock, CollectorRegistry()) as agent:
        grants = await node.grant_all(agent, ACCOUNTS)
        offsets = []
        for grant in grants:
            snap = grant.refresher.servable()
            assert snap is not None
            offsets.append(snap.refresh_at - snap.obtained_at)
    # One hour: refresh 35 min ahead (25 min in), up to 20% of that earlier.
    assert all(1500 - 0.2 * 2100 - 1 <= offset <= 1500 + 1 for offset in offsets), offsets
    assert len({round(o) for o in offsets}) >= 15
    assert max(offsets) - min(offsets) > 120


async def test_idle_identities_are_evicted_on_the_injected_clock(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """With --identity-idle-timeout 10m, an identity used within the period stays and an
    unused one goes, by the agent's clock: no real time passes."""
    node = Node(emulator, tmp_path, identity_idle_timeout="10m")
    registry = CollectorRegistry()
    async with running_node_agent(node.config, node.clock, registry) as agent:
        used, unused = ACCOUNTS[0], ACCOUNTS[1]
        await node.grant_all(agent, [used, unused])
        for _ in range(6):
            await node.clock.advance(120)
            await agent.tenancy.grant(None, node.token(*used))
        assert len(agent.pool) == 1
        evicted = registry.get_sample_value(
            "credential_sidecar_identity_evictions_total", {"reason": "idle"}
        )
        assert evicted == 1


async def test_a_reload_prunes_only_changed_associations(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """SIGHUP's reload drops the identities whose role changed and keeps the others'
    sessions."""
    node = Node(emulator, tmp_path)
    async with running_node_agent(node.config, node.clock, CollectorRegistry()) as agent:
        grants = await node.grant_all(agent, ACCOUNTS[:3])
        node.associations.write_text(toml(ACCOUNTS[:2]) + toml(ACCOUNTS[2:3], suffix="-v2"))
        agent.reload()
        assert len(agent.pool) == 2
        again = await node.grant_all(agent, ACCOUNTS[:3])
        assert [a.refresher is g.refresher for a, g in zip(again, grants, strict=True)] == [
            True,
            True,
            False,
        ]
        assert again[2].role == "team-sa2-v2"


async def test_pods_get_no_metrics_and_prometheus_gets_per_role_gauges(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """The pod-facing listener has no /metrics (it names other tenants' namespaces and
    roles); --metrics-listen serves it, with the ready/expiry gauges per role name, and no
    credentials."""
    import aiohttp

    node = Node(emulator, tmp_path, metrics_listen="127.0.0.1:0")
    registry = CollectorRegistry()
    async with running_node_agent(node.config, node.clock, registry) as agent:
        await node.grant_all(agent, ACCOUNTS[:2])
        pods = agent.urls[0].removesuffix("/v1/credentials")
        async with aiohttp.ClientSession() as http:
            async with http.get(pods + "/metrics") as response:
                assert response.status == 404
            async with http.get(pods + "/readyz") as response:
                assert response.status == 200
            assert agent.metrics_url is not None
            async with http.get(agent.metrics_url) as response:
                assert response.status == 200
                assert "credential_sidecar_identities" in await response.text()
            observed = agent.metrics_url.removesuffix("/metrics")
            async with http.get(observed + "/v1/credentials") as response:
                assert response.status == 404
        ready = registry.get_sample_value("credential_sidecar_ready", {"role": "team-sa0"})
        expiry = registry.get_sample_value(
            "credential_sidecar_credentials_expiry_seconds", {"role": "team-sa1"}
        )
        assert ready == 1.0
        assert expiry is not None and expiry > 3000
    assert node.config.metrics_listen is not None
    assert node.config.limits.max_connections_per_client == 64
