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
* **Single flight**: only the schedule (``start``/``stop``, or ``run`` as a task)
  exchanges, one attempt at a time; readers never call STS. They read an immutable
  ``Snapshot`` (each output renders its bytes once). The schedule owns the attempt in
  flight: ``stop`` (or cancelling ``run``) cancels it, and it is awaited.
* **Cheap at rest**: between attempts a refresher is one ``Alarm`` on the clock's shared
  heap, with no task or coroutine of its own (the node agent keeps thousands).
* **Requests are coalesced**: ``refresh_soon`` (SIGHUP) costs at most one exchange per
  ``REFRESH_REQUEST_DEBOUNCE`` seconds, and none during a throttling backoff.
* **A new token is noticed**: while failing for a token reason, the token source is
  watched and a changed token is tried at once (after the backoff floor).

Expiry is tracked on the injected clock (``CLOCK_BOOTTIME`` on Linux: it counts suspend),
from the lifetime STS granted, and checked against the wall clock as well: neither a wall
clock jump nor a suspended laptop can make us serve expired credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sidecar.config import RefreshPolicy
from sidecar.core.clock import Alarm, Clock
from sidecar.core.credentials import Credentials, format_expiration, mask_key_id
from sidecar.core.errors import Disposition, SidecarError, StsError
from sidecar.core.metrics import Metrics, RoleStatus
from sidecar.exchange.diagnosis import (
    is_throttling,
    quick_retry_limit,
    short_lifetime,
    token_at_fault,
)
from sidecar.exchange.sts import Exchanger
from sidecar.sources.base import TokenSource, TokenWatch
from sidecar.sources.registry import watch_for

log = logging.getLogger(__name__)

#: A refresh request (SIGHUP) this soon after the last attempt waits until this long after
#: it; one right after an attempt that was itself requested is answered by that attempt.
REFRESH_REQUEST_DEBOUNCE = 5.0
#: While failing for a token reason, how often the token source is looked at.
TOKEN_WATCH_INTERVAL = 1.0


@dataclass(frozen=True, eq=False, slots=True, weakref_slot=True)
class Snapshot:
    """Credentials as served, immutable. Compared by identity: each output renders its own
    bytes once per snapshot and keeps them in ``renderings`` (``sidecar.outputs.rendered``),
    so they go with the snapshot."""

    credentials: Credentials
    #: Wall time of the exchange (IMDS reports it as LastUpdated).
    obtained_on: datetime
    obtained_at: float
    expires_at: float
    refresh_at: float
    #: ``credentials.expiration`` in seconds since the epoch (for ``Clock.time``).
    expires_on: float
    #: Each output's rendering of these credentials, by output (filled on first use).
    renderings: dict[object, object] = field(default_factory=dict, init=False, repr=False)


class ClockSkewError(SidecarError):
    """STS granted credentials that our wall clock already considers (nearly) expired."""


class ShortSessionError(SidecarError):
    """STS granted credentials living less than the safety margin, by its own clock too."""


