"""Soak: a fixed time of valid, hostile and broken clients while STS faults come and go.

    python bench/soak.py [--seconds 60] [--phase 6]

Starts ``serve --dev`` (with its IMDS listener) as a real process and, for ``--seconds``,
runs at once:

* valid clients: keep-alive GETs with the auth token (and IMDSv2 clients), from 127.0.0.1;
* wrong-token clients, each from its own loopback address (127.0.1.x), as fast as they can;
* malformed requests over raw sockets: bare LF, NUL in a header value, huge headers,
  garbage request lines, truncated and pipelined requests, from 127.0.2.x;
* slow clients that never finish their headers (slowloris), from 127.0.3.x;
* a connection flood: connect, send nothing or half a line, close, repeat, from 127.0.4.x;

while the STS emulator cycles through faults (throttling, a hung STS, 5xx, slow answers,
short-lived credentials) and the daemon gets a SIGHUP at every phase change.

It reports requests by client kind and status, the p99 latency of the valid ones, the
daemon's RSS and open file descriptors before and after, and its log size; and fails
(exit 1) if a valid request got anything but 200 or 503 (a connection error included), if
any expired credential was served, if a served secret or the auth token appears in the
log, or if RSS or descriptors did not come back near where they started.

Traffic goes to 127.0.0.0/8 only; the run is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from harness import dev_lines, free_port, process, serve_dev

#: Requests a hostile client may have outstanding; they are bounded like everything else.
CLIENT_TIMEOUT = 5.0


@dataclass
class Tally:
    """What every kind of client saw."""

    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    valid_latencies: list[float] = field(default_factory=list)
    #: Each distinct problem and how often it happened.
    problems: Counter[str] = field(default_factory=Counter)
    #: Secrets the daemon served: none of them may appear in its log.
    served_secrets: set[str] = field(default_factory=set)
    expired_served: int = 0

    def count(self, kind: str, outcome: str | int) -> None:
        self.statuses.setdefault(kind, Counter())[str(outcome)] += 1

    def problem(self, text: str) -> None:
        if text in self.problems or len(self.problems) < 50:
            self.problems[text] += 1


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_expiration(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def check_body(kind: str, body: bytes, tally: Tally) -> None:
    """A 200 body must hold credentials that have not expired."""
    try:
        data = json.loads(body)
        expiration = parse_expiration(data["Expiration"])
        secrets = (data["SecretAccessKey"], data["Token"])
    except (ValueError, KeyError, TypeError) as exc:
        tally.problem(f"{kind}: 200 with an unusable body ({type(exc).__name__})")
        return
    tally.served_secrets.update(secrets)
    if expiration <= datetime.now(UTC):
        tally.expired_served += 1
        tally.problem(f"{kind}: served credentials that expired at {data['Expiration']}")


async def forever(stop: asyncio.Event, step: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        await step()


async def valid_client(url: str, token: str, stop: asyncio.Event, tally: Tally) -> None:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def step() -> None:
            started = time.perf_counter()
            try:
                async with session.get(url, headers={"Authorization": token}) as response:
                    body = await response.read()
                    status = response.status
                    content_type = response.headers.get("Content-Type", "")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.count("valid", type(exc).__name__)
                tally.problem(f"valid: {type(exc).__name__}")
                await asyncio.sleep(0.05)
                return
            tally.valid_latencies.append(time.perf_counter() - started)
            tally.count("valid", status)
            if status == 200:
                check_body("valid", body, tally)
            elif status == 503:
                if not content_type.startswith("application/json"):
                    tally.problem(f"valid: 503 with Content-Type {content_type!r}")
                await asyncio.sleep(0.2)  # as an SDK would, briefly
            else:
                tally.problem(f"valid: HTTP {status}: {body[:200]!r}")
            await asyncio.sleep(0.01)

        await forever(stop, step)


async def imds_client(base: str, stop: asyncio.Event, tally: Tally) -> None:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def step() -> None:
            try:
                async with session.put(
                    base + "latest/api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
                ) as response:
                    session_token = await response.text()
                    if response.status != 200:
                        tally.count("imds", response.status)
                        tally.problem(f"imds: token PUT answered {response.status}")
                        return
                path = "latest/meta-data/iam/security-credentials/"
                headers = {"X-aws-ec2-metadata-token": session_token}
                async with session.get(base + path, headers=headers) as response:
                    name = await response.text()
                async with session.get(base + path + name, headers=headers) as response:
                    body = await response.read()
                    tally.count("imds", response.status)
                    if response.status == 200:
                        check_body("imds", body, tally)
                    elif response.status != 503:
                        tally.problem(f"imds: HTTP {response.status}: {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.count("imds", type(exc).__name__)
                tally.problem(f"imds: {type(exc).__name__}")
            await asyncio.sleep(0.05)

        await forever(stop, step)


async def wrong_token_client(url: str, source: str, stop: asyncio.Event, tally: Tally) -> None:
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def step() -> None:
            try:
                async with session.get(url, headers={"Authorization": "x" * 43}) as response:
                    await response.read()
                    tally.count("wrong_token", response.status)
                    if response.status == 200:
                        tally.problem("wrong_token: got 200")
                    retry_after = response.headers.get("Retry-After")
                    if response.status == 429 and retry_after:
                        # A hostile client ignores Retry-After; a bounded pause keeps
                        # the benchmark from measuring only its own loop.
                        await asyncio.sleep(0.01)
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.count("wrong_token", type(exc).__name__)
                await asyncio.sleep(0.05)

        await forever(stop, step)


def malformed_requests(token: str) -> list[bytes]:
    """Requests aiohttp's parser refuses, some carrying the real auth token."""
    return [
        b"GET /v1/credentials HTTP/1.1\nHost: x\nAuthorization: " + token.encode() + b"\n\n",
        b"GET /v1/credentials HTTP/1.1\r\nAuthorization: "
        + token.encode()
        + b"\x00\r\nHost: x\r\n\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),
        b"GARBAGE\r\n\r\n",
        b"GET /v1/credentials HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\n" + b"H: v\r\n" * 500 + b"\r\n",
        b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\n\r\nBROKEN\r\n\r\n",
        b"GET /v1/cred",
    ]


