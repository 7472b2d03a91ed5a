"""``credential-sidecar health``: the container HEALTHCHECK, exit 0 only when ready."""

from __future__ import annotations

import socket
import subprocess

import pytest

from sidecar.outputs.health import readyz_url
from tests.peers import daemon, run_sidecar


def health(listen: str) -> subprocess.CompletedProcess[str]:
    return run_sidecar("health", "--listen", listen, timeout=30)


def test_health_exits_0_once_the_daemon_is_ready() -> None:
    """Against a dev-mode daemon holding credentials, health exits 0 and prints nothing."""
    with daemon(["--dev", "--listen", "127.0.0.1:0"]) as process:
        process.wait_event("exchanged")
        result = health(process.base.removeprefix("http://"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_health_exits_1_when_nothing_listens() -> None:
    """A closed port is unhealthy: exit 1 (the only failure code HEALTHCHECK knows), one line
    naming the URL, no traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = health(f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"http://127.0.0.1:{port}/readyz" in result.stderr
    assert "Traceback" not in result.stderr


def test_health_rejects_a_bad_listen_address_with_exit_1() -> None:
    """A malformed --listen is reported (still exit 1: 2 is reserved by HEALTHCHECK)."""
    result = health("nonsense")
    assert result.returncode == 1
    assert "--listen 'nonsense'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9911", "http://127.0.0.1:9911/readyz"),
        ("0.0.0.0:9911", "http://127.0.0.1:9911/readyz"),
        ("[::]:9911", "http://[::1]:9911/readyz"),
        ("[::1]:80", "http://[::1]:80/readyz"),
        ("localhost:9911", "http://localhost:9911/readyz"),
    ],
)
def test_readyz_url_asks_loopback_for_a_wildcard_listener(listen: str, url: str) -> None:
    """A daemon listening on every address is probed on loopback, IPv6 in brackets."""
    assert readyz_url(listen) == url
