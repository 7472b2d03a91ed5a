"""Benchmark suite: every figure of issue 11 beside its references, measured in one run.

    python bench/suite.py                 # the full run (~15 min), README's command
    python bench/suite.py --quick         # CI: a few seconds per figure, proves it works

What runs, each as its own process on 127.0.0.1: a simulated cluster (the dev OIDC issuer
and the STS emulator trusting it, counting its calls), the sidecar (``serve``, one role,
its auth token, against the emulator) and its references:

- **endpoint**: ``wrk`` (one thread) at 1, 50 and 200 connections against the sidecar,
  (a) a bare aiohttp handler returning the same bytes after the same auth check
  (``hmac.compare_digest`` of the ``Authorization`` header) on the same event loop
  implementation, and (b) nginx returning the same bytes behind the same header check,
  alternating, ``--rounds`` times; medians and ratios;
- **start-up and idle RSS**: process start to ``/readyz`` 200, and RSS 1 s later, of the
  sidecar and of a floor process (imports aiohttp and aiobotocore, creates the STS client,
  makes one exchange, listens), alternating;
- **RSS growth** over ``--requests`` requests (1,000,000 in the full run), after warm-up;
- **cold-start storm**: ``--storm`` clients asking from the moment the process starts;
  the emulator must count exactly one STS exchange for the role;
- **node agent**: ``bench/node_agent.py --json`` (5,000 identities in the full run);
- a chart of throughput and p99 per reference (``--chart``; needs the ``bench`` extra).

Timing targets are reported, never enforced (the machine is shared and noisy); the suite
exits 1 only if something is wrong: an STS count, a failed request, a process that does
not start. ``--json`` prints every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from harness import REPO, cpu_ticks, cpu_us_per_request, free_port, process, run_wrk
from node_agent import ACCOUNT, CLUSTER, rss_kib, sts_calls

CONCURRENCY = (1, 50, 200)
MIB = 1024  # KiB per MiB
ROLE = f"arn:aws:iam::{ACCOUNT}:role/bench-sidecar"

#: Reference (a): the least an aiohttp server can do for this request, on the same event
#: loop implementation as the sidecar (asyncio's default loop).
#: argv: body file, auth token file, port.
AIOHTTP_REFERENCE = """
import hmac, sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
token = open(sys.argv[2]).read().strip()
async def handle(request):
    if not hmac.compare_digest(request.headers.get("Authorization", ""), token):
        return web.Response(status=401)
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/v1/credentials", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[3]), print=None, access_log=None)
"""

#: The floor: what any sidecar on these dependencies must do before it is ready.
#: argv: STS endpoint, role ARN, web-identity token file, port.
FLOOR = """
import asyncio, sys
import aiohttp
from aiohttp import web
from aiobotocore.session import get_session

async def main(endpoint, role, token_file, port):
    session = get_session()
    async with session.create_client(
        "sts", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="unused", aws_secret_access_key="unused",
    ) as sts:
        await sts.assume_role_with_web_identity(
            RoleArn=role, RoleSessionName="floor",
            WebIdentityToken=open(token_file).read().strip(),
        )
        async def ready(_):
            return web.json_response({"ready": True})
        app = web.Application()
        app.router.add_get("/readyz", ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4])))
"""

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/credentials {{
            default_type application/json;
            if ($http_authorization != "{token}") {{ return 401; }}
            return 200 '{body}';
        }}
    }}
}}
"""


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int
    #: CPU time (user + system) of the server per request: steadier than requests/s on a
    #: shared machine, where what wrk gets also depends on what else runs.
    cpu_us: float = 0.0


@dataclass
class Start:
    ready_s: float
    rss_kib: int


def wrk(url: str, token: str, seconds: float, connections: int) -> Load:
    run = run_wrk(url, seconds, connections, ["-H", f"Authorization: {token}"])
    return Load(run.rps, run.p50_ms, run.p99_ms, run.requests, run.non_2xx + run.socket_errors)


def measured(pid: int, url: str, token: str, seconds: float, connections: int) -> Load:
    """``wrk`` against ``url``, with the CPU time process ``pid`` spent serving it."""
    before = cpu_ticks(pid)
    load = wrk(url, token, seconds, connections)
    load.cpu_us = cpu_us_per_request(pid, before, load.requests)
    return load


