"""The HTTP endpoint in-process: status codes, headers, JSON errors, readiness, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web_request import BaseRequest

from sidecar.cache.refresher import Refresher
from sidecar.core.errors import Disposition, StsError
from sidecar.outputs.endpoint import create_router
from sidecar.outputs.http import LogThrottle
from sidecar.tenancy.auth_tokens import AuthToken
from sidecar.tenancy.static import StaticRole, StaticTenancy
from tests.fakes import FakeClock, FakeExchanger, client_of, fake_role, settle

TOKEN = "t0ken-for-tests-0123456789abcdef"


@dataclass
class Harness:
    client: TestClient[BaseRequest, None]
    refresher: Refresher
    exchanger: FakeExchanger
    clock: FakeClock
    task: asyncio.Task[None]


async def harness(
    tmp_path: Path,
    script: list[float | BaseException],
    cold_start_wait: float = 0.2,
    auth: bool = True,
) -> Harness:
    role = fake_role(script)
    clock, metrics, refresher, exchanger = role.clock, role.metrics, role.refresher, role.exchanger
    token_path = tmp_path / "auth"
    token_path.write_text(TOKEN)
    endpoint = StaticRole(refresher, AuthToken.from_file(token_path) if auth else None)
    app = create_router(StaticTenancy({"default": endpoint}, "default"), metrics, cold_start_wait)
    client = client_of(app)
    await client.start_server()
    return Harness(client, refresher, exchanger, clock, asyncio.create_task(refresher.run()))


@pytest.fixture
async def ready(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await harness(tmp_path, [3600])
    await settle()
    yield h
    h.task.cancel()
    await h.client.close()


async def test_serves_credentials(ready: Harness) -> None:
    """200, Content-Type exactly application/json, the SDK field set."""
    response = await ready.client.get("/v1/credentials", headers={"Authorization": TOKEN})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = json.loads(await response.read())
    assert set(body) >= {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"}


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "MissingAuthorization"),
        ({"Authorization": "wrong"}, 403, "AccessDenied"),
        ({"Authorization": f"Bearer {TOKEN}"}, 403, "AccessDenied"),
    ],
)
async def test_refuses_without_the_token(
    ready: Harness, headers: dict[str, str], status: int, code: str
) -> None:
    """Missing or wrong token: 401/403, JSON with both spellings, no credentials."""
    response = await ready.client.get("/v1/credentials", headers=headers)
    assert response.status == status
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(await response.read())
    assert body["code"] == body["Code"] == code
    assert body["message"] == body["Message"]
    snap = ready.refresher.servable()
    assert snap is not None
    raw = json.dumps(body)
    assert snap.credentials.access_key_id not in raw
    assert snap.credentials.secret_access_key not in raw


async def test_cold_start_then_503_with_retry_after(tmp_path: Path) -> None:
    """No credentials yet: a bounded wait, then 503 + Retry-After + JSON; readyz fails."""
    throttled = StsError("AssumeRoleWithWebIdentity", "Throttling", "x", Disposition.RETRY, 400)
    h = await harness(tmp_path, [throttled])
    try:
        request = asyncio.ensure_future(
            h.client.get("/v1/credentials", headers={"Authorization": TOKEN})
        )
        # Until the request waits on the fake clock (the refresher backs off >= 0.5 s).
        async with asyncio.timeout(5):
            while (wakeup := h.clock.next_wakeup()) is None or wakeup > 0.3:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        await h.clock.advance(0.19)
        assert not request.done(), "answered before the cold-start wait was over"
        await h.clock.advance(0.02)
        response = await request
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert response.headers["Content-Type"] == "application/json"
        assert json.loads(await response.read())["Code"] == "CredentialsUnavailable"
        ready = await h.client.get("/readyz")
        assert ready.status == 503
        text = await (await h.client.get("/metrics")).text()
        assert 'role="default",route="/v1/credentials",status="503"} 1.0' in text
        assert 'credential_sidecar_consecutive_failures{role="default"} 1.0' in text
        assert 'error_code="Throttling",result="failure",role="default"} 1.0' in text
        assert 'credential_sidecar_ready{role="default"} 0.0' in text
        assert "credential_sidecar_seconds_since_last_success{" not in text  # never succeeded
    finally:
        h.task.cancel()
        await h.client.close()


async def test_cold_start_wait_returns_first_credentials(tmp_path: Path) -> None:
    """A request arriving during the first exchange gets 200 as soon as it completes."""
    h = await harness(tmp_path, [3600], cold_start_wait=0.9)
    h.exchanger.gate = asyncio.Event()
    try:
        pending = asyncio.create_task(
            h.client.get("/v1/credentials", headers={"Authorization": TOKEN})
        )
        await asyncio.sleep(0.05)
        h.exchanger.gate.set()
        response = await pending
        assert response.status == 200
    finally:
        h.task.cancel()
        await h.client.close()


async def test_expired_credentials_are_never_served(ready: Harness) -> None:
    """Past the safety margin (STS down), 503, never the stale credentials."""
    ready.exchanger.script = [
        3600,
        StsError("AssumeRoleWithWebIdentity", "InternalFailure", "down", Disposition.RETRY, 500),
    ]
    await ready.clock.advance(3600 - 120)
    response = await ready.client.get("/v1/credentials", headers={"Authorization": TOKEN})
    assert response.status == 503
    assert (await ready.client.get("/readyz")).status == 503


async def test_health_and_readiness(ready: Harness) -> None:
    """healthz is 200; readyz is 200 with the seconds left while credentials are valid."""
    assert (await ready.client.get("/healthz")).status == 200
    response = await ready.client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["ready"] is True
    assert body["roles"]["default"]["seconds_until_expiry"] == pytest.approx(3600)


async def test_unknown_paths_and_methods_are_json(ready: Harness) -> None:
    """404 and 405 are JSON too, a 405 names the method to use, and nothing redirects."""
    paths: tuple[str, ...] = (
        "/v1/credentials/",
        "/v1/credentials/default/",
        "/v1/credentials/a/b",
        "/x",
    )
    # An encoded slash is no separator (a proxy's path rule must not be bypassed with it),
    # and a role name holding one is no role.
    paths += ("/v1/credentials%2Fdefault", "/readyz%2Fdefault", "/v1/credentials/a%2Fb")
    for path in paths:
        missing = await ready.client.get(path, allow_redirects=False)
        assert missing.status == 404, path
        assert (await missing.json())["Code"] in ("NotFound", "UnknownRole"), path
    decoded = await ready.client.get("/v1/credentials/%64efault", headers={"Authorization": TOKEN})
    assert decoded.status == 200  # the segment is decoded: %64 is "d"
    wrong = await ready.client.post("/v1/credentials", headers={"Authorization": TOKEN})
    assert wrong.status == 405
    assert wrong.headers["Content-Type"] == "application/json"
    assert wrong.headers["Allow"] == "GET"
    assert (await wrong.json())["Code"] == "MethodNotAllowed"


async def test_metrics(ready: Harness) -> None:
    """Prometheus text with exchanges, requests by status, expiry and readiness."""
    await ready.client.get("/v1/credentials", headers={"Authorization": TOKEN})
    await ready.client.get("/v1/credentials")
    text = await (await ready.client.get("/metrics")).text()
    assert (
        'credential_sidecar_sts_exchanges_total{error_code="",result="success",role="default"} 1.0'
        in text
    )
    requests = 'credential_sidecar_http_requests_total{role="default",route="/v1/credentials"'
    assert requests + ',status="200"} 1.0' in text
    assert requests + ',status="401"} 1.0' in text
    assert 'credential_sidecar_ready{role="default"} 1.0' in text
    assert 'credential_sidecar_credentials_expiry_seconds{role="default"} 3600.0' in text
    assert 'credential_sidecar_seconds_since_last_success{role="default"} 0.0' in text
    snap = ready.refresher.servable()
    assert snap is not None and snap.credentials.access_key_id not in text


async def test_insecure_no_auth_serves_anyone(tmp_path: Path) -> None:
    """With the explicit opt-out, no Authorization header is needed."""
    h = await harness(tmp_path, [3600], auth=False)
    await settle()
    try:
        assert (await h.client.get("/v1/credentials")).status == 200
    finally:
        h.task.cancel()
        await h.client.close()


async def test_refusals_are_logged_once_a_minute(
    ready: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A client looping with a wrong token produces one warning, not one per request."""
    for _ in range(20):
        await ready.client.get("/v1/credentials", headers={"Authorization": "wrong"})
    denied = [r for r in caplog.records if getattr(r, "event", "") == "auth_denied"]
    assert len(denied) == 1


