"""Listeners without client auth: DNS-rebinding refusals (Host, Origin) and local binds only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import RawTestServer, TestClient
from aiohttp.web_request import BaseRequest

from sidecar.cache.refresher import Refresher
from sidecar.config import config_warnings, load_config
from sidecar.config.settings import is_local_address
from sidecar.core.errors import ConfigError
from sidecar.core.metrics import Metrics
from sidecar.outputs.endpoint import create_router
from sidecar.outputs.imds import create_imds_router
from sidecar.outputs.rebinding import host_allowed
from sidecar.tenancy.static import StaticRole, StaticTenancy
from tests.fakes import client_of, fake_role, settle

ROLE = "arn:aws:iam::123456789012:role/build"
TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
Client = TestClient[BaseRequest, None]
OVERRIDE = "insecure_allow_unauthenticated_network_listener"


async def _refresher() -> tuple[Refresher, Metrics, asyncio.Task[None]]:
    role = fake_role(name="build")
    task = asyncio.create_task(role.refresher.run())
    await settle()
    return role.refresher, role.metrics, task


@pytest.fixture
async def imds() -> AsyncIterator[Client]:
    refresher, metrics, task = await _refresher()
    client = client_of(create_imds_router(refresher, ROLE, metrics, 0.2))
    await client.start_server()
    yield client
    task.cancel()
    await client.close()


@pytest.fixture
async def no_auth() -> AsyncIterator[Client]:
    refresher, metrics, task = await _refresher()
    app = create_router(
        StaticTenancy({"default": StaticRole(refresher, None)}, "default"),
        metrics,
        0.2,
        check_host=True,
    )
    client = client_of(app)
    await client.start_server()
    yield client
    task.cancel()
    await client.close()


async def test_imds_refuses_a_rebound_host_name(imds: Client) -> None:
    """A Host naming another host (DNS rebinding) gets a JSON 403, no session token."""
    for host in ("attacker.example", "attacker.example:80", f"attacker.example:{imds.port}"):
        response = await imds.put("/latest/api/token", headers={**TTL, "Host": host})
        assert response.status == 403
        assert response.headers["Content-Type"] == "application/json"
        body = await response.json()
        assert body["Code"] == body["code"] == "HostNotAllowed"
        assert "DNS rebinding" in body["Message"]


async def test_imds_refuses_any_origin(imds: Client) -> None:
    """A request carrying Origin (a web page) is refused, whatever the Host."""
    response = await imds.put(
        "/latest/api/token", headers={**TTL, "Origin": f"http://127.0.0.1:{imds.port}"}
    )
    assert response.status == 403
    assert (await response.json())["Code"] == "OriginNotAllowed"


async def test_imds_accepts_its_own_address_and_localhost(imds: Client) -> None:
    """Host 127.0.0.1:PORT, localhost:PORT, or a bare name without port are served."""
    for host in (f"127.0.0.1:{imds.port}", f"localhost:{imds.port}", "127.0.0.1", "LOCALHOST"):
        response = await imds.put("/latest/api/token", headers={**TTL, "Host": host})
        assert response.status == 200, host


async def test_imds_accepts_a_request_without_host() -> None:
    """A request with no Host header passes the check (aiohttp's parser itself insists on
    Host for HTTP/1.1, so this is HTTP/1.0)."""
    refresher, metrics, task = await _refresher()
    server = RawTestServer(create_imds_router(refresher, ROLE, metrics, 0.2), host="127.0.0.1")
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"PUT /latest/api/token HTTP/1.0\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n"
            b"Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
        assert status_line.split()[1] == b"200", status_line
        writer.close()
    finally:
        task.cancel()
        await server.close()


async def test_unauthenticated_credentials_listener_checks_host_and_origin(no_auth: Client) -> None:
    """With --insecure-no-auth the credentials listener refuses rebinding too."""
    assert (await no_auth.get("/v1/credentials")).status == 200
    rebound = await no_auth.get("/v1/credentials", headers={"Host": "attacker.example"})
    assert rebound.status == 403
    assert (await rebound.json())["Code"] == "HostNotAllowed"
    web_page = await no_auth.get("/v1/credentials", headers={"Origin": "http://attacker.example"})
    assert web_page.status == 403


@pytest.mark.parametrize(
    ("host", "local", "allowed"),
    [
        ("127.0.0.1:8077", ("127.0.0.1", 8077), True),
        ("127.0.0.1:8078", ("127.0.0.1", 8077), False),
        ("127.0.0.2:8077", ("127.0.0.1", 8077), False),
        ("[::1]:8077", ("::1", 8077), True),
        ("[0:0::1]", ("::1", 8077), True),
        ("::1", ("::1", 8077), False),
        ("localhost:8077", ("::1", 8077), True),
        ("localhost.:8077", ("127.0.0.1", 8077), False),
        ("127.0.0.1:8077", ("::ffff:127.0.0.1", 8077), True),
        ("2130706433:8077", ("127.0.0.1", 8077), False),
        ("169.254.170.23", ("169.254.170.23", 80), True),
        ("127.0.0.1:80x", ("127.0.0.1", 80), False),
        ("[::1", ("::1", 80), False),
        ("", ("127.0.0.1", 80), False),
    ],
)
def test_host_matching(host: str, local: tuple[str, int], allowed: bool) -> None:
    """Only the listener's own address literal (or localhost), with its port if any."""
    assert host_allowed(host, *local) is allowed


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("169.254.170.23", True),
        ("fe80::1", True),
        ("fd00:ec2::23", True),
        ("fd00:ec2::254", True),
        ("0.0.0.0", False),  # noqa: S104 - the point of the test
        ("::", False),
        ("172.17.0.1", False),
        ("10.0.0.5", False),
        ("fd00:ec2::1", False),
    ],
)
def test_local_addresses(address: str, local: bool) -> None:
    """Loopback and link-local (and AWS's fd00:ec2::23/254) are local; the rest are not."""
    assert is_local_address(address) is local


