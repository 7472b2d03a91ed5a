"""``serve --write-credentials-file``: a shared-credentials file that follows one role.

A task the daemon owns waits for the role's refresher to publish a new snapshot
(``Refresher.wait_updated``) and writes it with ``CredentialsFile`` (atomic replace, 0600,
other profiles kept); the refresher knows nothing about files. A write that fails is
logged once, as an error naming the file and the fix, and the daemon keeps serving: the
next refresh tries again. At shutdown the profile is removed, emptied or kept, as
configured, after any write in progress has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from sidecar.cache.refresher import Refresher, Snapshot
from sidecar.config.model import CredentialsFileConfig
from sidecar.core.credentials import format_expiration, mask_key_id
from sidecar.core.errors import CredentialsFileError
from sidecar.outputs.credentials_file import CredentialsFile

log = logging.getLogger(__name__)

#: How long one wait for a new snapshot lasts before looking again (on the refresher's clock).
RECHECK_SECONDS = 300.0


async def keep_current(refresher: Refresher, sink: CredentialsFile) -> None:
    """Write every new servable snapshot of ``refresher`` to ``sink``, until cancelled."""
    written: Snapshot | None = None
    while True:
        snap = refresher.servable()
        if snap is not None and snap is not written:
            written = snap
            await _write(sink, snap)
        # No await between the check above and wait_updated taking the current event, so
        # a snapshot published meanwhile cannot be missed.
        await refresher.wait_updated(RECHECK_SECONDS)


async def _write(sink: CredentialsFile, snap: Snapshot) -> None:
    fields = {"path": str(sink.path), "profile": sink.profile}
    try:
        await sink.write_async(snap.credentials)
    except CredentialsFileError as exc:
        log.error(
            "cannot update the credentials file; still serving, retrying at the next refresh: %s",
            exc,
            extra={"event": "credentials_file_failed", **fields},
        )
        return
    log.info(
        "wrote credentials of role %s to %s [%s]",
        snap.credentials.role_arn,
        sink.path,
        sink.profile,
        extra={
            "event": "credentials_file_written",
            **fields,
            "access_key_id": mask_key_id(snap.credentials.access_key_id),
            "expires": format_expiration(snap.credentials.expiration),
        },
    )


@contextlib.asynccontextmanager
async def credentials_file_sink(
    refresher: Refresher, config: CredentialsFileConfig
) -> AsyncIterator[CredentialsFile]:
    """Keep ``config.path`` current while inside; clear it as configured on the way out."""
    sink = CredentialsFile(config.path, config.profile)
    task = asyncio.create_task(keep_current(refresher, sink), name="credentials-file")
    try:
        yield sink
    finally:
        task.cancel()
        await asyncio.wait([task])
        try:
            await sink.clear_async(config.on_exit)
        except CredentialsFileError as exc:
            log.error(
                "cannot clear the credentials file at shutdown: %s",
                exc,
                extra={"event": "credentials_file_failed", "path": str(sink.path)},
            )
        else:
            log.info(
                "credentials file %s: %s at shutdown",
                sink.path,
                config.on_exit,
                extra={"event": "credentials_file_cleared", "mode": config.on_exit},
            )
