"""The daemon process through STS trouble, driven by the emulator's fault injection.

Short-lived credentials (the emulator's ``lifetime`` fault) and small safety margins keep
these tests to seconds; the policy is the same one the fake-clock tests pin down.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from sidecar.devmode.issuer import OidcIssuer
from sidecar.devmode.token_writer import ProjectedTokenWriter
from tests.peers import DaemonProcess, EmulatorThread, daemon, emulator_args, http_get


def args_for(emulator: EmulatorThread, token_file: Path, tmp_path: Path, *extra: str) -> list[str]:
    fast_retries = ["--retry-base", "100ms", "--retry-cap", "500ms", "--attempt-timeout", "2s"]
    return emulator_args(emulator, token_file, tmp_path / "auth-token", *fast_retries, *extra)


def write_token(
    emulator: EmulatorThread, tmp_path: Path, subject: str = "repo:org/app", **claims: object
) -> Path:
    path = tmp_path / "token"
    path.write_text(emulator.issuer.mint(subject, **claims))  # type: ignore[arg-type]
    return path


def wait_until(condition: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(process: DaemonProcess, path: str = "/v1/credentials") -> int:
    token = process.auth_token() if path == "/v1/credentials" else None
    return http_get(process.base + path, token)[0]


def fetch(process: DaemonProcess) -> tuple[int, dict[str, str]]:
    code, _, body = http_get(process.url, process.auth_token())
    return code, json.loads(body)


def test_cold_start_storm_costs_one_exchange(emulator: EmulatorThread, tmp_path: Path) -> None:
    """300 concurrent requests before the first credentials: one STS call, each answered < 1 s."""
    emulator.add_fault(delay=0.4, count=1)
    before = emulator.calls()
    with daemon(args_for(emulator, write_token(emulator, tmp_path), tmp_path)) as process:
        token = (tmp_path / "auth-token").read_text()

        async def one(session: aiohttp.ClientSession) -> tuple[int, float]:
            started = time.monotonic()
            async with session.get(process.url, headers={"Authorization": token}) as response:
                await response.read()
                return response.status, time.monotonic() - started

        async def storm() -> list[tuple[int, float]]:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                return await asyncio.gather(*(one(session) for _ in range(300)))

        results = asyncio.run(storm())
        process.wait_event("exchanged")
    assert emulator.calls() - before == 1
    assert {code for code, _ in results} <= {200, 503}
    assert sum(code == 200 for code, _ in results) > 0
    assert max(elapsed for _, elapsed in results) < 1.0


def test_throttling_at_startup(emulator: EmulatorThread, tmp_path: Path) -> None:
    """Throttled at start: bounded, backed-off attempts; ready soon after STS recovers."""
    emulator.add_fault(error="Throttling", message="Rate exceeded")
    before = emulator.calls()
    with daemon(args_for(emulator, write_token(emulator, tmp_path), tmp_path)) as process:
        failed = process.wait_event("refresh_failed")
        assert failed["error_code"] == "Throttling"
        assert status(process) == 503
        assert status(process, "/readyz") == 503
        time.sleep(1.5)
        attempts = emulator.calls() - before
        # Backoff: full jitter up to 100ms * 2^n (cap 500ms) with a 50ms floor, so at most
        # one attempt per 50ms however the dice fall; a tight loop would make hundreds.
        assert 2 <= attempts <= 1.5 / 0.05 + 1
        emulator.clear_faults()
        recovered_at = time.monotonic()
        process.wait_event("exchanged", timeout=5)
        assert time.monotonic() - recovered_at < 1.5
        assert status(process) == 200
        assert status(process, "/readyz") == 200


def test_outage_while_cached_credentials_are_valid(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """STS down after the first exchange: the cached credentials are still served; ready."""
    with daemon(args_for(emulator, write_token(emulator, tmp_path), tmp_path)) as process:
        process.wait_event("exchanged")
        first = fetch(process)[1]
        emulator.add_fault(error="InternalFailure", status=500, message="down")
        for _ in range(5):
            code, body = fetch(process)
            assert code == 200
            assert body == first
        assert status(process, "/readyz") == 200


def test_outage_past_expiry(emulator: EmulatorThread, tmp_path: Path) -> None:
    """STS down and the credentials running out: served while valid, then 503; never expired."""
    emulator.add_fault(lifetime=5, count=1)
    args = args_for(
        emulator,
        write_token(emulator, tmp_path),
        tmp_path,
        "--safety-margin",
        "1s",
        "--refresh-ahead-min",
        "1s",
    )
    with daemon(args) as process:
        process.wait_event("exchanged")
        emulator.add_fault(error="ServiceUnavailable", status=503, message="outage")
        seen_503 = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen_503:
            code, body = fetch(process)
            if code == 200:
                expires = datetime.strptime(body["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
                assert expires.replace(tzinfo=UTC) > datetime.now(UTC)
            else:
                assert code == 503
                assert body["Code"] == "CredentialsUnavailable"
                seen_503 = True
            time.sleep(0.1)
        assert seen_503
        assert status(process, "/readyz") == 503
        emulator.clear_faults()
        process.wait_event("exchanged", timeout=5)
        assert status(process) == 200


def test_rejected_token_then_fixed(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A token STS rejects (bad signature): not ready, clear error; recovers once fixed."""
    forger = OidcIssuer(emulator.issuer.url)  # same issuer URL, wrong signing key
    token_file = tmp_path / "token"
    token_file.write_text(forger.mint("repo:org/app"))
    args = args_for(emulator, token_file, tmp_path, "--slow-retry", "300ms")
    with daemon(args) as process:
        failed = process.wait_event("refresh_failed")
        assert failed["error_code"] == "InvalidIdentityToken"
        assert "signature" in failed["msg"].lower()
        assert status(process, "/readyz") == 503
        write_token(emulator, tmp_path)  # the operator fixes the token
        process.wait_event("exchanged", timeout=10)
        assert status(process, "/readyz") == 200
        assert process.events("recovered")


