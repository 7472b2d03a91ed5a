"""Keeps one role's credentials fresh, in the background, and hands out snapshots.

The policy, in one place:

* **Refresh ahead**: a session of lifetime L is renewed when ``policy.refresh_ahead(L)``
  is left (25% of L, at least 35 min, at most 75% of L). With STS healthy and L >= 1 h,
  served credentials always have more than 35 minutes left.
* **Keep the last good**: a failed refresh changes nothing that is served; it is retried
  with capped, jittered exponential backoff (transient errors) or at a slow pace (errors
  that need an operator, e.g. AccessDenied), never in a tight loop.
* **Never serve the unusable**: a snapshot is servable only until ``safety_margin`` before
  its expiry; after that the endpoint answers 503 and ``/readyz`` fails.
* **Single flight**: only ``run`` exchanges, one attempt at a time; readers never call STS.
  They read an immutable ``Snapshot`` whose response body was rendered once.

Expiry is tracked on the monotonic clock, from the lifetime STS granted, so a wall-clock
jump cannot make us serve expired credentials or refresh in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime

from sidecar.clock import Clock
from sidecar.config import RefreshPolicy
from sidecar.credentials import Credentials, format_expiration, mask_key_id, render_container_json
from sidecar.diagnosis import quick_retry_limit
from sidecar.errors import Disposition, SidecarError, StsError
from sidecar.metrics import Metrics, RoleStatus
from sidecar.sts import Exchanger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """Credentials as served, immutable; ``body`` is the rendered 200 response."""

    credentials: Credentials
    body: bytes = field(repr=False)
    #: Wall time of the exchange (IMDS reports it as LastUpdated).
    obtained_on: datetime
    obtained_at: float
    expires_at: float
    refresh_at: float


class ClockSkewError(SidecarError):
    """STS granted credentials that our wall clock already considers (nearly) expired."""


class Refresher:
    def __init__(
        self,
        name: str,
        exchanger: Exchanger,
        duration: int,
        policy: RefreshPolicy,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random | None = None,
        exchange_timeout: float | None = None,
    ) -> None:
        self.name = name
        self._exchanger = exchanger
        self._duration = duration
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        # A safety net over the whole exchange (token fetch + every hop); each STS call
        # has its own, shorter timeout.
        self._exchange_timeout = exchange_timeout or policy.attempt_timeout * 2
        self._snapshot: Snapshot | None = None
        self._last_success: float | None = None
        self._inflight: asyncio.Future[Snapshot] | None = None
        self._updated = asyncio.Event()
        self._wake = asyncio.Event()
        self.consecutive_failures = 0
        self._last_error_text: str | None = None
        self._same_code_failures = 0
        self._last_code: str | None = None
        metrics.watch_role(self.status)

    # -- readers -------------------------------------------------------------------------

    def servable(self) -> Snapshot | None:
        """The current snapshot if it has more than the safety margin left, else None."""
        snap = self._snapshot
        if snap is None:
            return None
        if self._clock.monotonic() >= snap.expires_at - self._policy.safety_margin:
            return None
        return snap

    @property
    def ready(self) -> bool:
        return self.servable() is not None

    async def wait_servable(self, at_most: float) -> Snapshot | None:
        """A servable snapshot, waiting up to ``at_most`` seconds for one (cold start only)."""
        snap = self.servable()
        if snap is not None or at_most <= 0:
            return snap
        updated = self._updated
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await updated.wait()
        return self.servable()

    def status(self) -> RoleStatus:
        now = self._clock.monotonic()
        snap = self._snapshot
        return RoleStatus(
            role=self.name,
            ready=self.ready,
            seconds_until_expiry=max(0.0, snap.expires_at - now) if snap else None,
            seconds_since_success=(
                None if self._last_success is None else now - self._last_success
            ),
            consecutive_failures=self.consecutive_failures,
        )

    # -- the refresh -----------------------------------------------------------------------

    async def refresh(self) -> Snapshot:
        """Exchange once for new credentials; concurrent callers share one exchange."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._exchange())
            self._inflight.add_done_callback(self._clear_inflight)
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, _: asyncio.Future[Snapshot]) -> None:
        self._inflight = None

    async def _exchange(self) -> Snapshot:
        try:
            async with asyncio.timeout(self._exchange_timeout):
                creds = await self._exchanger.exchange()
            snap = self._accept(creds)
        except SidecarError as exc:
            self._metrics.exchanges.labels(self.name, "failure", exc.code).inc()
            raise
        except TimeoutError:
            self._metrics.exchanges.labels(self.name, "failure", "Timeout").inc()
            raise StsError(
                "exchange",
                "Timeout",
                f"the exchange took longer than {self._exchange_timeout:g}s",
                Disposition.RETRY,
            ) from None
        except Exception:
            self._metrics.exchanges.labels(self.name, "failure", "Unexpected").inc()
            raise
        self._metrics.exchanges.labels(self.name, "success", "").inc()
        return snap

    def _accept(self, creds: Credentials) -> Snapshot:
        now = self._clock.monotonic()
        # Trust STS's lifetime, not our wall clock: cap by what we asked for, so a clock
        # running behind cannot stretch it; a clock running ahead only shortens it.
        lifetime = min((creds.expiration - self._clock.now()).total_seconds(), self._duration)
        if lifetime <= self._policy.safety_margin:
            raise ClockSkewError(
                f"STS returned credentials expiring at {format_expiration(creds.expiration)}, "
                f"but the local clock says it is {format_expiration(self._clock.now())}: "
                "fix the system clock (NTP)"
            )
        snap = Snapshot(
            credentials=creds,
            body=render_container_json(creds),
            obtained_on=self._clock.now(),
            obtained_at=now,
            expires_at=now + lifetime,
            refresh_at=now + lifetime - self._policy.refresh_ahead(lifetime),
        )
        self._snapshot = snap
        self._last_success = now
        if self.consecutive_failures:
            log.info(
                "role %s recovered after %d failed attempts",
                self.name,
                self.consecutive_failures,
                extra={"event": "recovered", "role": self.name},
            )
        self.consecutive_failures = 0
        self._same_code_failures = 0
        self._last_code = None
        self._last_error_text = None
        self._updated.set()
        self._updated = asyncio.Event()
        log.info(
            "credentials refreshed for role %s",
            self.name,
            extra={
                "event": "exchanged",
                "role": self.name,
                "role_arn": creds.role_arn,
                "access_key_id": mask_key_id(creds.access_key_id),
                "expires": format_expiration(creds.expiration),
                "next_refresh_in_s": round(snap.refresh_at - now),
            },
        )
        return snap

    # -- the loop ------------------------------------------------------------------------

    def retry_delay(self, error: SidecarError) -> float:
        """How long to wait after ``error``, the ``consecutive_failures``-th in a row."""
        policy = self._policy
        disposition = error.disposition
        limit = quick_retry_limit(error.code)
        if limit is not None and self._same_code_failures > limit:
            disposition = Disposition.FATAL
        if disposition is Disposition.FATAL:
            return policy.slow_retry
        exponent = min(self.consecutive_failures - 1, 30)
        ceiling = min(policy.retry_cap, policy.retry_base * 2.0**exponent)
        # Full jitter spreads a fleet's retries; the floor keeps any loop from spinning.
        return max(min(policy.retry_base, ceiling) / 2, self._rng.uniform(0, ceiling))

    def _record_failure(self, error: SidecarError) -> float:
        if self._last_code == error.code:
            self._same_code_failures += 1
        else:
            self._same_code_failures = 1
        self._last_code = error.code
        self.consecutive_failures += 1
        delay = self.retry_delay(error)
        text = str(error)
        serving = self.servable()
        fields = {
            "event": "refresh_failed",
            "role": self.name,
            "error_code": error.code,
            "attempt": self.consecutive_failures,
            "retry_in_s": round(delay, 1),
            "serving_cached": serving is not None,
        }
        if text != self._last_error_text:
            log.error("refresh failed for role %s: %s", self.name, text, extra=fields)
            self._last_error_text = text
        elif self.consecutive_failures % 10 == 0:
            log.warning("refresh still failing for role %s: %s", self.name, text, extra=fields)
        return delay

    async def run(self) -> None:
        """Refresh forever; cancel to stop."""
        while True:
            try:
                snap = await self.refresh()
            except SidecarError as exc:
                delay = self._record_failure(exc)
            except Exception as exc:
                # A bug or an unforeseen answer must not end refreshing: log it in full,
                # keep serving what is valid, and retry like a transient failure.
                log.exception(
                    "unexpected error refreshing role %s",
                    self.name,
                    extra={"event": "refresh_crashed", "role": self.name},
                )
                delay = self._record_failure(SidecarError(f"unexpected {type(exc).__name__}"))
            else:
                delay = snap.refresh_at - self._clock.monotonic()
            await self._pause(delay)

    def refresh_soon(self) -> None:
        """Cut the current wait short: refresh now (SIGHUP, after an operator fixed IAM)."""
        self._wake.set()

    async def _pause(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
        self._wake.clear()