def test_log_throttle_reports_what_it_dropped() -> None:
    """After the interval the next line carries the number suppressed; the table is bounded."""
    now = [0.0]
    throttle = LogThrottle(interval=60, monotonic=lambda: now[0], max_keys=3)
    assert throttle.allow("auth_denied", "default", "127.0.0.1") == 0
    assert throttle.allow("auth_denied", "default", "127.0.0.1") is None
    assert throttle.allow("auth_denied", "default", "127.0.0.1") is None
    assert throttle.allow("auth_missing", "default", "127.0.0.1") == 0  # another key
    now[0] = 61
    assert throttle.allow("auth_denied", "default", "127.0.0.1") == 2
    for n in range(5):
        throttle.allow("k", str(n))
    assert len(throttle._seen) <= 3


async def test_audit_line_keeps_only_the_start_of_a_user_agent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The opt-in audit line holds at most 200 characters of the User-Agent, nothing more."""
    role = fake_role()
    task = asyncio.create_task(role.refresher.run())
    await settle()
    (tmp_path / "auth").write_text(TOKEN)
    endpoint = StaticRole(role.refresher, AuthToken.from_file(tmp_path / "auth"))
    tenancy = StaticTenancy({"default": endpoint}, "default")
    app = create_router(tenancy, role.metrics, 0.2, audit=True)
    async with client_of(app) as client:
        headers = {"Authorization": TOKEN, "User-Agent": "aws-sdk/1 " + "x" * 4000}
        caplog.set_level("INFO", logger="sidecar.outputs.endpoint")
        response = await client.get("/v1/credentials", headers=headers)
        assert response.status == 200
    task.cancel()
    (served,) = [r for r in caplog.records if getattr(r, "event", None) == "served"]
    assert vars(served)["user_agent"] == ("aws-sdk/1 " + "x" * 4000)[:200]
