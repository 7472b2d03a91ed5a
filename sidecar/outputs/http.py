"""What every HTTP listener shares: JSON errors and the refusal log.

Every error is JSON with both spellings of its keys, because Go and Java read
``code``/``message`` and the JavaScript SDK reads ``Code``/``Message``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable

from aiohttp import web

from sidecar.core.errors import SidecarError

log = logging.getLogger(__name__)

JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store"}

#: Refusal log lines per minute over all clients (``--refusal-log-budget``).
DEFAULT_REFUSAL_LOG_BUDGET = 60
#: The role a request is counted under in metrics, set by the handler that knows it.
ROLE: web.RequestKey[str] = web.RequestKey("role", str)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"code": code, "message": message, "Code": code, "Message": message}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=JSON,
        headers={**NO_STORE, **(headers or {})},
    )


def answer(error: SidecarError) -> web.Response:
    """The JSON answer an error carries its own status and code for."""
    return error_response(
        error.status, error.json_code, str(error), getattr(error, "headers", None) or None
    )


class LogThrottle:
    """At most one log line per key and interval; the next one says how many were dropped.

    A misconfigured client retrying in a loop must not flood the log (nor grow memory: the
    oldest key is forgotten when the table is full). With a ``budget``, at most that many
    lines per interval are allowed over all keys together, so thousands of clients (one per
    loopback address) cannot flood it either; ``summary`` then reports how many were dropped.
    """

    def __init__(
        self,
        interval: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
        budget: int | None = None,
    ) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}
        self._budget = budget
        self._window_start = -math.inf
        self._window_lines = 0
        self._over_budget = 0
        self._unreported = 0

    def allow(self, *key: str) -> int | None:
        """None to stay quiet, else the number of lines suppressed since the last one."""
        now = self._monotonic()
        if now - self._window_start >= self._interval:
            self._unreported += self._over_budget
            self._window_start, self._window_lines, self._over_budget = now, 0, 0
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if self._budget is not None and self._window_lines >= self._budget:
            self._over_budget += 1
            return None
        self._window_lines += 1
        self._seen.pop(key, None)
        while len(self._seen) >= self._max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0

    def summary(self) -> int:
        """Lines the budget dropped in finished intervals and not yet reported (then zero)."""
        dropped, self._unreported = self._unreported, 0
        return dropped


def log_refusal(
    throttle: LogThrottle, event: str, message: str, remote: str, **fields: object
) -> None:
    """A warning about a refused request, throttled per (event, fields, client) and overall."""
    suppressed = throttle.allow(event, *map(str, fields.values()), remote)
    dropped = throttle.summary()
    if dropped:
        log.warning(
            "%d refused requests were not logged: more than the refusal log budget",
            dropped,
            extra={"event": "refusals_not_logged", "count": dropped},
        )
    if suppressed is not None:
        log.warning(
            message,
            extra={"event": event, **fields, "remote": remote, "suppressed_since_last": suppressed},
        )
