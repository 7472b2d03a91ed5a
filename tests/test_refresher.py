"""The refresher's policy, on a fake clock: no test here waits for real time."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.cache.refresher import REFRESH_REQUEST_DEBOUNCE, TOKEN_WATCH_INTERVAL, Refresher
from sidecar.config import RefreshPolicy
from sidecar.core.errors import Disposition, StsError, TokenError
from sidecar.core.metrics import Metrics
from sidecar.outputs.endpoint import render_container_json
from sidecar.outputs.rendered import Rendered
from sidecar.sources.base import WebIdentityToken
from tests.fakes import NO_TOKENS, FakeClock, FakeExchanger, settle

HOUR = 3600.0


def sts_error(code: str, disposition: Disposition) -> StsError:
    return StsError("AssumeRoleWithWebIdentity", code, "boom", disposition, 400)


THROTTLED = sts_error("Throttling", Disposition.RETRY)
DENIED = sts_error("AccessDenied", Disposition.FATAL)

Factory = Callable[..., tuple[Refresher, FakeExchanger, FakeClock]]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    tasks: list[asyncio.Task[None]] = []

    def factory(
        script: list[float | BaseException],
        duration: int = 3600,
        policy: RefreshPolicy | None = None,
        skew: float = 0.0,
        start: bool = True,
        **options: Any,
    ) -> tuple[Refresher, FakeExchanger, FakeClock]:
        clock = FakeClock(skew=skew)
        exchanger = FakeExchanger(clock, script)
        refresher = Refresher(
            "default",
            exchanger,
            options.pop("token_watch", NO_TOKENS),
            duration,
            policy or RefreshPolicy(),
            clock,
            Metrics(CollectorRegistry()),
            random.Random(7),
            **options,
        )
        if start:
            tasks.append(asyncio.create_task(refresher.run()))
        return refresher, exchanger, clock

    yield factory
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize(
    ("lifetime", "refresh_after"),
    [
        (900, 225),  # 15 min: 3/4 of the lifetime ahead, so > 10 min always left
        (3600, 1500),  # 1 h: 35 min ahead
        (43200, 32400),  # 12 h: 25% ahead (3 h)
    ],
)
async def test_refresh_time_depends_on_lifetime(
    make: Factory, lifetime: int, refresh_after: float
) -> None:
    """A session is renewed at the documented point: 15 min, 1 h and 12 h sessions."""
    _, exchanger, clock = make([lifetime], duration=lifetime)
    await settle()
    assert exchanger.calls == 1
    assert clock.next_wakeup() == pytest.approx(refresh_after)
    await clock.advance(refresh_after - 1)
    assert exchanger.calls == 1
    await clock.advance(1)
    assert exchanger.calls == 2


async def test_served_credentials_keep_over_30_minutes_while_sts_is_healthy(make: Factory) -> None:
    """With 1 h sessions and STS healthy, every served snapshot has > 30 min left."""
    refresher, exchanger, clock = make([3600])
    for _ in range(24 * 12):  # a day, looked at every 5 minutes
        await clock.advance(300)
        snap = refresher.servable()
        assert snap is not None
        assert snap.expires_at - clock.monotonic() > 30 * 60
    assert exchanger.calls == pytest.approx(24 * 60 / 25, abs=2)


async def test_failed_refresh_keeps_last_good_until_safety_margin(make: Factory) -> None:
    """Failures keep serving the cached credentials, then stop before expiry (never expired)."""
    refresher, _, clock = make([3600, THROTTLED])
    await settle()
    first = refresher.servable()
    assert first is not None
    await clock.advance(1500 + 1)  # refresh is due and fails from now on
    assert refresher.consecutive_failures >= 1
    assert refresher.servable() is first
    # until 2 minutes (the safety margin) before expiry...
    await clock.advance(3600 - 1500 - 1 - 120 - 1)
    assert refresher.servable() is first
    await clock.advance(2)
    assert refresher.servable() is None
    assert not refresher.ready


async def test_recovers_after_failures(make: Factory) -> None:
    """After transient failures the next success is served and failures reset."""
    refresher, exchanger, clock = make([THROTTLED, THROTTLED, 3600])
    await settle()
    assert refresher.servable() is None
    await clock.advance(10)
    await clock.advance(10)
    assert exchanger.calls == 3
    assert refresher.servable() is not None
    assert refresher.consecutive_failures == 0


async def test_backoff_is_jittered_capped_and_never_spins(make: Factory) -> None:
    """Transient retries wait within [base/2, min(cap, base*2^(n-1))]; never ~0."""
    policy = RefreshPolicy(retry_base=1, retry_cap=60)
    refresher, _, _ = make([THROTTLED], policy=policy, start=False)
    for n in range(1, 40):
        refresher.consecutive_failures = n
        ceiling = min(60.0, 2.0 ** (n - 1))
        for _ in range(50):
            delay = refresher.retry_delay(THROTTLED)
            assert 0.5 <= delay <= ceiling


async def test_errors_needing_an_operator_retry_slowly(make: Factory) -> None:
    """AccessDenied is retried at the slow pace, not with backoff."""
    policy = RefreshPolicy(slow_retry=300)
    _, exchanger, clock = make([DENIED], policy=policy)
    await settle()
    assert exchanger.calls == 1
    assert clock.next_wakeup() == pytest.approx(300)
    await clock.advance(299)
    assert exchanger.calls == 1
    await clock.advance(1)
    assert exchanger.calls == 2


async def test_refresh_soon_cuts_the_wait_short(make: Factory) -> None:
    """refresh_soon (SIGHUP) retries at once instead of at the slow pace."""
    refresher, exchanger, clock = make([DENIED, 3600], policy=RefreshPolicy(slow_retry=300))
    await settle()
    assert exchanger.calls == 1
    assert clock.next_wakeup() == pytest.approx(300)
    await clock.advance(REFRESH_REQUEST_DEBOUNCE)
    assert refresher.refresh_soon()
    await settle()
    assert exchanger.calls == 2
    assert refresher.ready
    assert clock.next_wakeup() == pytest.approx(1500)  # back on the normal schedule


async def test_invalid_identity_token_gets_a_few_quick_retries_then_slows(make: Factory) -> None:
    """InvalidIdentityToken may be a JWKS race: 3 quick retries, then the slow pace."""
    flaky = sts_error("InvalidIdentityToken", Disposition.RETRY)
    policy = RefreshPolicy(retry_base=1, retry_cap=4, slow_retry=300)
    _, exchanger, clock = make([flaky], policy=policy)
    await settle()
    for _ in range(3):
        wake = clock.next_wakeup()
        assert wake is not None and wake <= 4
        await clock.advance(wake)
    assert exchanger.calls == 4
    assert clock.next_wakeup() == pytest.approx(300)


async def test_token_errors_are_retried(make: Factory) -> None:
    """A missing token file is retried with backoff (the kubelet may be writing it)."""
    refresher, exchanger, clock = make([TokenError("token file /x does not exist"), 3600])
    await settle()
    assert not refresher.ready
    await clock.advance(2)
    assert exchanger.calls == 2
    assert refresher.ready


async def test_single_flight(make: Factory) -> None:
    """Any number of concurrent refresh() calls cost exactly one exchange."""
    refresher, exchanger, _ = make([3600], start=False)
    exchanger.gate = asyncio.Event()
    waiters = [asyncio.create_task(refresher.refresh()) for _ in range(500)]
    await settle()
    exchanger.gate.set()
    snaps = await asyncio.gather(*waiters)
    assert exchanger.calls == 1
    assert len({id(s) for s in snaps}) == 1


async def test_wait_servable_is_bounded(make: Factory) -> None:
    """A cold-start reader waits at most its bound, on the injected clock, then gets None."""
    refresher, exchanger, clock = make([3600], start=False)
    exchanger.gate = asyncio.Event()
    reader = asyncio.ensure_future(refresher.wait_servable(0.01))
    await clock.advance(0.009)
    assert not reader.done()
    await clock.advance(0.002)
    assert await reader is None


async def test_wait_servable_returns_first_credentials(make: Factory) -> None:
    """A cold-start reader gets the first credentials as soon as they arrive."""
    refresher, exchanger, _ = make([3600])
    exchanger.gate = asyncio.Event()
    reader = asyncio.create_task(refresher.wait_servable(5))
    await settle()
    exchanger.gate.set()
    snap = await reader
    assert snap is not None


async def test_wall_clock_behind_cannot_stretch_lifetime(make: Factory) -> None:
    """A local clock 10 min slow does not make us serve past the real expiry."""
    refresher, _, clock = make([3600, THROTTLED], skew=-600)
    await settle()
    snap = refresher.servable()
    assert snap is not None
    assert snap.expires_at - clock.monotonic() == pytest.approx(3600)


async def test_wall_clock_ahead_shortens_lifetime(make: Factory) -> None:
    """A local clock 10 min fast refreshes earlier, conservatively."""
    refresher, _, clock = make([3600], skew=600)
    await settle()
    snap = refresher.servable()
    assert snap is not None
    assert snap.expires_at - clock.monotonic() == pytest.approx(3000)


async def test_clock_far_ahead_is_reported(make: Factory) -> None:
    """Credentials already expired by our clock are refused with a clock error."""
    refresher, _, _ = make([3600], skew=4000)
    await settle()
    assert not refresher.ready
    assert refresher.consecutive_failures == 1


async def test_unexpected_exception_does_not_stop_refreshing(make: Factory) -> None:
    """A bug in one exchange is logged and retried; the loop survives."""
    refresher, exchanger, clock = make([KeyError("Credentials"), 3600])
    await settle()
    assert not refresher.ready
    await clock.advance(2)
    assert exchanger.calls == 2
    assert refresher.ready


async def test_rendered_body_matches_credentials(make: Factory) -> None:
    """The endpoint renders a snapshot's body once, from its credentials, and renders the
    next snapshot afresh."""
    refresher, _, _ = make([3600])
    await settle()
    snap = refresher.servable()
    assert snap is not None
    rendered = Rendered(lambda s: render_container_json(s.credentials))
    body = rendered(snap)
    assert rendered(snap) is body
    assert json.loads(body)["AccessKeyId"] == snap.credentials.access_key_id
    assert "secret" not in repr(snap)
    await refresher.refresh()
    fresh = refresher.servable()
    assert fresh is not None and fresh is not snap
    assert json.loads(rendered(fresh))["AccessKeyId"] == fresh.credentials.access_key_id


def metric(refresher: Refresher, name: str, **labels: str) -> float:
    value = refresher._metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_refresh_request_storm_costs_at_most_one_exchange(
    make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """200 refresh requests (SIGHUPs), each given time to act, cost one exchange, logged once."""
    caplog.set_level(logging.INFO)
    refresher, exchanger, clock = make([DENIED], policy=RefreshPolicy(slow_retry=300))
    await settle()
    await clock.advance(60)
    for _ in range(200):
        refresher.refresh_soon()
        await settle(5)
    await clock.advance(60)
    assert exchanger.calls == 2
    accepted = metric(
        refresher, "credential_sidecar_refresh_requests_total", role="default", outcome="accepted"
    )
    assert accepted == 1
    coalesced = [r for r in caplog.records if getattr(r, "event", "") == "refresh_coalesced"]
    assert len(coalesced) == 1


async def test_refresh_request_right_after_an_attempt_runs_after_the_debounce(
    make: Factory,
) -> None:
    """Requests just after a scheduled attempt are not lost: one exchange, 5 s after it."""
    refresher, exchanger, clock = make([DENIED, 3600], policy=RefreshPolicy(slow_retry=300))
    await settle()
    for _ in range(200):
        refresher.refresh_soon()
        await settle(5)
    assert exchanger.calls == 1
    await clock.advance(REFRESH_REQUEST_DEBOUNCE - 0.1)
    assert exchanger.calls == 1
    await clock.advance(0.1)
    assert exchanger.calls == 2
    assert refresher.ready


async def test_no_refresh_request_reaches_sts_during_a_throttling_backoff(make: Factory) -> None:
    """While backing off from Throttling, refresh requests cause no STS call at all."""
    policy = RefreshPolicy(retry_base=60, retry_cap=600)
    refresher, exchanger, clock = make([THROTTLED, 3600], policy=policy)
    await settle()
    backoff = clock.next_wakeup()
    assert backoff is not None and backoff >= 30
    await clock.advance(REFRESH_REQUEST_DEBOUNCE + 1)
    for _ in range(200):
        assert not refresher.refresh_soon()
        await settle(5)
    assert exchanger.calls == 1
    await clock.advance(backoff)
    assert exchanger.calls == 2
    assert refresher.ready


async def test_refresh_request_restarts_the_whole_chain(make: Factory) -> None:
    """An accepted refresh request drops the exchanger's cached first hop before exchanging."""
    refresher, exchanger, clock = make([3600])
    await settle()
    assert exchanger.dropped == 0
    await clock.advance(60)
    assert refresher.refresh_soon()
    await settle()
    assert exchanger.calls == 2
    assert exchanger.dropped == 1