def get(url: str, token: str | None = None, timeout: float = 2) -> tuple[int, bytes]:
    request = urllib.request.Request(url)  # noqa: S310 - loopback only
    if token:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def wait_ready(url: str, proc: subprocess.Popen[str], started: float, timeout: float = 30) -> float:
    """Seconds from ``started`` to the first 200 from ``url``, polled every 5 ms."""
    while True:
        try:
            if get(url, timeout=1)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r:.120} exited with {proc.returncode}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
        time.sleep(0.005)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.problems: list[str] = []
        self.figures: dict[str, Any] = {"cpu_cores": os.cpu_count(), "quick": args.quick}

    def sidecar_argv(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "sidecar", "serve",
            "--role-arn", ROLE,
            "--token-file", str(self.tmp / "web-token"),
            "--sts-endpoint", self.base,
            "--auth-token-file", str(self.tmp / "auth-token"),
            "--listen", f"127.0.0.1:{port}",
            "--log-level", "warning",
        ]  # fmt: skip

    def floor_argv(self, port: int) -> list[str]:
        token = str(self.tmp / "web-token")
        return [sys.executable, "-c", FLOOR, self.base, ROLE, token, str(port)]

    @contextmanager
    def cluster(self) -> Iterator[None]:
        (self.tmp / "subjects").write_text("system:serviceaccount:bench:sidecar\n")
        with process([sys.executable, "-c", CLUSTER, str(self.tmp), str(free_port())]) as c:
            assert c.stdout is not None
            line = c.stdout.readline()
            if not line:
                raise RuntimeError("the simulated cluster did not start")
            self.base = json.loads(line)["base"]
            (self.tmp / "web-token").write_text((self.tmp / "tokens").read_text().strip())
            auth = self.tmp / "auth-token"
            auth.write_text("bench-" + os.urandom(16).hex())
            auth.chmod(0o600)
            self.token = auth.read_text()
            yield

    # -- start-up and idle RSS ------------------------------------------------------------
    def start(self, argv_of: Any) -> Start:
        port = free_port()
        started = time.monotonic()
        with process(argv_of(port)) as proc:
            ready = wait_ready(f"http://127.0.0.1:{port}/readyz", proc, started)
            time.sleep(1)  # start-up garbage settles before the idle figure
            return Start(ready, rss_kib(proc.pid))

    def startup(self) -> None:
        sidecar, floor = [], []
        for _ in range(self.args.start_rounds):  # alternate, so drift hits both alike
            sidecar.append(self.start(self.sidecar_argv))
            floor.append(self.start(self.floor_argv))
        self.figures["startup"] = {
            "sidecar": [asdict(s) for s in sidecar],
            "floor": [asdict(s) for s in floor],
            "ready_s": {
                "sidecar": median([s.ready_s for s in sidecar]),
                "floor": median([s.ready_s for s in floor]),
            },
            "idle_rss_kib": {
                "sidecar": median([s.rss_kib for s in sidecar]),
                "floor": median([s.rss_kib for s in floor]),
            },
        }

    # -- cold-start storm -------------------------------------------------------------------
    def storm(self) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/credentials"
        before = sts_calls(self.base)
        with process(self.sidecar_argv(port)):
            served = asyncio.run(storm_clients(url, self.token, self.args.storm, 30))
        calls = sts_calls(self.base) - before
        self.figures["storm"] = {"clients": self.args.storm, "served": served, "sts_calls": calls}
        if served != self.args.storm:
            self.problems.append(f"storm: {served} of {self.args.storm} clients served")
        if calls != 1:
            self.problems.append(f"storm: {calls} STS calls for one role (must be 1)")

    # -- endpoint, RSS growth -------------------------------------------------------------
    def endpoint(self) -> None:
        port, ref_port, nginx_port = free_port(), free_port(), free_port()
        url = f"http://127.0.0.1:{port}/v1/credentials"
        with process(self.sidecar_argv(port)) as sidecar:
            wait_ready(f"http://127.0.0.1:{port}/readyz", sidecar, time.monotonic())
            status, body = get(url, self.token)
            if status != 200:
                raise RuntimeError(f"the sidecar answered {status}")
            body_file = self.tmp / "body.json"
            body_file.write_bytes(body)
            conf = self.tmp / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    tmp=self.tmp, port=nginx_port, token=self.token, body=body.decode()
                )
            )
            reference = [sys.executable, "-c", AIOHTTP_REFERENCE, str(body_file)]
            reference += [str(self.tmp / "auth-token"), str(ref_port)]
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            with (
                process(reference) as ref,
                process([nginx, "-c", str(conf), "-p", str(self.tmp)]) as ngx,
            ):
                pids = {"sidecar": sidecar.pid, "aiohttp": ref.pid, "nginx": ngx.pid}
                urls = {
                    "sidecar": url,
                    "aiohttp": f"http://127.0.0.1:{ref_port}/v1/credentials",
                    "nginx": f"http://127.0.0.1:{nginx_port}/v1/credentials",
                }
                for name, proc in (("aiohttp", ref), ("nginx", ngx)):
                    deadline = time.monotonic() + 20
                    while True:
                        try:
                            if get(urls[name], self.token) == (200, body):
                                break
                        except OSError:
                            pass
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the {name} reference did not serve the body")
                        time.sleep(0.05)
                    if get(urls[name], "wrong")[0] != 401:
                        raise RuntimeError(f"the {name} reference does not check the header")
                loads: dict[str, dict[str, list[Load]]] = {}
                for connections in CONCURRENCY:
                    runs: dict[str, list[Load]] = {name: [] for name in urls}
                    for _ in range(self.args.rounds):
                        for name, target in urls.items():
                            runs[name].append(
                                measured(
                                    pids[name], target, self.token, self.args.seconds, connections
                                )
                            )
                    loads[str(connections)] = runs
            self.growth(sidecar, url)
        for level, by_name in loads.items():
            for name, name_runs in by_name.items():
                if bad := sum(r.failed for r in name_runs):
                    self.problems.append(f"endpoint: {bad} {name} requests failed at {level}")
        self.figures["endpoint"] = {
            level: {
                name: {
                    "rps": median([r.rps for r in name_runs]),
                    "p50_ms": median([r.p50_ms for r in name_runs]),
                    "p99_ms": median([r.p99_ms for r in name_runs]),
                    "cpu_us": median([r.cpu_us for r in name_runs]),
                    "runs": [asdict(r) for r in name_runs],
                }
                for name, name_runs in by_name.items()
            }
            for level, by_name in loads.items()
        }
        self.figures["endpoint_settings"] = {
            "seconds": self.args.seconds,
            "rounds": self.args.rounds,
        }

    def growth(self, sidecar: subprocess.Popen[str], url: str) -> None:
        """RSS before and after ``--requests`` more requests, the warm-up done."""
        time.sleep(1)
        before, done, failed = rss_kib(sidecar.pid), 0, 0
        while done < self.args.requests:
            load = wrk(url, self.token, self.args.growth_chunk, 50)
            done, failed = done + load.requests, failed + load.failed
        time.sleep(1)
        after = rss_kib(sidecar.pid)
        self.figures["growth"] = {
            "requests": done,
            "rss_before_kib": before,
            "rss_after_kib": after,
        }
        if failed:
            self.problems.append(f"RSS growth: {failed} requests failed")

    # -- node agent -----------------------------------------------------------------------
    def node_agent(self) -> None:
        argv = [sys.executable, str(REPO / "bench" / "node_agent.py"), "--json"]
        argv += self.args.node_agent.split()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
        if result.returncode != 0:
            self.problems.append(f"node agent: {result.stderr.strip()[-1000:]}")
        try:
            self.figures["node_agent"] = json.loads(result.stdout)
        except json.JSONDecodeError:
            self.problems.append("node agent: no figures")


