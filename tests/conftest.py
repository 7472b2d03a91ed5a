"""Shared fixtures: the STS emulator peer and moto's STS server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from tests.peers import EmulatorThread


@pytest.fixture(scope="session")
def sts_emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A readable token file (its content only matters to tests that exchange it)."""
    path = tmp_path / "token"
    path.write_text("header.payload.signature")
    return path


@pytest.fixture
def emulator(sts_emulator: EmulatorThread) -> Iterator[EmulatorThread]:
    """The session's emulator with no faults left over from another test."""
    sts_emulator.clear_faults()
    yield sts_emulator
    sts_emulator.clear_faults()


@pytest.fixture(scope="session")
def moto_sts() -> Iterator[str]:
    """moto's server on a free loopback port: a real STS implementation we did not write."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