async def test_no_cold_start_wait_once_credentials_were_held(make: Factory) -> None:
    """A role that had credentials and lost them answers a reader at once, without waiting."""
    refresher, _, clock = make([600, THROTTLED], policy=RefreshPolicy(safety_margin=120))
    await settle()
    await clock.advance(600 - 120)
    assert refresher.servable() is None
    reader = asyncio.create_task(refresher.wait_servable(5))
    await settle()
    assert reader.done()
    assert reader.result() is None


async def test_cold_start_wait_still_applies_before_the_first_credentials(make: Factory) -> None:
    """Before the first snapshot a reader still waits for it (and gets it)."""
    refresher, exchanger, _ = make([3600])
    exchanger.gate = asyncio.Event()
    reader = asyncio.create_task(refresher.wait_servable(5))
    await settle()
    assert not reader.done()
    exchanger.gate.set()
    assert await reader is not None


class FakeWatch:
    """A token source fingerprint the test changes by hand."""

    def __init__(self) -> None:
        self.value: Hashable = 1
        self.looks = 0

    async def fingerprint(self) -> Hashable:
        self.looks += 1
        return self.value

    def last_read(self) -> Hashable | None:
        return self.read

    async def fetch(self) -> WebIdentityToken:
        raise AssertionError("FakeExchanger does not read tokens")

    read: Hashable | None = None


