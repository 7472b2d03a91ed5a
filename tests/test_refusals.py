"""Refused requests: a global log budget, 429 for clients failing too often, the 401 hint."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web_request import BaseRequest

from sidecar.config.model import ServerConfig
from sidecar.outputs.endpoint import create_router
from sidecar.outputs.http import LogThrottle, log_refusal
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.tenancy.auth_tokens import AuthToken
from sidecar.tenancy.static import StaticRole, StaticTenancy
from tests.fakes import FakeClock, FakeExchanger, client_of, fake_role, settle

TOKEN = "t0ken-for-tests-0123456789abcdef"
DEFAULTS = ServerConfig("127.0.0.1", 0, None, False)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == name]


# --- the refusal log budget ---------------------------------------------------------------


def test_one_line_per_client_and_a_global_budget(caplog: pytest.LogCaptureFixture) -> None:
    """3,000 clients refused at once give at most `budget` lines, not one each."""
    clock = FakeClock()
    throttle = LogThrottle(monotonic=clock.monotonic, budget=10)
    for n in range(3000):
        log_refusal(throttle, "auth_denied", "refused", f"127.0.{n // 250}.{n % 250}", role="r")
    assert len(events(caplog, "auth_denied")) == 10
    assert events(caplog, "refusals_not_logged") == []


async def test_the_budget_reports_what_it_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """After the minute, one summary line says how many refusals were not logged."""
    clock = FakeClock()
    throttle = LogThrottle(monotonic=clock.monotonic, budget=5)
    for n in range(105):
        log_refusal(throttle, "auth_denied", "refused", f"127.0.0.{n}", role="r")
    await clock.advance(60)
    log_refusal(throttle, "auth_denied", "refused", "127.0.0.200", role="r")
    (summary,) = events(caplog, "refusals_not_logged")
    assert summary.count == 100  # type: ignore[attr-defined]
    assert len(events(caplog, "auth_denied")) == 6


async def test_log_throttle_keys_are_bounded_and_evict_the_oldest() -> None:
    """The per-client table never grows past max_keys; the oldest key goes first."""
    clock = FakeClock()
    throttle = LogThrottle(monotonic=clock.monotonic, max_keys=3)
    for n in range(10):
        assert throttle.allow("k", str(n)) == 0
    assert len(throttle._seen) == 3
    assert throttle.allow("k", "9") is None  # the newest is still remembered


# --- the failure limiter -------------------------------------------------------------------


async def test_limiter_allows_a_burst_then_refills_at_the_rate() -> None:
    """burst failures at once, then one per 1/rate seconds; the wait is reported."""
    clock = FakeClock()
    limiter = FailureLimiter(rate=2, burst=3, monotonic=clock.monotonic)
    assert [limiter.charge("a") for _ in range(3)] == [None, None, None]
    assert limiter.charge("a") == pytest.approx(0.5)
    assert limiter.charge("b") is None  # another client has its own bucket
    await clock.advance(0.5)
    assert limiter.charge("a") is None
    assert limiter.charge("a") == pytest.approx(0.5)
    await clock.advance(3600)
    assert [limiter.charge("a") for _ in range(4)][-1] is not None  # refills only to burst


def test_limiter_table_is_bounded() -> None:
    """10,000 client addresses never hold more than max_clients buckets."""
    limiter = FailureLimiter(rate=1, burst=1, monotonic=FakeClock().monotonic, max_clients=100)
    for n in range(10_000):
        limiter.charge(f"127.0.{n // 250}.{n % 250}")
    assert len(limiter) == 100


async def test_defaults_never_limit_sdk_retry_bursts() -> None:
    """Ten each of Java (6 at once), JS v3 (4, 1 s apart) and botocore (3, 1 s apart) clients,
    all failing from one address at the same moment, never reach the default limit."""
    clock = FakeClock()
    assert DEFAULTS.failed_request_rate is not None
    limiter = FailureLimiter(
        DEFAULTS.failed_request_rate, DEFAULTS.failed_request_burst, clock.monotonic
    )
    for second in range(4):
        java = 10 * 6 if second == 0 else 0
        js = 10
        botocore = 10 if second < 3 else 0
        for _ in range(java + js + botocore):
            assert limiter.charge("127.0.0.1") is None
        await clock.advance(1)


# --- in the HTTP server --------------------------------------------------------------------


@dataclass
class Served:
    client: TestClient[BaseRequest, None]
    clock: FakeClock
    exchanger: FakeExchanger
    task: asyncio.Task[None]


async def serve(
    tmp_path: Path, limiter_rate: float = 1, burst: int = 3, cold_start_wait: float = 0.2
) -> Served:
    role = fake_role()
    clock, metrics, refresher, exchanger = role.clock, role.metrics, role.refresher, role.exchanger
    (tmp_path / "auth").write_text(TOKEN)
    endpoint = StaticRole(refresher, AuthToken.from_file(tmp_path / "auth"))
    app = create_router(
        StaticTenancy({"default": endpoint}, "default"),
        metrics,
        cold_start_wait,
        limiter=FailureLimiter(limiter_rate, burst, clock.monotonic),
        refusals=LogThrottle(monotonic=clock.monotonic, budget=60),
    )
    client = client_of(app)
    await client.start_server()
    return Served(client, clock, exchanger, asyncio.create_task(refresher.run()))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve(tmp_path)
    await settle()
    yield s
    s.task.cancel()
    await s.client.close()


async def test_failing_client_gets_429_with_retry_after(served: Served) -> None:
    """Past its burst of failures a client gets 429, Retry-After and the JSON error shape."""
    wrong = {"Authorization": "wrong"}
    for _ in range(3):
        assert (await served.client.get("/v1/credentials", headers=wrong)).status == 403
    response = await served.client.get("/v1/credentials", headers=wrong)
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(await response.read())
    assert body["code"] == body["Code"] == "TooManyRequests"
    assert body["message"] == body["Message"]
    # Unknown paths and missing tokens are failures too.
    assert (await served.client.get("/nowhere")).status == 429
    await served.clock.advance(1)
    assert (await served.client.get("/v1/credentials", headers=wrong)).status == 403
    text = await (await served.client.get("/metrics")).text()
    assert 'route="/v1/credentials",status="429"} 1.0' in text


async def test_the_right_token_is_served_with_an_empty_bucket(served: Served) -> None:
    """An attacker on the same address cannot lock out the real client: its token still works."""
    for _ in range(20):
        await served.client.get("/v1/credentials", headers={"Authorization": "wrong"})
    response = await served.client.get("/v1/credentials", headers={"Authorization": TOKEN})
    assert response.status == 200


async def test_a_cold_start_storm_of_valid_requests_sees_no_429(tmp_path: Path) -> None:
    """300 concurrent valid requests while the first credentials are fetched: all 200."""
    s = await serve(tmp_path, limiter_rate=20, burst=100, cold_start_wait=0.9)
    s.exchanger.gate = asyncio.Event()
    try:
        pending = [
            asyncio.create_task(s.client.get("/v1/credentials", headers={"Authorization": TOKEN}))
            for _ in range(300)
        ]
        await asyncio.sleep(0.05)
        s.exchanger.gate.set()
        statuses = [r.status for r in await asyncio.gather(*pending)]
        assert statuses == [200] * 300
    finally:
        s.task.cancel()
        await s.client.close()


async def test_401_names_both_token_variables(served: Served) -> None:
    """The 401 hint names the _FILE variable and the plain one older SDKs read."""
    response = await served.client.get("/v1/credentials")
    assert response.status == 401
    message = (await response.json())["Message"]
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" in message
    assert "AWS_CONTAINER_AUTHORIZATION_TOKEN " in message