def _env(token_file: Path) -> dict[str, str]:
    return {"AWS_ROLE_ARN": ROLE, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)}


@pytest.mark.parametrize("bind", ["0.0.0.0:8077", "[::]:8077", "172.17.0.1:8077"])
def test_imds_on_a_network_address_needs_the_override(token_file: Path, bind: str) -> None:
    """--imds-listen on 0.0.0.0, :: or a bridge gateway is a config error naming the override."""
    flags = {"imds_listen": bind, "auth_token_file": "/run/a"}
    with pytest.raises(ConfigError, match="--insecure-allow-unauthenticated-network-listener"):
        load_config(flags, _env(token_file))
    config = load_config({**flags, OVERRIDE: "1"}, _env(token_file))
    assert config.server.imds_host is not None
    assert config.server.allow_network_listener


@pytest.mark.parametrize("bind", ["127.0.0.1:8077", "169.254.170.23:80", "[fd00:ec2::23]:80"])
def test_imds_on_a_local_address_is_fine(token_file: Path, bind: str) -> None:
    """Loopback and link-local IMDS binds need no override."""
    load_config({"imds_listen": bind, "auth_token_file": "/run/a"}, _env(token_file))


def test_no_auth_on_a_network_address_needs_the_override(token_file: Path) -> None:
    """--insecure-no-auth on 0.0.0.0 is refused; with a token, 0.0.0.0 stays allowed."""
    with pytest.raises(ConfigError, match="every network of this host"):
        load_config({"insecure_no_auth": "1", "listen": "0.0.0.0:9911"}, _env(token_file))
    load_config({"auth_token_file": "/run/a", "listen": "0.0.0.0:9911"}, _env(token_file))
    load_config(
        {"insecure_no_auth": "1", "listen": "0.0.0.0:9911", OVERRIDE: "1"}, _env(token_file)
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("failed_request_rate", "-1"),
        ("failed_request_rate", "fast"),
        ("failed_request_burst", "0"),
        ("refusal_log_budget", "many"),
    ],
)
def test_limit_settings_are_validated(token_file: Path, name: str, value: str) -> None:
    """Bad limit values are config errors naming the flag."""
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError, match=flag):
        load_config({name: value, "auth_token_file": "/run/a"}, _env(token_file))


def test_limit_defaults(token_file: Path) -> None:
    """Defaults: 100 failures at once, 20 a second per client; 60 refusal lines a minute."""
    server = load_config({"auth_token_file": "/run/a"}, _env(token_file)).server
    assert (server.failed_request_burst, server.failed_request_rate) == (100, 20.0)
    assert server.refusal_log_budget == 60
    off = load_config({"failed_request_rate": "0", "auth_token_file": "/run/a"}, _env(token_file))
    assert off.server.failed_request_rate is None


def test_the_override_is_warned_about(token_file: Path) -> None:
    """Using the network-listener override is repeated as a startup warning."""
    config = load_config(
        {"imds_listen": "172.17.0.1:8077", "auth_token_file": "/run/a", OVERRIDE: "1"},
        _env(token_file),
    )
    assert any(OVERRIDE.replace("_", "-") in w for w in config_warnings(config))