async def storm_clients(url: str, token: str, clients: int, seconds: float) -> int:
    """``clients`` clients asking at once, each until it gets a 200; how many did."""
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> bool:
            while time.monotonic() < deadline:
                try:
                    async with session.get(url, headers={"Authorization": token}) as response:
                        await response.read()
                        if response.status == 200:
                            return True
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.01)
            return False

        return sum(await asyncio.gather(*(one() for _ in range(clients))))


# -- report -------------------------------------------------------------------------------
def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def rows(f: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, sidecar, reference, ratio or difference, target and verdict)."""
    out: list[tuple[str, str, str, str, str]] = []
    for connections, by in f.get("endpoint", {}).items():
        s, a, n = by["sidecar"], by["aiohttp"], by["nginx"]
        ratio = s["rps"] / a["rps"]
        out.append(
            (
                f"requests/s at {connections} conn.",
                f"{s['rps']:,.0f}",
                f"aiohttp {a['rps']:,.0f}; nginx {n['rps']:,.0f}",
                f"{ratio:.2f} of aiohttp; {s['rps'] / n['rps']:.2f} of nginx",
                f">= 1.0 of aiohttp: {verdict(ratio >= 1.0)}",
            )
        )
        out.append(
            (
                f"server CPU µs per request at {connections} conn.",
                f"{s['cpu_us']:.0f}",
                f"aiohttp {a['cpu_us']:.0f}; nginx {n['cpu_us']:.0f}",
                f"{s['cpu_us'] / a['cpu_us']:.2f} of aiohttp",
                "(what throughput follows from)",
            )
        )
        p99 = s["p99_ms"] / a["p99_ms"]
        out.append(
            (
                f"p50 / p99 ms at {connections} conn.",
                f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}",
                f"aiohttp {a['p50_ms']:.2f} / {a['p99_ms']:.2f}; "
                f"nginx {n['p50_ms']:.2f} / {n['p99_ms']:.2f}",
                f"p99 {p99:.2f} of aiohttp",
                f"p99 <= 1.2 of aiohttp: {verdict(p99 <= 1.2)}",
            )
        )
    if st := f.get("startup"):
        r, m = st["ready_s"], st["idle_rss_kib"]
        late = r["sidecar"] - r["floor"]
        out.append(
            (
                "start to /readyz 200, s",
                f"{r['sidecar']:.3f}",
                f"floor {r['floor']:.3f}",
                f"{late:+.3f} s",
                f"<= floor + 0.1 s: {verdict(late <= 0.1)}",
            )
        )
        more = (m["sidecar"] - m["floor"]) / MIB
        out.append(
            (
                "idle RSS, MiB",
                f"{m['sidecar'] / MIB:.1f}",
                f"floor {m['floor'] / MIB:.1f}",
                f"{more:+.1f} MiB",
                f"<= floor + 5 MB: {verdict(more * 1.048576 <= 5)}",
            )
        )
    if g := f.get("growth"):
        grew = (g["rss_after_kib"] - g["rss_before_kib"]) / MIB
        out.append(
            (
                f"RSS growth over {g['requests']:,} requests, MiB",
                f"{g['rss_before_kib'] / MIB:.1f} -> {g['rss_after_kib'] / MIB:.1f}",
                "",
                f"{grew:+.1f} MiB",
                f"< 5 MB: {verdict(grew * 1.048576 < 5)}",
            )
        )
    if s := f.get("storm"):
        out.append(
            (
                f"STS calls, cold-start storm of {s['clients']} clients",
                f"{s['sts_calls']} ({s['served']} served)",
                "",
                "",
                f"1 per role: {verdict(s['sts_calls'] == 1)}",
            )
        )
    if na := f.get("node_agent"):
        n, rss = na["identities"], na["rss_kib"]
        out.append(
            (
                f"node agent: STS calls filling {n:,} identities",
                f"{na['fill']['sts_calls']:,}",
                "",
                "",
                f"1 per identity: {verdict(na['fill']['sts_calls'] == n)}",
            )
        )
        if st := f.get("startup"):
            floor = st["idle_rss_kib"]["floor"]
            more = (rss["agent_all_identities"] - floor) / MIB
            out.append(
                (
                    f"node agent: RSS with {n:,} identities, MiB",
                    f"{rss['agent_all_identities'] / MIB:.1f}",
                    f"floor {floor / MIB:.1f}",
                    f"{more:+.1f} MiB",
                    f"<= floor + 60 MB: {verdict(more * 1.048576 <= 60)}",
                )
            )
        load = na["load"]
        agent = median([r["rps"] for r in load["agent"]])
        sidecar = median([r["rps"] for r in load["sidecar"]])
        out.append(
            (
                f"node agent: cache hits/s at {load['connections']} conn.",
                f"{agent:,.0f}",
                f"sidecar {sidecar:,.0f}",
                f"{agent / sidecar:.2f}",
                f">= 0.8 of the sidecar: {verdict(agent / sidecar >= 0.8)}",
            )
        )
        out.append(
            (
                f"node agent: p99 ms at {load['connections']} conn.",
                f"{median([r['p99_ms'] for r in load['agent']]):.1f}",
                f"sidecar {median([r['p99_ms'] for r in load['sidecar']]):.1f}",
                f"{na['ratios']['p99']:.2f}",
                "",
            )
        )
    return out


def print_table(f: dict[str, Any]) -> None:
    settings = f.get("endpoint_settings", {})
    print(
        f"cpu cores: {f['cpu_cores']}; wrk 1 thread; {settings.get('rounds')} rounds x "
        f"{settings.get('seconds')} s per server and concurrency, alternating; medians"
    )
    print()
    print("| figure | sidecar | references | ratio | target |")
    print("|---|---|---|---|---|")
    for row in rows(f):
        print("| " + " | ".join(row) + " |")


def chart(f: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return False
    endpoint = f["endpoint"]
    levels = list(endpoint)
    names = ["sidecar", "aiohttp", "nginx"]
    labels = {"sidecar": "credential-sidecar", "aiohttp": "bare aiohttp", "nginx": "nginx"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.27
    for i, name in enumerate(names):
        xs = [j + (i - 1) * width for j in range(len(levels))]
        left.bar(xs, [endpoint[c][name]["rps"] for c in levels], width, label=labels[name])
        right.bar(xs, [endpoint[c][name]["p99_ms"] for c in levels], width, label=labels[name])
    for axis, title in ((left, "requests/s (median)"), (right, "p99 latency, ms (median)")):
        axis.set_xticks(range(len(levels)), [f"{c} conn." for c in levels])
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    right.set_yscale("log")
    left.legend()
    fig.suptitle("GET /v1/credentials, wrk on 127.0.0.1, same run, alternating")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI mode: seconds per figure")
    parser.add_argument("--seconds", type=float, help="each wrk run (full 5, quick 1)")
    parser.add_argument("--rounds", type=int, help="wrk rounds per server (full 3, quick 1)")
    parser.add_argument("--start-rounds", type=int, help="start-ups of each (full 7, quick 2)")
    parser.add_argument("--requests", type=int, help="RSS growth (full 1,000,000, quick 20,000)")
    parser.add_argument("--storm", type=int, default=200, help="cold-start storm clients")
    parser.add_argument("--node-agent", help="bench/node_agent.py's arguments")
    parser.add_argument("--skip", action="append", default=[], help="a figure to leave out")
    parser.add_argument("--chart", type=Path, help="where the PNG goes")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args()
    quick = args.quick
    args.seconds = args.seconds or (1 if quick else 5)
    args.rounds = args.rounds or (1 if quick else 3)
    args.start_rounds = args.start_rounds or (2 if quick else 7)
    args.requests = args.requests or (20_000 if quick else 1_000_000)
    args.growth_chunk = 1 if quick else 10
    args.node_agent = args.node_agent or (
        "--identities 50 --seconds 1 --rounds 1 --idle-seconds 1"
        if quick
        else "--identities 5000 --seconds 5 --rounds 3"
    )
    for tool, package in (("wrk", "wrk"), ("nginx", "nginx-light")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed: apt-get install {package}")

    # An installed package comes with its bytecode (pip compiles it); a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every module at each start instead.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "sidecar")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        bench = Bench(args, Path(tmp))
        with bench.cluster():
            steps = {
                "startup": bench.startup,
                "storm": bench.storm,
                "endpoint": bench.endpoint,
            }
            for name, step in steps.items():
                if name not in args.skip:
                    print(f"-- {name}", file=sys.stderr, flush=True)
                    step()
        if "node_agent" not in args.skip:
            print("-- node_agent", file=sys.stderr, flush=True)
            bench.node_agent()
        figures = bench.figures | {"problems": bench.problems}
        if "endpoint" in figures:
            path = args.chart or (Path(tmp) / "benchmarks.png")
            if chart(figures, path):
                figures["chart"] = str(path)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print_table(figures)
    for problem in bench.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
