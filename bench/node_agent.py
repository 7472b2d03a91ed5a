"""Benchmark: the node agent with thousands of identities cached, beside the sidecar.

    python bench/node_agent.py [--identities 5000] [--namespaces 50] [--seconds 5]
                               [--rounds 3] [--connections 200] [--sts-rate 500] [--json]

A simulated cluster runs in its own process (the dev OIDC issuer playing the cluster's
service-account issuer, and the STS emulator trusting it, counting its calls): it mints one
pod token per service account and writes the issuer's JWKS to a file. The node agent runs
as a real process with ``--identities`` associations (each service account its own role in
the emulator's account 123456789012) over ``--namespaces`` namespaces; the sidecar
(``serve``, one role, its auth token) runs as a real process against the same emulator.

1. Fill: every service account's token is presented once (bounded concurrency, 503s
   retried); the emulator must have seen exactly one STS call per identity.
2. Memory: the agent's RSS idle, with one identity and with all of them, beside the
   sidecar's RSS; the cost of one identity is the slope between the last two.
3. Cache hits: ``wrk`` at ``--connections`` connections for ``--seconds``, alternating the
   agent (each request with the next service account's token, over all of them) and the
   sidecar (its one auth token, through the same Lua script), ``--rounds`` times; the
   emulator must see no STS call meanwhile.

The machine is shared and noisy: what is stable is the agent's figures as ratios of the
sidecar's, measured in the same run. Needs wrk (``apt-get install wrk``). Traffic goes to
127.0.0.1 only; every step is bounded in time. Exits 1 if an STS count is not what it must
be or a cache-hit request did not get a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from harness import cpu_ticks, cpu_us_per_request, free_port, process, run_wrk

ACCOUNT = "123456789012"
WEB_IDENTITY = "AssumeRoleWithWebIdentity"

#: The simulated cluster: issuer + STS emulator on one loopback listener, in its own
#: process so that minting and STS answers never share a CPU loop with what is measured.
#: argv: directory (holds ``subjects``; gets ``tokens`` and ``jwks.json``), port.
CLUSTER = """
import asyncio, json, sys
from pathlib import Path
from sidecar.devmode.environment import serve_emulator

async def main(directory: Path, port: int) -> None:
    async with serve_emulator(port=port) as (base, issuer, emulator):
        subjects = (directory / "subjects").read_text().split()
        tokens = "".join(issuer.mint(s, ttl=3 * 3600) + "\\n" for s in subjects)
        (directory / "tokens").write_text(tokens)
        (directory / "jwks.json").write_text(json.dumps(issuer.jwks()))
        print(json.dumps({"base": base, "issuer": issuer.url}), flush=True)
        await asyncio.Event().wait()

asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
"""

#: wrk: each request carries the next line of the file given after ``--``, so a run over
#: the agent spreads its requests over every identity. The sidecar's file has one line.
ROTATE_LUA = """
local tokens = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  i = math.random(#tokens)
end
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/v1/credentials", {["Authorization"] = tokens[i]})
end
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    #: The server's CPU time per request (see harness.cpu_us_per_request).
    cpu_us: float


@dataclass
class Fill:
    seconds: float
    sts_calls: int
    retried_503: int


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core ``pid`` used over the next ``seconds`` (user + system)."""
    before, started = cpu_ticks(pid), time.monotonic()
    time.sleep(seconds)
    used = (cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK")
    return used / (time.monotonic() - started)


def get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - loopback
    if token:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_status(url: str, token: str | None, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(url, token, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer 200 at {url} within {timeout:g} s")
        time.sleep(0.1)


def sts_calls(base: str) -> int:
    stats = json.loads(get(f"{base}/_emulator/stats")[1])
    return int(stats["calls"].get(WEB_IDENTITY, 0))


async def present_all(url: str, tokens: list[str], concurrency: int, deadline: float) -> int:
    """Each token once until it gets a 200 (503: the identity's first STS call is still
    under way or queued behind the rate cap: retry); returns how many 503s were retried."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)
    retried = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal retried
        while not queue.empty():
            token = queue.get_nowait()
            while True:
                if time.monotonic() > deadline:
                    raise RuntimeError("the fill did not finish in time")
                async with session.get(url, headers={"Authorization": token}) as response:
                    await response.read()
                    if response.status == 200:
                        break
                    if response.status != 503:
                        raise RuntimeError(f"fill: the agent answered {response.status}")
                retried += 1
                await asyncio.sleep(0.05)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return retried


def wrk(pid: int, url: str, script: Path, lines: Path, seconds: int, connections: int) -> Load:
    """``wrk`` against ``url`` served by process ``pid``."""
    before = cpu_ticks(pid)
    run = run_wrk(url, seconds, connections, ["-s", str(script)], [str(lines)])
    cpu_us = cpu_us_per_request(pid, before, run.requests)
    return Load(run.rps, run.p50_ms, run.p99_ms, run.non_2xx, run.socket_errors, cpu_us)


def associations(subjects: list[tuple[str, str]]) -> str:
    return "".join(
        f'[[associations]]\nnamespace = "{ns}"\nservice_account = "{sa}"\n'
        f'role_arn = "arn:aws:iam::{ACCOUNT}:role/{ns}-{sa}"\n\n'
        for ns, sa in subjects
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=5000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument(
        "--sts-rate", type=float, default=500, help="the agent's --sts-rate during the fill"
    )
    parser.add_argument("--fill-concurrency", type=int, default=64)
    parser.add_argument(
        "--idle-seconds", type=float, default=5, help="how long CPU use at rest is measured"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.identities < 2 or args.namespaces < 1:
        sys.exit("--identities must be at least 2 and --namespaces at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-node-agent-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> int:
    n = args.identities
    accounts = [(f"ns-{i % args.namespaces:03d}", f"sa-{i:05d}") for i in range(n)]
    subjects = [f"system:serviceaccount:{ns}:{sa}" for ns, sa in accounts]
    subjects.append("system:serviceaccount:bench:sidecar")
    (tmp / "subjects").write_text("\n".join(subjects) + "\n")
    (tmp / "associations.toml").write_text(associations(accounts))
    script = tmp / "rotate.lua"
    script.write_text(ROTATE_LUA)
    problems: list[str] = []
    log_file = (tmp / "agent.log").open("w")

    cluster_port = free_port()
    with process([sys.executable, "-c", CLUSTER, str(tmp), str(cluster_port)]) as cluster:
        assert cluster.stdout is not None
        started = time.monotonic()
        # Minting is ~1 ms a token: a cluster silent for longer than this is stuck.
        if not select.select([cluster.stdout], [], [], 60 + n / 100)[0]:
            raise RuntimeError("the simulated cluster did not start in time")
        ready = cluster.stdout.readline()
        if not ready:
            raise RuntimeError("the simulated cluster did not start")
        cluster_info = json.loads(ready)
        mint_seconds = time.monotonic() - started
        base, issuer = cluster_info["base"], cluster_info["issuer"]
        tokens = (tmp / "tokens").read_text().split()
        agent_tokens, sidecar_web_token = tokens[:n], tokens[n]
        (tmp / "agent-tokens").write_text("\n".join(agent_tokens) + "\n")
        (tmp / "web-token").write_text(sidecar_web_token)
        auth = tmp / "auth-token"
        auth.write_text("bench-" + os.urandom(16).hex())
        auth.chmod(0o600)
        (tmp / "sidecar-tokens").write_text(auth.read_text() + "\n")

        agent_port, sidecar_port = free_port(), free_port()
        agent_argv = [
            sys.executable, "-m", "sidecar", "node-agent",
            "--issuer", issuer,
            "--jwks-file", str(tmp / "jwks.json"),
            "--associations", str(tmp / "associations.toml"),
            "--sts-endpoint", base,
            "--listen", f"127.0.0.1:{agent_port}",
            "--sts-rate", f"{args.sts_rate:g}",
            "--sts-burst", str(max(10, int(args.sts_rate // 10))),
            "--max-identities", str(max(10_000, n)),
            # wrk's connections all come from 127.0.0.1; on a node each pod has its own.
            # Twice wrk's count: a connection wrk reopens can arrive before the agent has
            # seen the old one close, and a cap of exactly --connections refused it (a 503).
            "--max-connections-per-client", str(max(64, 2 * args.connections)),
            "--log-level", "warning",
        ]  # fmt: skip
        sidecar_argv = [
            sys.executable, "-m", "sidecar", "serve",
            "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/bench-sidecar",
            "--token-file", str(tmp / "web-token"),
            "--sts-endpoint", base,
            "--auth-token-file", str(auth),
            "--listen", f"127.0.0.1:{sidecar_port}",
            "--log-level", "warning",
        ]  # fmt: skip
        agent_url = f"http://127.0.0.1:{agent_port}/v1/credentials"
        sidecar_url = f"http://127.0.0.1:{sidecar_port}/v1/credentials"
        with process(agent_argv, stderr=log_file) as agent:
            wait_status(f"http://127.0.0.1:{agent_port}/readyz", None, "the node agent")
            time.sleep(1)  # let start-up garbage settle before the idle figure
            rss_idle = rss_kib(agent.pid)
            cpu_idle = cpu_share(agent.pid, args.idle_seconds)

            # Phase 1: fill. The first identity alone, so its RSS is the base of the slope.
            calls_before = sts_calls(base)
            started = time.monotonic()
            asyncio.run(present_all(agent_url, agent_tokens[:1], 1, started + 30))
            rss_one = rss_kib(agent.pid)
            retried = asyncio.run(
                present_all(
                    agent_url, agent_tokens[1:], args.fill_concurrency, started + 60 + n / 2
                )
            )
            fill = Fill(time.monotonic() - started, sts_calls(base) - calls_before, retried)
            if fill.sts_calls != n:
                problems.append(f"fill: {fill.sts_calls} STS calls for {n} identities")

            # Phase 2: memory with every identity cached, once the agent has compacted its
            # heap after the storm (core/collector.py: within two growth checks, ~4 s).
            time.sleep(5)
            rss_full = rss_kib(agent.pid)
            cpu_full = cpu_share(agent.pid, args.idle_seconds)

            calls_before = sts_calls(base)
            with process(sidecar_argv, stderr=log_file) as sidecar:
                wait_status(sidecar_url, auth.read_text(), "the sidecar")
                sidecar_fill_calls = sts_calls(base) - calls_before
                rss_sidecar = rss_kib(sidecar.pid)
                cpu_sidecar = cpu_share(sidecar.pid, args.idle_seconds)

                # Phase 3: cache hits, alternating so drift hits both alike.
                calls_before = sts_calls(base)
                agent_runs, sidecar_runs = [], []
                for _ in range(args.rounds):
                    agent_runs.append(
                        wrk(
                            agent.pid,
                            agent_url,
                            script,
                            tmp / "agent-tokens",
                            args.seconds,
                            args.connections,
                        )
                    )
                    sidecar_runs.append(
                        wrk(
                            sidecar.pid,
                            sidecar_url,
                            script,
                            tmp / "sidecar-tokens",
                            args.seconds,
                            args.connections,
                        )
                    )
                load_sts_calls = sts_calls(base) - calls_before
                rss_after = rss_kib(agent.pid), rss_kib(sidecar.pid)
        log_file.close()
        agent_log = (tmp / "agent.log").read_text()

    if load_sts_calls:
        problems.append(f"cache hits: {load_sts_calls} STS calls during the load")
    for name, runs in (("agent", agent_runs), ("sidecar", sidecar_runs)):
        if bad := sum(r.non_2xx + r.errors for r in runs):
            problems.append(f"cache hits: {bad} {name} requests failed")
    if any(word in agent_log for word in ("Traceback", "ERROR")):
        problems.append("the agent or the sidecar logged errors:\n" + agent_log[-2000:])

    def median(runs: list[Load], field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs))

    per_identity = (rss_full - rss_one) / (n - 1)
    figures: dict[str, Any] = {
        "identities": n,
        "namespaces": args.namespaces,
        "cpu_cores": os.cpu_count(),
        "mint_seconds": round(mint_seconds, 1),
        "fill": asdict(fill) | {"sts_rate": args.sts_rate},
        "sidecar_start_sts_calls": sidecar_fill_calls,
        "rss_kib": {
            "agent_idle": rss_idle,
            "agent_one_identity": rss_one,
            "agent_all_identities": rss_full,
            "agent_after_load": rss_after[0],
            "sidecar": rss_sidecar,
            "sidecar_after_load": rss_after[1],
        },
        "kib_per_identity": round(per_identity, 2),
        "idle_cpu_share": {
            "agent_no_identity": round(cpu_idle, 4),
            "agent_all_identities": round(cpu_full, 4),
            "sidecar": round(cpu_sidecar, 4),
        },
        "load": {
            "connections": args.connections,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "agent": [asdict(r) for r in agent_runs],
            "sidecar": [asdict(r) for r in sidecar_runs],
            "sts_calls": load_sts_calls,
        },
        "ratios": {
            "rps": median(agent_runs, "rps") / median(sidecar_runs, "rps"),
            # Requests/s one core could serve, from the CPU time each request took.
            "capacity": median(sidecar_runs, "cpu_us") / max(1e-9, median(agent_runs, "cpu_us")),
            "p99": median(agent_runs, "p99_ms") / median(sidecar_runs, "p99_ms"),
            "rss": rss_full / rss_sidecar,
        },
        "problems": problems,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures, agent_runs, sidecar_runs, median)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


def print_table(
    f: dict[str, Any], agent_runs: list[Load], sidecar_runs: list[Load], median: Any
) -> None:
    rss, fill, load, n = f["rss_kib"], f["fill"], f["load"], f["identities"]
    mib = 1024
    print(
        f"cpu cores: {f['cpu_cores']}; {n} identities over {f['namespaces']} namespaces; "
        f"wrk 1 thread, {load['connections']} connections, {load['rounds']} x "
        f"{load['seconds']}s each, alternating"
    )
    print(
        f"fill: {n} identities in {fill['seconds']:.1f} s at --sts-rate {fill['sts_rate']:g} "
        f"({fill['sts_calls']} STS calls, {fill['retried_503']} 503s retried)"
    )
    print()
    print("| | node agent | sidecar (`serve`, one role) | agent / sidecar |")
    print("|---|---|---|---|")
    print(f"| identities cached | {n} | 1 | |")
    print(
        f"| RSS, MiB | {rss['agent_all_identities'] / mib:.1f} (idle "
        f"{rss['agent_idle'] / mib:.1f}) | {rss['sidecar'] / mib:.1f} | "
        f"{f['ratios']['rss']:.2f} |"
    )
    print(
        f"| RSS after the load, MiB | {rss['agent_after_load'] / mib:.1f} | "
        f"{rss['sidecar_after_load'] / mib:.1f} | |"
    )
    print(f"| RSS per identity, KiB | {f['kib_per_identity']:.1f} | | |")
    cpu = f["idle_cpu_share"]
    print(
        f"| CPU at rest, % of a core | {100 * cpu['agent_all_identities']:.1f} (no identity "
        f"{100 * cpu['agent_no_identity']:.1f}) | {100 * cpu['sidecar']:.1f} | |"
    )
    print(
        f"| cache hits/s (median) | {median(agent_runs, 'rps'):.0f} | "
        f"{median(sidecar_runs, 'rps'):.0f} | {f['ratios']['rps']:.2f} |"
    )
    print(
        f"| server CPU µs per request (median) | {median(agent_runs, 'cpu_us'):.1f} | "
        f"{median(sidecar_runs, 'cpu_us'):.1f} | capacity {f['ratios']['capacity']:.2f} |"
    )
    print(
        f"| p50 ms | {median(agent_runs, 'p50_ms'):.2f} | {median(sidecar_runs, 'p50_ms'):.2f} | |"
    )
    print(
        f"| p99 ms | {median(agent_runs, 'p99_ms'):.2f} | {median(sidecar_runs, 'p99_ms'):.2f} "
        f"| {f['ratios']['p99']:.2f} |"
    )
    print(
        f"| failed requests | {sum(r.non_2xx + r.errors for r in agent_runs)} | "
        f"{sum(r.non_2xx + r.errors for r in sidecar_runs)} | |"
    )
    print(
        f"| STS calls: fill / during the load | {fill['sts_calls']} / {load['sts_calls']} "
        f"| {f['sidecar_start_sts_calls']} / (counted together) | |"
    )


if __name__ == "__main__":
    sys.exit(main())
