"""Refusal defences on a real daemon process: 429 for failing clients, DNS-rebinding checks."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import DaemonProcess, EmulatorThread, daemon, emulator_args, http_get


@pytest.fixture
def hardened(emulator: EmulatorThread, tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    args = emulator_args(
        emulator,
        token,
        tmp_path / "auth",
        "--imds-listen",
        "127.0.0.1:0",
        "--failed-request-burst",
        "5",
        "--failed-request-rate",
        "0.1",
        "--refusal-log-budget",
        "3",
    )
    with daemon(args) as process:
        process.wait_event("exchanged")
        (started,) = process.events("imds_started")
        yield process, str(started["url"])


def request(
    url: str, method: str, path: str, headers: dict[str, str], source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """One request from a chosen loopback source address, with exactly these headers."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5, source_address=(source, 0))
    try:
        connection.putrequest(method, path, skip_host="Host" in headers)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_failing_client_gets_429_and_the_real_client_is_still_served(
    hardened: tuple[DaemonProcess, str],
) -> None:
    """Past its burst a wrong-token client gets 429 + Retry-After + JSON; the right token
    from the same address still gets 200."""
    process, _ = hardened
    statuses = [http_get(process.url, token="wrong")[0] for _ in range(5)]
    assert statuses == [403] * 5
    status, headers, body = http_get(process.url, token="wrong")
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["Code"] == "TooManyRequests"
    assert http_get(process.url, token=process.auth_token())[0] == 200
    assert process.auth_token() not in process.output


def test_refusal_log_has_a_global_budget(hardened: tuple[DaemonProcess, str]) -> None:
    """Wrong tokens from 40 loopback addresses give at most the budget's 3 refusal lines."""
    process, _ = hardened
    for n in range(2, 42):
        status, _, _ = request(
            process.url, "GET", "/v1/credentials", {"Authorization": "wrong"}, f"127.0.0.{n}"
        )
        assert status == 403
    assert http_get(process.base + "/healthz")[0] == 200  # everything before it was handled
    assert len(process.events("auth_denied")) == 3


def test_imds_refuses_rebinding(hardened: tuple[DaemonProcess, str]) -> None:
    """The IMDS listener refuses a foreign Host name and any Origin, serves its own address."""
    _, imds_url = hardened
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    status, _, body = request(imds_url, "PUT", "/latest/api/token", {**ttl, "Host": "evil.test"})
    assert status == 403
    assert json.loads(body)["Code"] == "HostNotAllowed"
    status, _, body = request(
        imds_url, "PUT", "/latest/api/token", {**ttl, "Origin": "http://evil.test"}
    )
    assert status == 403
    assert json.loads(body)["Code"] == "OriginNotAllowed"
    status, _, token = request(imds_url, "PUT", "/latest/api/token", ttl)
    assert status == 200
    assert len(token) > 40
