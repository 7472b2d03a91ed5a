"""The associations file in force: loaded at start, re-read when it changes or on request
(SIGHUP). A broken new version keeps the associations in force and says why, once."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from sidecar.core.clock import Clock
from sidecar.core.errors import ConfigError
from sidecar.tenancy.associations import Associations, load_associations

log = logging.getLogger(__name__)

#: How often the file's identity is looked at.
POLL_INTERVAL = 5.0


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows the ConfigMap's ..data symlink swap
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class AssociationsFile:
    def __init__(self, path: Path, audience: str, on_change: Callable[[], None]) -> None:
        self.path = path
        self._audience = audience
        self._on_change = on_change
        self._stamp = _stamp(path)
        #: Raises ConfigError: at start, a broken file is a configuration error.
        self.current: Associations = load_associations(path, audience)
        self._last_problem: str | None = None

    def reload(self) -> bool:
        """Re-read the file; True if the associations changed. Keeps them on any problem."""
        self._stamp = _stamp(self.path)
        try:
            fresh = load_associations(self.path, self._audience)
        except ConfigError as exc:
            if str(exc) != self._last_problem:
                self._last_problem = str(exc)
                log.error(
                    "keeping the associations in force: %s",
                    exc,
                    extra={"event": "associations_rejected", "path": str(self.path)},
                )
            return False
        self._last_problem = None
        if fresh.digest == self.current.digest:
            return False
        self.current = fresh
        log.info(
            "associations reloaded: %d service account(s)",
            len(fresh),
            extra={"event": "associations_reloaded", "count": len(fresh)},
        )
        self._on_change()
        return True

    async def watch(self, clock: Clock) -> None:
        """Reload whenever the file's identity changes (a ConfigMap update); cancel to stop."""
        while True:
            await clock.sleep(POLL_INTERVAL)
            if _stamp(self.path) != self._stamp:
                self.reload()
