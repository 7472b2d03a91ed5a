"""Benchmark: the credentials endpoint under load, as ratios against a reference server.

The machine is shared and noisy, so absolute numbers drift; what is stable is how the
daemon compares with a reference measured in the same run, alternately, on the same
machine. The reference is the least any aiohttp server can do for this request: one
handler returning the same bytes (same size, same Content-Type) with no auth, no
metrics and no refresher.

    python bench/endpoint.py [--seconds 5] [--rounds 3] [--connections 50]

Needs wrk (`apt-get install wrk`). Traffic goes to 127.0.0.1 only; every run is bounded in
time and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass

from harness import REPO, dev_lines, free_port, process, run_wrk, serve_dev

REFERENCE = """
import sys
from aiohttp import web
body = open(sys.argv[1], "rb").read()
async def handle(_):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/v1/credentials", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)
"""


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


def wait_http(url: str, token: str | None, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url)  # noqa: S310 - loopback
        if token:
            request.add_header("Authorization", token)
        try:
            with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return bytes(response.read())
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200")
        time.sleep(0.1)


def wrk(url: str, token: str | None, seconds: int, connections: int) -> Result:
    headers = ["-H", f"Authorization: {token}"] if token else []
    run = run_wrk(url, seconds, connections, headers)
    return Result(run.rps, run.p50_ms, run.p99_ms, run.non_2xx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")

    port = free_port()
    with process(serve_dev(port, "--log-level", "error")) as daemon:
        token = dev_lines(daemon)["token"]
        daemon_url = f"http://127.0.0.1:{port}/v1/credentials"
        body = wait_http(daemon_url, token)
        body_file = REPO / "bench" / ".reference-body.json"
        body_file.write_text(json.dumps({k: "x" * len(v) for k, v in json.loads(body).items()}))
        ref_port = free_port()
        ref_url = f"http://127.0.0.1:{ref_port}/v1/credentials"
        with process([sys.executable, "-c", REFERENCE, str(body_file), str(ref_port)]):
            wait_http(ref_url, None)
            daemon_runs, reference_runs = [], []
            for _ in range(args.rounds):  # alternate, so drift hits both alike
                daemon_runs.append(wrk(daemon_url, token, args.seconds, args.connections))
                reference_runs.append(wrk(ref_url, None, args.seconds, args.connections))
        body_file.unlink()

    def median(runs: list[Result], field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs))

    rps_ratio = median(daemon_runs, "rps") / median(reference_runs, "rps")
    p99_ratio = median(daemon_runs, "p99_ms") / median(reference_runs, "p99_ms")
    print(
        f"cpu cores: {os.cpu_count()}, wrk 1 thread, {args.connections} connections, "
        f"{args.rounds} x {args.seconds}s each, alternating"
    )
    print("| server | requests/s (median) | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---|---|---|")
    for name, runs in (("credential-sidecar", daemon_runs), ("reference aiohttp", reference_runs)):
        print(
            f"| {name} | {median(runs, 'rps'):.0f} | {median(runs, 'p50_ms'):.2f} | "
            f"{median(runs, 'p99_ms'):.2f} | {sum(r.non_2xx for r in runs)} |"
        )
    print(f"\nthroughput ratio (sidecar / reference): {rps_ratio:.2f}")
    print(f"p99 latency ratio (sidecar / reference): {p99_ratio:.2f}")


if __name__ == "__main__":
    main()