class Refresher:
    # The node agent keeps one per identity, thousands: slots instead of a __dict__ (past
    # 30 attributes an instance dict stops sharing its keys and costs 1.5 KiB).
    __slots__ = (
        "_alarm",
        "_attempt_requested",
        "_clock",
        "_clock_skew",
        "_coalesced_logged",
        "_deadline",
        "_duration",
        "_exchange_timeout",
        "_exchanger",
        "_inflight",
        "_last_attempt_end",
        "_last_code",
        "_last_error_text",
        "_last_success",
        "_metrics",
        "_policy",
        "_request_debounce",
        "_requested",
        "_restart_chain",
        "_rng",
        "_running",
        "_same_code_failures",
        "_snapshot",
        "_throttled_until",
        "_token_failed_at",
        "_token_watch",
        "_tokens",
        "_updated",
        "_wake",
        "_watcher",
        "consecutive_failures",
        "label",
        "name",
    )

    def __init__(
        self,
        name: str,
        exchanger: Exchanger,
        tokens: TokenSource,
        duration: int,
        policy: RefreshPolicy,
        clock: Clock,
        metrics: Metrics,
        rng: random.Random | None = None,
        exchange_timeout: float | None = None,
        clock_skew: Callable[[], float | None] | None = None,
        request_debounce: float = REFRESH_REQUEST_DEBOUNCE,
        label: str | None = None,
    ) -> None:
        self.name = name
        #: The metrics label of this identity's counters: a role or namespace, never more.
        self.label = label or name
        self._exchanger = exchanger
        self._tokens = tokens
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
        # Made when someone waits (the cold start), not for each of thousands of identities.
        self._updated: asyncio.Event | None = None
        # The schedule (see ``start``): resting, it is one alarm on the clock, no task.
        self._running = False
        self._deadline = 0.0
        self._alarm: Alarm | None = None
        self._watcher: asyncio.Future[bool] | None = None
        #: A refresh request accepted while no rest was under way: applied to the next one.
        self._wake = False
        self.consecutive_failures = 0
        self._last_error_text: str | None = None
        self._same_code_failures = 0
        self._last_code: str | None = None
        self._token_watch: TokenWatch | None = watch_for(tokens)
        self._clock_skew = clock_skew or (lambda: None)
        self._request_debounce = request_debounce
        # Refresh requests: was the attempt in flight (or the last one) asked for, when did
        # the last one end, and until when does a throttling backoff last?
        self._requested = False
        self._attempt_requested = False
        self._last_attempt_end: float | None = None
        self._throttled_until: float | None = None
        self._coalesced_logged = False
        self._restart_chain = False
        #: The last failure, if it was the token's fault: when it happened.
        self._token_failed_at: float | None = None

    # -- readers -------------------------------------------------------------------------

    def servable(self) -> Snapshot | None:
        """The current snapshot if it has more than the safety margin left, else None.

        Both by the lifetime STS granted, on the monotonic clock, and by the wall clock
        against ``Expiration``: after a suspend one of them may not have seen the time pass.
        """
        snap = self._snapshot
        if snap is None:
            return None
        margin = self._policy.safety_margin
        if self._clock.monotonic() >= snap.expires_at - margin:
            return None
        if snap.expires_on - self._clock.time() <= margin:
            return None
        return snap

    @property
    def ready(self) -> bool:
        return self.servable() is not None

    @property
    def running(self) -> bool:
        """Between ``start`` and ``stop``: refreshing on its schedule."""
        return self._running

    @property
    def last_error(self) -> str | None:
        """Why the last exchange failed (safe to show: never a secret), None after a success."""
        return self._last_error_text

    async def wait_servable(self, at_most: float) -> Snapshot | None:
        """A servable snapshot, waiting up to ``at_most`` seconds for one (cold start only).

        Once the role has had credentials, an unservable role answers at once: the wait
        only hides the first exchange's latency, it would just slow every 503 down.
        """
        snap = self.servable()
        if snap is not None or at_most <= 0 or self._snapshot is not None:
            return snap
        return await self.wait_updated(at_most)

    async def wait_updated(self, at_most: float) -> Snapshot | None:
        """Wait up to ``at_most`` seconds (on the injected clock) for the next exchange to
        succeed; the servable snapshot then, or None."""
        if self._updated is None:
            self._updated = asyncio.Event()
        updated = self._updated
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(at_most):
                await updated.wait()
        return self.servable()

    def status(self) -> RoleStatus:
        now = self._clock.monotonic()
        snap = self._snapshot
        until_expiry = None
        if snap is not None:
            by_wall = (snap.credentials.expiration - self._clock.now()).total_seconds()
            until_expiry = max(0.0, min(snap.expires_at - now, by_wall))
        return RoleStatus(
            role=self.label,
            ready=self.ready,
            seconds_until_expiry=until_expiry,
            seconds_since_success=(
                None if self._last_success is None else now - self._last_success
            ),
            consecutive_failures=self.consecutive_failures,
        )

    # -- the refresh -----------------------------------------------------------------------

    async def refresh(self) -> Snapshot:
        """Exchange once for new credentials; concurrent callers share one exchange."""
        return await asyncio.shield(self._attempt())

    def _attempt(self) -> asyncio.Future[Snapshot]:
        """The exchange in flight, started if there is none (single flight)."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._exchange())
            self._inflight.add_done_callback(self._clear_inflight)
        return self._inflight

    def _clear_inflight(self, future: asyncio.Future[Snapshot]) -> None:
        if self._inflight is future:  # else ``stop`` let go of it already
            self._inflight = None
        self._last_attempt_end = self._clock.monotonic()
        # Callers may have stopped waiting (cancelled): the outcome is seen here anyway,
        # so asyncio never logs "Task exception was never retrieved".
        if not future.cancelled():
            future.exception()

    async def _exchange(self) -> Snapshot:
        self._attempt_requested, self._requested = self._requested, False
        self._coalesced_logged = False
        if self._restart_chain:
            self._restart_chain = False
            self._exchanger.drop_cached()
        try:
            async with self._clock.timeout(self._exchange_timeout):
                creds = await self._exchanger.exchange(self._tokens)
            snap = self._accept(creds)
        except SidecarError as exc:
            self._metrics.exchanges.labels(self.label, "failure", exc.code).inc()
            raise
        except TimeoutError:
            self._metrics.exchanges.labels(self.label, "failure", "Timeout").inc()
            raise StsError(
                "exchange",
                "Timeout",
                f"the exchange took longer than {self._exchange_timeout:g}s",
                Disposition.RETRY,
            ) from None
        except Exception:
            self._metrics.exchanges.labels(self.label, "failure", "Unexpected").inc()
            raise
        self._metrics.exchanges.labels(self.label, "success", "").inc()
        return snap

    def _accept(self, creds: Credentials) -> Snapshot:
        now = self._clock.monotonic()
        # Trust STS's lifetime, not our wall clock: cap by what we asked for, so a clock
        # running behind cannot stretch it; a clock running ahead only shortens it.
        lifetime = min((creds.expiration - self._clock.now()).total_seconds(), self._duration)
        if lifetime <= self._policy.safety_margin:
            clock_to_blame, text = short_lifetime(
                creds.expiration, self._clock.now(), self._clock_skew(), self._policy.safety_margin
            )
            raise ClockSkewError(text) if clock_to_blame else ShortSessionError(text)
        ahead = self._policy.refresh_ahead(lifetime)
        # Spread identities created together (a pod-start storm) over time, always earlier.
        if self._policy.refresh_jitter > 0:
            ahead += self._rng.uniform(0, self._policy.refresh_jitter * ahead)
        snap = Snapshot(
            credentials=creds,
            obtained_on=self._clock.now(),
            obtained_at=now,
            expires_at=now + lifetime,
            refresh_at=now + lifetime - min(ahead, 0.9 * lifetime),
            expires_on=creds.expiration.timestamp(),
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
        self._throttled_until = None
        self._token_failed_at = None
        if self._updated is not None:
            self._updated.set()
            self._updated = None
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
        now = self._clock.monotonic()
        self._throttled_until = now + delay if is_throttling(error) else None
        self._token_failed_at = now if token_at_fault(error) else None
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
        """Refresh forever; cancel to stop (the attempt in flight is cancelled and awaited)."""
        self.start()
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            # Before our owner closes the STS client under it: a cancelled exchange is
            # neither a failure nor an unretrieved task exception.
            stopping = self.stop()
            if stopping is not None:
                await asyncio.wait([stopping])

    def start(self) -> None:
        """Refresh now and then forever, in the background, until ``stop``.

        No task is kept for this: an attempt is the exchange's own task, and its outcome
        (``_attempt_ended``) sets one alarm on the clock for the next; a refresh request or
        a changed token moves that alarm. A resting refresher is that alarm and nothing else.
        """
        if self._running:
            raise RuntimeError(f"the refresher of {self.name} is already running")
        self._running = True
        self._begin()

    def stop(self) -> asyncio.Future[Any] | None:
        """Stop refreshing: call the alarm off, cancel the exchange in flight and the token
        watch; what must still end is returned (if anything) for the caller to await before
        it closes the STS client."""
        self._running = False
        watcher = self._watcher
        self._end_rest()
        ending = [f for f in (self._inflight, watcher) if f is not None and not f.done()]
        # Let go of the cancelled attempt: a ``start`` before it ends begins a new one.
        self._inflight = None
        if not ending:
            return None
        for future in ending:
            future.cancel()
        return asyncio.gather(*ending, return_exceptions=True)

    def _begin(self) -> None:
        """Start an attempt whose outcome schedules the next."""
        self._attempt().add_done_callback(self._attempt_ended)

    def _attempt_ended(self, attempt: asyncio.Future[Snapshot]) -> None:
        if not self._running or attempt.cancelled():
            return  # stopped (only ``stop`` cancels an attempt)
        error = attempt.exception()
        if error is None:
            delay = attempt.result().refresh_at - self._clock.monotonic()
        elif isinstance(error, SidecarError):
            delay = self._record_failure(error)
        else:
            # A bug or an unforeseen answer must not end refreshing: log it in full, keep
            # serving what is valid, and retry like a transient failure.
            log.error(
                "unexpected error refreshing role %s",
                self.name,
                exc_info=error,
                extra={"event": "refresh_crashed", "role": self.name},
            )
            delay = self._record_failure(SidecarError(f"unexpected {type(error).__name__}"))
        self._rest(delay)

    def _rest(self, delay: float) -> None:
        """Wait ``delay``, less if a refresh is requested or a rejected token changes."""
        self._deadline = self._clock.monotonic() + delay
        if self._wake:
            self._wake = False
            self._deadline = min(self._deadline, self._request_due())
        self._set_alarm()
        if (
            self._alarm is not None
            and self._token_watch is not None
            and self._token_failed_at is not None
        ):
            self._watcher = asyncio.ensure_future(self._token_changed(self._token_watch))
            self._watcher.add_done_callback(self._watched)

    def _set_alarm(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        left = self._deadline - self._clock.monotonic()
        if left <= 0:
            self._end_rest()
            self._begin()
            return
        self._alarm = self._clock.alarm(left, self._rang)

    def _rang(self) -> None:
        alarm = self._alarm
        if alarm is None or alarm.pending:
            return  # stopped, or moved since this one rang: a newer alarm is set
        self._alarm = None
        self._set_alarm()  # at the deadline now: the next attempt starts

    def _watched(self, watcher: asyncio.Future[bool]) -> None:
        if watcher is not self._watcher or watcher.cancelled() or not watcher.result():
            return
        self._watcher = None
        floor = self._policy.retry_base / 2  # the backoff's own floor
        assert self._token_failed_at is not None
        self._move_deadline(self._token_failed_at + floor)

    def _move_deadline(self, at: float) -> None:
        """Bring the resting refresher's next attempt forward to ``at`` (never later)."""
        if at < self._deadline:
            self._deadline = at
            self._set_alarm()

    def _end_rest(self) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def refresh_soon(self) -> bool:
        """Refresh now (SIGHUP, after an operator fixed IAM), restarting any role chain.

        Coalesced (False) when an attempt that was itself requested is running or ended
        less than ``request_debounce`` ago, or while backing off from throttling; a request
        soon after a scheduled attempt runs ``request_debounce`` after it.
        """
        now = self._clock.monotonic()
        reason = None
        if self._requested:
            reason = "pending"
        elif self._throttled_until is not None and now < self._throttled_until:
            reason = "throttled"
        elif self._attempt_requested and self._inflight is not None:
            reason = "in_progress"
        elif (
            self._attempt_requested
            and self._last_attempt_end is not None
            and now - self._last_attempt_end < self._request_debounce
        ):
            reason = "debounced"
        if reason is None:
            self._requested = True
            self._restart_chain = True
            if self._alarm is not None:
                self._move_deadline(self._request_due())
            else:
                self._wake = True  # for the rest after the attempt in flight
        elif reason == "throttled":
            self._restart_chain = True  # the retry after the backoff runs the whole chain
        self._metrics.refresh_requests.labels(self.label, reason or "accepted").inc()
        if reason is not None and not self._coalesced_logged:
            self._coalesced_logged = True  # once per attempt, however many signals arrive
            log.info(
                "refresh request for role %s coalesced (%s)",
                self.name,
                reason,
                extra={"event": "refresh_coalesced", "role": self.name, "reason": reason},
            )
        return reason is None

    def _request_due(self) -> float:
        """When an accepted refresh request may run: at most one exchange per debounce."""
        now = self._clock.monotonic()
        if self._last_attempt_end is None:
            return now
        return max(now, self._last_attempt_end + self._request_debounce)

    async def _token_changed(self, watch: TokenWatch) -> bool:
        """True once the token source's fingerprint differs from what it was at failure."""
        try:
            # What the failed attempt read; a file fixed while STS was answering is a change.
            before = watch.last_read()
            if before is None:
                before = await watch.fingerprint()
            while True:
                await self._clock.sleep(TOKEN_WATCH_INTERVAL)
                if await watch.fingerprint() != before:
                    break
        except Exception:
            # Watching is an optimisation: a bug here must not stop the retry schedule.
            log.exception(
                "cannot watch the token source of role %s",
                self.name,
                extra={"event": "token_watch_failed", "role": self.name},
            )
            return False
        log.info(
            "the token source of role %s changed: retrying now",
            self.name,
            extra={"event": "token_changed", "role": self.name},
        )
        return True