def test_sighup_retries_at_once(emulator: EmulatorThread, tmp_path: Path) -> None:
    """After AccessDenied the daemon waits at the slow pace; SIGHUP makes it retry now."""
    emulator.add_fault(
        error="AccessDenied",
        status=403,
        message="Not authorized to perform sts:AssumeRoleWithWebIdentity",
    )
    args = args_for(emulator, write_token(emulator, tmp_path), tmp_path, "--slow-retry", "1h")
    with daemon(args) as process:
        failed = process.wait_event("refresh_failed")
        assert failed["retry_in_s"] == 3600
        assert "trust policy" in failed["msg"]
        emulator.clear_faults()  # the operator fixes the trust policy...
        assert process.proc is not None
        process.proc.send_signal(signal.SIGHUP)  # ...and tells the daemon
        # (at most REFRESH_REQUEST_DEBOUNCE = 5 s after the failed attempt)
        process.wait_event("exchanged", timeout=10)
        assert status(process) == 200


def test_audience_rejected_by_sts_is_explained(emulator: EmulatorThread, tmp_path: Path) -> None:
    """STS refuses the token's audience: the log names the aud and the provider to fix."""
    token_file = write_token(emulator, tmp_path, audience="https://gitlab.example")
    args = args_for(emulator, token_file, tmp_path, "--audience", "https://gitlab.example")
    with daemon(args) as process:
        failed = process.wait_event("refresh_failed")
    assert failed["error_code"] == "InvalidIdentityToken"
    assert "the token's aud is https://gitlab.example" in failed["msg"]
    assert "must list it as an audience" in failed["msg"]


def test_audience_is_checked_before_sts(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A token for another audience is refused without calling STS, naming the fix."""
    token_file = write_token(emulator, tmp_path, audience="https://gitlab.example")
    before = emulator.calls()
    with daemon(args_for(emulator, token_file, tmp_path)) as process:
        failed = process.wait_event("refresh_failed")
        assert status(process, "/readyz") == 503
    assert failed["error_code"] == "TokenError"
    assert "audience https://gitlab.example" in failed["msg"]
    assert "--audience" in failed["msg"]
    assert emulator.calls() == before


@pytest.mark.parametrize("how", ["kubelet", "mv"])
def test_token_rotation_is_used(emulator: EmulatorThread, tmp_path: Path, how: str) -> None:
    """After a ..data symlink swap or an mv over the file, STS gets the new token."""
    writer = ProjectedTokenWriter(tmp_path / "serviceaccount")
    path = writer.path if how == "kubelet" else tmp_path / "token"

    def rotate(subject: str) -> None:
        token = emulator.issuer.mint(subject)
        if how == "kubelet":
            writer.write(token)
        else:
            staged = tmp_path / "token.new"
            staged.write_text(token)
            staged.replace(path)

    rotate("pod-token-1")
    emulator.add_fault(lifetime=8)  # every session 8 s: refreshed every ~2 s
    args = args_for(emulator, path, tmp_path, "--safety-margin", "1s", "--refresh-ahead-min", "1s")
    with daemon(args) as process:
        process.wait_event("exchanged")
        assert emulator.last_subject() == "pod-token-1"
        rotate("pod-token-2")
        wait_until(lambda: emulator.last_subject() == "pod-token-2", what="the new token")
        assert status(process) == 200
        assert not process.events("refresh_failed")
