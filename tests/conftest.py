"""Shared fixtures: the STS emulator peer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers import EmulatorThread


@pytest.fixture(scope="session")
def sts_emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread() as emulator:
        yield emulator


@pytest.fixture
def emulator(sts_emulator: EmulatorThread) -> Iterator[EmulatorThread]:
    """The session's emulator with no faults left over from another test."""
    sts_emulator.clear_faults()
    yield sts_emulator
    sts_emulator.clear_faults()
