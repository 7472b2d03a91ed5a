"""The credentials-file sink's task, on a fake clock: every new snapshot written once, a
failed write logged and retried at the next refresh, the file cleared on the way out."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sidecar.config.model import CredentialsFileConfig
from sidecar.core.credentials import Credentials
from sidecar.core.errors import CredentialsFileError
from sidecar.outputs.credentials_file import CredentialsFile
from sidecar.outputs.file_sink import credentials_file_sink, keep_current
from tests.fakes import fake_role, settle


class RecordingFile(CredentialsFile):
    """A CredentialsFile that records what it is asked to write, failing while told to."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "ci")
        self.written: list[str] = []
        self.fail = False

    async def write_async(self, creds: Credentials) -> None:
        if self.fail:
            raise CredentialsFileError(f"credentials file {self.path}: cannot be replaced")
        self.written.append(creds.access_key_id)


async def test_every_new_snapshot_is_written_once(tmp_path: Path) -> None:
    """The first credentials and each refresh's are written, each exactly once."""
    role = fake_role([3600])
    sink = RecordingFile(tmp_path / "credentials")
    refresher_task = asyncio.create_task(role.refresher.run())
    sink_task = asyncio.create_task(keep_current(role.refresher, sink))
    try:
        await settle()
        assert len(sink.written) == 1
        await role.clock.advance(10)
        await settle()
        assert len(sink.written) == 1  # nothing new: nothing written
        assert role.refresher.refresh_soon()
        await role.clock.advance(1)
        await settle()
        assert len(sink.written) == 2
        assert sink.written[0] != sink.written[1]
    finally:
        for task in (sink_task, refresher_task):
            task.cancel()
        await asyncio.wait([sink_task, refresher_task])


async def test_a_failed_write_is_logged_and_retried_at_the_next_refresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing write logs one error (no secret) and the task goes on; the next snapshot
    is written once the file can be written again."""
    role = fake_role([3600])
    sink = RecordingFile(tmp_path / "credentials")
    sink.fail = True
    refresher_task = asyncio.create_task(role.refresher.run())
    sink_task = asyncio.create_task(keep_current(role.refresher, sink))
    try:
        await settle()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [getattr(r, "event", None) for r in errors] == ["credentials_file_failed"]
        snap = role.refresher.servable()
        assert snap is not None
        assert snap.credentials.secret_access_key not in caplog.text
        assert not sink_task.done()
        sink.fail = False
        assert role.refresher.refresh_soon()
        await role.clock.advance(5)
        await settle()
        assert len(sink.written) == 1
    finally:
        for task in (sink_task, refresher_task):
            task.cancel()
        await asyncio.wait([sink_task, refresher_task])


async def test_the_profile_is_removed_on_the_way_out(tmp_path: Path) -> None:
    """Leaving the sink's context clears the file as configured (remove: file deleted)."""
    role = fake_role([3600])
    path = tmp_path / "credentials"
    refresher_task = asyncio.create_task(role.refresher.run())
    try:
        async with credentials_file_sink(role.refresher, CredentialsFileConfig(path, "ci")):
            for _ in range(200):
                if path.exists():
                    break
                await asyncio.sleep(0.01)  # the write runs in a worker thread
            assert "[ci]" in path.read_text()
        assert not path.exists()
    finally:
        refresher_task.cancel()
        await asyncio.wait([refresher_task])
