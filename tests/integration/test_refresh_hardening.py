"""The daemon's refresh under abuse and accident: SIGHUP storms, fixed tokens, stopping mid-call."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from sidecar.devmode.issuer import OidcIssuer
from tests.peers import DaemonProcess, EmulatorThread, daemon, emulator_args, http_get


def args_for(emulator: EmulatorThread, token_file: Path, tmp_path: Path, *extra: str) -> list[str]:
    fast = ["--retry-base", "100ms", "--retry-cap", "500ms", "--attempt-timeout", "2s"]
    return emulator_args(emulator, token_file, tmp_path / "auth-token", *fast, *extra)


def wait_until(condition: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def errors_logged(process: DaemonProcess) -> list[str]:
    """Every error-level line (JSON or not: a traceback printed by asyncio counts too)."""
    found = []
    for line in process.lines:
        try:
            if json.loads(line).get("level") in ("error", "critical"):
                found.append(line)
        except ValueError:
            if line.strip():
                found.append(line)
    return found


def test_sighup_storm_during_throttling_costs_no_sts_call(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """200 SIGHUPs while STS throttles and the daemon backs off: not one extra STS call."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    emulator.add_fault(error="Throttling", message="Rate exceeded")
    before = emulator.calls()
    args = emulator_args(
        emulator, token, tmp_path / "auth-token", "--retry-base", "20s", "--retry-cap", "20s"
    )
    with daemon(args) as process:
        failed = process.wait_event("refresh_failed")
        assert failed["error_code"] == "Throttling"
        assert process.proc is not None
        for _ in range(200):
            process.proc.send_signal(signal.SIGHUP)
        process.wait_event("refresh_coalesced")
        time.sleep(0.5)
        assert emulator.calls() - before == 1


def test_fixed_token_is_tried_without_sighup(emulator: EmulatorThread, tmp_path: Path) -> None:
    """A rejected token, on the 1 h slow pace: fixing the file is noticed within seconds."""
    forger = OidcIssuer(emulator.issuer.url)  # same issuer URL, wrong signing key
    token = tmp_path / "token"
    token.write_text(forger.mint("repo:org/app"))
    before = emulator.calls()
    args = args_for(emulator, token, tmp_path, "--slow-retry", "1h")
    with daemon(args) as process:
        # Past the quick retries InvalidIdentityToken gets (3), into the 1 h pace.
        wait_until(lambda: emulator.calls() - before >= 4, what="the quick retries")
        time.sleep(0.5)
        assert emulator.calls() - before == 4
        token.write_text(emulator.issuer.mint("repo:org/app"))  # the operator fixes it
        process.wait_event("exchanged", timeout=10)
        assert process.events("token_changed")


def test_sigterm_while_sts_hangs_is_clean(emulator: EmulatorThread, tmp_path: Path) -> None:
    """SIGTERM with an exchange hanging in STS: exit 0, no error line, no failure counted."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    emulator.add_fault(hang=True)
    before = emulator.calls()
    process = DaemonProcess(args_for(emulator, token, tmp_path, "--attempt-timeout", "30s"))
    try:
        process.start()
        wait_until(lambda: emulator.calls() - before >= 1, what="the hanging STS call")
        code, _ = process.stop()
    finally:
        process.kill()
    assert code == 0
    assert errors_logged(process) == []
    assert not process.events("refresh_failed")
    assert "never retrieved" not in process.output


def test_503_after_the_credentials_ran_out_is_immediate(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """Once a role had credentials, its 503s come at once, not after the cold-start wait."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("repo:org/app"))
    emulator.add_fault(lifetime=5, count=1)
    margins = ["--safety-margin", "1s", "--refresh-ahead-min", "1s"]
    args = args_for(emulator, token, tmp_path, *margins, "--cold-start-wait", "900ms")
    with daemon(args) as process:
        process.wait_event("exchanged")
        emulator.add_fault(error="ServiceUnavailable", status=503, message="outage")
        auth = process.auth_token()
        wait_until(lambda: http_get(process.url, auth)[0] == 503, what="the credentials to run out")
        for _ in range(3):
            started = time.monotonic()
            assert http_get(process.url, auth)[0] == 503
            assert time.monotonic() - started < 0.5
