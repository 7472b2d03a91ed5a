"""The IMDSv2 protocol in-process: session tokens, role listing, credentials, refusals."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from sidecar.config import RefreshPolicy
from sidecar.imds import MAX_TOKENS, SessionTokens, create_imds_app
from sidecar.metrics import Metrics
from sidecar.refresher import Refresher
from tests.fakes import FakeClock, FakeExchanger, settle

ROLE = "arn:aws:iam::123456789012:role/path/build-role"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def imds() -> AsyncIterator[tuple[Client, Refresher]]:
    clock = FakeClock()
    metrics = Metrics(CollectorRegistry())
    refresher = Refresher(
        "build",
        FakeExchanger(clock, [3600]),
        3600,
        RefreshPolicy(),
        clock,
        metrics,
        random.Random(1),
    )
    task = asyncio.create_task(refresher.run())
    await settle()
    client = TestClient(
        TestServer(create_imds_app(refresher, ROLE, metrics, 0.2), host="127.0.0.1")
    )
    await client.start_server()
    yield client, refresher
    task.cancel()
    await client.close()


async def token(client: Client) -> str:
    response = await client.put("/latest/api/token", headers=TTL)
    assert response.status == 200
    return await response.text()


async def test_the_ec2_flow(imds: tuple[Client, Refresher]) -> None:
    """PUT a token, list the role (bare name), fetch credentials with Code/Type/LastUpdated."""
    client, refresher = imds
    session = {"X-aws-ec2-metadata-token": await token(client)}
    listing = await client.get("/latest/meta-data/iam/security-credentials/", headers=session)
    assert await listing.text() == "build-role"
    response = await client.get(
        "/latest/meta-data/iam/security-credentials/build-role", headers=session
    )
    body = json.loads(await response.text())
    snap = refresher.servable()
    assert snap is not None
    assert body["Code"] == "Success"
    assert body["Type"] == "AWS-HMAC"
    assert body["AccessKeyId"] == snap.credentials.access_key_id
    assert body["Token"] == snap.credentials.session_token
    assert body["Expiration"].endswith("Z")
    assert body["LastUpdated"] == "2026-11-21T12:00:00Z"


@pytest.mark.parametrize("headers", [{}, {"X-aws-ec2-metadata-token": "made-up"}])
async def test_v2_session_is_required(
    imds: tuple[Client, Refresher], headers: dict[str, str]
) -> None:
    """No (valid) session token, no credentials: IMDSv1-style GETs are refused."""
    client, _ = imds
    for path in ("", "build-role"):
        response = await client.get(
            f"/latest/meta-data/iam/security-credentials/{path}", headers=headers
        )
        assert response.status == 401


async def test_token_request_rules(imds: tuple[Client, Refresher]) -> None:
    """A proxied token request (X-Forwarded-For) is refused; the TTL must be 1..21600."""
    client, _ = imds
    proxied = await client.put("/latest/api/token", headers={**TTL, "X-Forwarded-For": "1.2.3.4"})
    assert proxied.status == 403
    for ttl in ("", "0", "21601", "x"):
        response = await client.put(
            "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        )
        assert response.status == 400


async def test_unknown_role_name(imds: tuple[Client, Refresher]) -> None:
    """Only the served role's name answers."""
    client, _ = imds
    session = {"X-aws-ec2-metadata-token": await token(client)}
    response = await client.get("/latest/meta-data/iam/security-credentials/admin", headers=session)
    assert response.status == 404


def test_session_tokens_expire_and_are_bounded() -> None:
    """Tokens live their TTL; the table never holds more than MAX_TOKENS."""
    now = [0.0]
    tokens = SessionTokens(lambda: now[0])
    short = tokens.issue(10)
    assert tokens.valid(short)
    now[0] = 11
    assert not tokens.valid(short)
    for _ in range(MAX_TOKENS + 5):
        tokens.issue(21600)
    assert len(tokens._expiry) <= MAX_TOKENS
