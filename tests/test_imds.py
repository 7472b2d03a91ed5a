"""The IMDSv2 protocol in-process: session tokens, role listing, credentials, refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web_request import BaseRequest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.cache.refresher import Refresher
from sidecar.outputs.imds import SessionTokens, create_imds_router
from tests.fakes import FakeClock, client_of, fake_role, settle

ROLE = "arn:aws:iam::123456789012:role/path/build-role"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}
Client = TestClient[BaseRequest, None]


@pytest.fixture
async def imds() -> AsyncIterator[tuple[Client, Refresher]]:
    role = fake_role(name="build")
    refresher, metrics = role.refresher, role.metrics
    task = asyncio.create_task(refresher.run())
    await settle()
    client = client_of(create_imds_router(refresher, ROLE, metrics, 0.2))
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


async def raw(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """One HTTP/1.1 request with ``path`` sent exactly as given (an HTTP client would read
    ``//latest`` as a host name): (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_repeated_slashes_count_as_one(imds: tuple[Client, Refresher]) -> None:
    """Java v1/v2 and JavaScript v2 append /latest/... to an endpoint ending in a slash:
    //latest/... works for the token, the listing and the credentials."""
    client, refresher = imds
    port = client.port
    assert port is not None
    status, session_token = await raw(port, "PUT", "//latest/api/token", TTL)
    assert status == 200
    session = {"X-aws-ec2-metadata-token": session_token}
    listing = "//latest/meta-data//iam/security-credentials/"
    assert await raw(port, "GET", listing, session) == (200, "build-role")
    status, body = await raw(port, "GET", listing + "/build-role", session)
    assert status == 200
    snap = refresher.servable()
    assert snap is not None
    assert json.loads(body)["AccessKeyId"] == snap.credentials.access_key_id


async def test_role_listing_without_the_final_slash(imds: tuple[Client, Refresher]) -> None:
    """PHP's IMDS client lists roles at .../security-credentials, without the final slash."""
    client, _ = imds
    session = {"X-aws-ec2-metadata-token": await token(client)}
    response = await client.get("/latest/meta-data/iam/security-credentials", headers=session)
    assert response.status == 200
    assert await response.text() == "build-role"


async def test_wrong_method_and_unknown_path_are_json(imds: tuple[Client, Refresher]) -> None:
    """A GET of the token path is a JSON 405 naming PUT; an unknown path a JSON 404."""
    client, _ = imds
    wrong = await client.get("/latest/api/token")
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "PUT"
    assert (await wrong.json())["Code"] == "MethodNotAllowed"
    unknown = await client.get("/latest/user-data")
    assert unknown.status == 404
    assert (await unknown.json())["Code"] == "NotFound"


async def test_session_tokens_expire_on_the_injected_clock() -> None:
    """A token is valid for exactly its TTL on the monotonic clock it was given."""
    clock = FakeClock()
    tokens = SessionTokens(clock.monotonic)
    short = tokens.issue(10)
    assert tokens.valid(short)
    await clock.advance(9.99)
    assert tokens.valid(short)
    await clock.advance(0.02)
    assert not tokens.valid(short)


def test_a_token_flood_evicts_nobody() -> None:
    """30,000 token requests later, a client's earlier session token still works."""
    tokens = SessionTokens(FakeClock().monotonic)
    mine = tokens.issue(21600)
    for _ in range(30_000):
        tokens.issue(21600)
    assert tokens.valid(mine)


def test_tokens_cannot_be_forged_or_carried_over() -> None:
    """A tampered token, or one from another process's key, is refused."""
    clock = FakeClock()
    tokens = SessionTokens(clock.monotonic)
    good = tokens.issue(60)
    for i in (0, len(good) // 2, len(good) - 2):
        flipped = good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1 :]
        assert not tokens.valid(flipped)
    assert not tokens.valid(SessionTokens(clock.monotonic).issue(60))
    with pytest.raises(ValueError, match=r"1\.\.21600"):
        tokens.issue(21601)
    with pytest.raises(ValueError, match=r"1\.\.21600"):
        tokens.issue(0)


@given(st.text(max_size=200))
def test_garbage_tokens_are_refused_without_errors(garbage: str) -> None:
    """Any string that was not issued is simply invalid: no exception, no crash."""
    assert not SessionTokens(FakeClock().monotonic).valid(garbage)