async def raw_exchange(host: str, port: int, source: str, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        writer.write(payload)
        with contextlib.suppress(OSError):
            await writer.drain()
        if payload.endswith(b"/v1/cred"):  # truncated: hang up without finishing
            return b""
        return await reader.read(65536)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def malformed_client(
    host: str, port: int, source: str, token: str, stop: asyncio.Event, tally: Tally
) -> None:
    payloads = itertools.cycle(malformed_requests(token))

    async def step() -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                answer = await raw_exchange(host, port, source, next(payloads))
        except (OSError, TimeoutError) as exc:
            tally.count("malformed", type(exc).__name__)
            return
        if not answer:
            tally.count("malformed", "closed")
            return
        status = answer.split(b" ", 2)[1].decode(errors="replace") if b" " in answer else "?"
        tally.count("malformed", status)
        if status.startswith("5") and status != "503":
            tally.problem(f"malformed: HTTP {status}")
        if b"\r\n\r\n" in answer and status not in ("200", "503"):
            head, _, body = answer.partition(b"\r\n\r\n")
            content_type = next(
                (h for h in head.lower().split(b"\r\n") if h.startswith(b"content-type:")), b""
            )
            if b"application/json" not in content_type:
                tally.problem(f"malformed: HTTP {status} answered with {content_type!r}")
            elif body and not body.lstrip().startswith(b"{"):
                tally.problem(f"malformed: HTTP {status} body is not JSON: {body[:80]!r}")

    await forever(stop, step)


async def connect(
    host: str, port: int, source: str, tally: Tally, kind: str, pause: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection from ``source``; None (counted under ``kind``, after ``pause``) if refused."""
    try:
        return await asyncio.open_connection(host, port, local_addr=(source, 0))
    except OSError as exc:
        tally.count(kind, type(exc).__name__)
        await asyncio.sleep(pause)
        return None


async def slow_client(host: str, port: int, source: str, stop: asyncio.Event, tally: Tally) -> None:
    """Opens a connection and trickles a request line that never ends, until cut off."""

    async def step() -> None:
        connection = await connect(host, port, source, tally, "slow", pause=0.2)
        if connection is None:
            return
        reader, writer = connection
        started = time.monotonic()
        try:
            writer.write(b"GET /v1/credentials HTTP/1.1\r\nHost: x\r\n")
            while not stop.is_set():
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        if not await reader.read(4096):
                            break  # the daemon hung up on us
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        held = time.monotonic() - started
        tally.count("slow", "cut_off" if not stop.is_set() else "held_to_end")
        tally.statuses.setdefault("slow_held_seconds", Counter())[f"{int(held)}s"] += 1

    await forever(stop, step)


async def flood_client(
    host: str, port: int, source: str, stop: asyncio.Event, tally: Tally
) -> None:
    """Connects and hangs up as fast as it can."""

    async def step() -> None:
        connection = await connect(host, port, source, tally, "flood", pause=0.01)
        if connection is None:
            return
        _, writer = connection
        writer.write(b"GET /v1/cre")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        tally.count("flood", "connected")

    await forever(stop, step)


FAULTS: list[tuple[str, dict[str, object] | None]] = [
    ("healthy", None),
    ("throttling", {"error": "Throttling", "message": "Rate exceeded"}),
    ("healthy", None),
    ("sts hangs", {"hang": True}),
    ("healthy", None),
    ("sts 500", {"error": "InternalFailure", "status": 500}),
    ("slow sts", {"delay": 2}),
    ("short-lived credentials", {"lifetime": 75}),
]


async def fault_cycle(
    sts: str, pid: int, phase: float, stop: asyncio.Event, log: list[str]
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for name, spec in itertools.cycle(FAULTS):
            async with session.delete(sts + "/_emulator/faults"):
                pass
            if spec is not None:
                async with session.post(sts + "/_emulator/faults", json=spec):
                    pass
            os.kill(pid, signal.SIGHUP)
            log.append(name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(phase):
                    await stop.wait()
            if stop.is_set():
                async with session.delete(sts + "/_emulator/faults"):
                    pass
                return


def loopback_sources(block: int, count: int) -> list[str]:
    return [f"127.0.{block}.{i}" for i in range(1, count + 1)]


async def soak(
    args: argparse.Namespace, daemon: subprocess.Popen[str], lines: dict[str, str]
) -> int:
    tally = Tally()
    port, imds_port = args.port, args.imds_port
    url = f"http://127.0.0.1:{port}/v1/credentials"
    imds = f"http://127.0.0.1:{imds_port}/"
    token, sts = lines["token"], lines["AWS_ENDPOINT_URL_STS"]

    warm = asyncio.Event()
    warmers = [asyncio.create_task(valid_client(url, token, warm, tally)) for _ in range(4)]
    await asyncio.sleep(2)
    warm.set()
    await asyncio.gather(*warmers)
    tally.statuses.clear()
    tally.valid_latencies.clear()
    before = (rss_kib(daemon.pid), open_fds(daemon.pid))

    stop = asyncio.Event()
    phases: list[str] = []
    tasks = [asyncio.create_task(fault_cycle(sts, daemon.pid, args.phase, stop, phases))]
    tasks += [asyncio.create_task(valid_client(url, token, stop, tally)) for _ in range(8)]
    tasks += [asyncio.create_task(imds_client(imds, stop, tally)) for _ in range(2)]
    tasks += [
        asyncio.create_task(wrong_token_client(url, source, stop, tally))
        for source in loopback_sources(1, args.hostile)
    ]
    tasks += [
        asyncio.create_task(malformed_client("127.0.0.1", target, source, token, stop, tally))
        for target in (port, imds_port)
        for source in loopback_sources(2, max(1, args.hostile // 2))
    ]
    tasks += [
        asyncio.create_task(slow_client("127.0.0.1", port, source, stop, tally))
        for source in loopback_sources(3, args.slow)
    ]
    tasks += [
        asyncio.create_task(flood_client("127.0.0.1", port, source, stop, tally))
        for source in loopback_sources(4, max(1, args.hostile // 2))
    ]
    peak_rss, peak_fds = before
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        peak_rss = max(peak_rss, rss_kib(daemon.pid))
        peak_fds = max(peak_fds, open_fds(daemon.pid))
    stop.set()
    await asyncio.gather(*tasks)

    # Give the daemon its idle and header timeouts to drop what the clients left behind.
    await asyncio.sleep(args.settle)
    after = (rss_kib(daemon.pid), open_fds(daemon.pid))
    return report(args, tally, phases, before, after, (peak_rss, peak_fds), token)


def report(
    args: argparse.Namespace,
    tally: Tally,
    phases: list[str],
    before: tuple[int, int],
    after: tuple[int, int],
    peak: tuple[int, int],
    token: str,
) -> int:
    log_bytes = Path(args.log).stat().st_size
    log_text = Path(args.log).read_text(errors="replace")
    problems = [f"{text} (x{count})" for text, count in tally.problems.items()]
    valid = tally.statuses.get("valid", Counter())
    for outcome, count in valid.items():
        if outcome not in ("200", "503"):
            problems.append(f"{count} valid requests ended with {outcome}")
    if not valid.get("200"):
        problems.append("no valid request was answered 200")
    if tally.expired_served:
        problems.append(f"{tally.expired_served} expired credentials served")
    leaked = [s for s in tally.served_secrets if s in log_text]
    if token in log_text:
        problems.append("the auth token appears in the log")
    if leaked:
        problems.append(f"{len(leaked)} served secrets appear in the log")
    rss_growth_mib = (after[0] - before[0]) / 1024
    if rss_growth_mib > args.max_rss_growth:
        problems.append(f"RSS grew by {rss_growth_mib:.1f} MiB (limit {args.max_rss_growth})")
    if after[1] > before[1] + args.max_fd_growth:
        problems.append(f"open descriptors went from {before[1]} to {after[1]}")

    latencies = sorted(tally.valid_latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    print(f"soak: {args.seconds}s, phases of {args.phase}s: {', '.join(phases)}")
    print("\n| client | outcomes |\n|---|---|")
    for kind, counts in sorted(tally.statuses.items()):
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        print(f"| {kind} | {shown} |")
    print(
        f"\nvalid requests: {len(latencies)}, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f"\nRSS: {before[0] / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f}, "
        f"{after[0] / 1024:.1f} after"
        f"\nopen descriptors: {before[1]} before, peak {peak[1]}, {after[1]} after"
        f"\nlog: {log_bytes} bytes, {log_text.count(chr(10))} lines"
    )
    if problems:
        print("\nFAILED:")
        for text in problems:
            print(f"  - {text}")
        return 1
    print("\nOK: valid clients only saw 200/503, nothing expired was served, nothing leaked")
    return 0


def daemon_argv(args: argparse.Namespace) -> list[str]:
    return serve_dev(
        args.port,
        *("--imds-listen", f"127.0.0.1:{args.imds_port}", "--log-format", "json"),
        *("--safety-margin", "60s", "--attempt-timeout", "3s"),
        *("--retry-cap", "5s", "--slow-retry", "10s"),
    )


def soak_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SIDECAR_"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the mix runs")
    parser.add_argument("--phase", type=float, default=6, help="seconds per STS fault phase")
    parser.add_argument("--hostile", type=int, default=16, help="wrong-token clients")
    parser.add_argument("--slow", type=int, default=200, help="slow (slowloris) clients")
    parser.add_argument("--settle", type=float, default=12, help="wait before measuring after")
    parser.add_argument("--max-rss-growth", type=float, default=20, help="MiB")
    parser.add_argument("--max-fd-growth", type=int, default=8)
    parser.add_argument("--log", default=None, help="where the daemon's log goes")
    args = parser.parse_args()
    args.port, args.imds_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="credential-sidecar-soak-") as tmp:
        args.log = args.log or str(Path(tmp) / "daemon.log")
        with open(args.log, "w") as log, process(daemon_argv(args), log, soak_env()) as daemon:
            code = asyncio.run(soak(args, daemon, dev_lines(daemon)))
    sys.exit(code)


if __name__ == "__main__":
    main()