@pytest.mark.parametrize(
    "error",
    [
        TokenError("token file /t holds a token for audience x", Disposition.FATAL),
        sts_error("InvalidIdentityToken", Disposition.RETRY),
    ],
)
async def test_a_changed_token_is_tried_at_once(make: Factory, error: Exception) -> None:
    """Failing for a token reason: a change of the token source is retried within ~1 s."""
    watch = FakeWatch()
    policy = RefreshPolicy(retry_base=1, retry_cap=60, slow_retry=300)
    refresher, exchanger, clock = make([error], policy=policy, token_watch=watch)
    await clock.advance(60)  # past any quick retries: on the slow pace now
    calls = exchanger.calls
    assert calls in (1, 4)
    assert not refresher.ready
    await clock.advance(30)
    assert exchanger.calls == calls  # nothing changed: nothing retried
    watch.value = 2  # the operator fixes the token file
    exchanger.script = [3600]
    await clock.advance(TOKEN_WATCH_INTERVAL)
    assert exchanger.calls == calls + 1
    assert refresher.ready


async def test_a_token_fixed_while_sts_answered_is_tried_at_once(make: Factory) -> None:
    """The watch compares with what the failed attempt read: a token fixed between that read
    and STS's refusal is a change, not the new normal."""
    watch = FakeWatch()
    watch.read = 1  # the attempt read the bad token...
    watch.value = 2  # ...which was replaced before STS refused it
    policy = RefreshPolicy(retry_base=1, retry_cap=60, slow_retry=300)
    refresher, exchanger, clock = make(
        [sts_error("InvalidIdentityToken", Disposition.FATAL), 3600],
        policy=policy,
        token_watch=watch,
    )
    await clock.advance(TOKEN_WATCH_INTERVAL + 1)
    assert exchanger.calls == 2
    assert refresher.ready


async def test_stopping_a_refresher_watching_its_token_ends_the_watch(make: Factory) -> None:
    """A refresher resting after a token failure watches the token source; stop calls that
    off with the alarm and returns it to await: nothing of the refresher lives on."""
    watch = FakeWatch()
    policy = RefreshPolicy(retry_base=1, retry_cap=60, slow_retry=300)
    refresher, exchanger, clock = make(
        [sts_error("InvalidIdentityToken", Disposition.FATAL)],
        policy=policy,
        token_watch=watch,
        start=False,
    )
    refresher.start()
    await clock.advance(TOKEN_WATCH_INTERVAL * 3)
    assert watch.looks >= 2  # watching
    ending = refresher.stop()
    assert ending is not None
    await ending
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert clock.next_wakeup() is None
    looks, calls = watch.looks, exchanger.calls
    watch.value = 2
    await clock.advance(3600)
    assert (watch.looks, exchanger.calls) == (looks, calls)


async def test_a_refresher_started_again_before_its_stopped_exchange_ended_refreshes(
    make: Factory,
) -> None:
    """stop, then start before the cancelled exchange has ended: the new schedule runs its
    own exchange instead of waiting on the cancelled one, and keeps refreshing."""
    refresher, exchanger, clock = make([3600], start=False)
    exchanger.gate = asyncio.Event()
    refresher.start()
    await settle()
    assert exchanger.calls == 1  # in flight, held at the gate
    ending = refresher.stop()
    refresher.start()
    assert ending is not None
    await ending
    exchanger.gate.set()
    await settle()
    assert exchanger.calls == 2
    assert refresher.ready and refresher.running
    await clock.advance(3600)
    assert exchanger.calls >= 3  # on schedule: refreshed ahead of expiry
    assert refresher.ready
    ending = refresher.stop()
    if ending is not None:
        await ending


async def test_the_token_is_not_watched_for_other_failures(make: Factory) -> None:
    """AccessDenied is not the token's fault: the token source is not even looked at."""
    watch = FakeWatch()
    _, exchanger, clock = make([DENIED], token_watch=watch)
    await clock.advance(100)
    watch.value = 2
    await clock.advance(100)
    assert watch.looks == 0
    assert exchanger.calls == 1


async def test_short_session_with_a_correct_clock_is_not_blamed_on_ntp(make: Factory) -> None:
    """STS granting less than the safety margin, clocks agreeing: a short-session error."""
    refresher, _, _ = make([60], clock_skew=lambda: 0.4)
    await settle()
    assert not refresher.ready
    labels = {"role": "default", "result": "failure"}
    name = "credential_sidecar_sts_exchanges_total"
    assert metric(refresher, name, error_code="ShortSessionError", **labels) == 1
    assert metric(refresher, name, error_code="ClockSkewError", **labels) == 0


async def test_clock_ahead_of_sts_is_blamed_on_ntp(make: Factory) -> None:
    """Credentials expired by a clock 4000 s ahead of STS's Date: a clock-skew error."""
    refresher, _, _ = make([3600], skew=4000, clock_skew=lambda: 4000.0)
    await settle()
    name = "credential_sidecar_sts_exchanges_total"
    labels = {"role": "default", "result": "failure"}
    assert metric(refresher, name, error_code="ClockSkewError", **labels) == 1


async def test_expiry_by_wall_clock_is_not_served(make: Factory) -> None:
    """A suspend the monotonic clock did not see: expired by the wall clock means not served."""
    refresher, _, clock = make([3600, THROTTLED])
    await settle()
    assert refresher.ready
    await clock.suspend(2 * HOUR, counted=False)
    assert refresher.servable() is None
    assert not refresher.ready
    assert refresher.status().seconds_until_expiry == 0


async def test_refresh_due_during_suspend_runs_at_resume(make: Factory) -> None:
    """Resumed after 2 h (boot clock counted it): refreshed at once, fresh credentials served."""
    refresher, exchanger, clock = make([3600])
    await settle()
    await clock.suspend(2 * HOUR)
    assert exchanger.calls == 2
    snap = refresher.servable()
    assert snap is not None
    assert snap.expires_at - clock.monotonic() == pytest.approx(HOUR)


async def test_exchange_timeout_runs_on_the_injected_clock(make: Factory) -> None:
    """A hanging exchange times out after exchange_timeout of fake time, no real waiting."""
    refresher, exchanger, clock = make([3600], exchange_timeout=30)
    exchanger.gate = asyncio.Event()
    await clock.advance(29)
    assert refresher.consecutive_failures == 0
    await clock.advance(1)
    assert refresher.consecutive_failures == 1
    name = "credential_sidecar_sts_exchanges_total"
    labels = {"role": "default", "result": "failure", "error_code": "Timeout"}
    assert metric(refresher, name, **labels) == 1


async def test_stopping_cancels_the_exchange_in_flight(make: Factory) -> None:
    """Cancelling run() cancels and awaits the hanging exchange; no failure is counted."""
    refresher, exchanger, _ = make([3600], start=False)
    exchanger.gate = asyncio.Event()
    task = asyncio.create_task(refresher.run())
    await settle()
    inflight = refresher._inflight
    assert inflight is not None
    task.cancel()
    await asyncio.wait([task])
    assert inflight.cancelled()
    assert refresher.consecutive_failures == 0
    name = "credential_sidecar_sts_exchanges_total"
    for code in ("Unexpected", "Timeout", "CancelledError"):
        assert metric(refresher, name, role="default", result="failure", error_code=code) == 0
