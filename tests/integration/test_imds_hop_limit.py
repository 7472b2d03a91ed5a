"""The IMDS listener's hop limit, through a real router: a client on the daemon's own link
gets a session token; one behind a router gets none with the default hop limit of 1 (the
answer's TTL runs out at the router, as on EC2), and does with --imds-hop-limit 2.

Three network namespaces the test makes (tests/netns.py): client -- router -- daemon.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import netns
from tests.peers import serve_dev_in

#: Ask for a token, give up after 3 s (a dropped answer is a timeout, not a refusal).
PUT_TOKEN = """
import sys, urllib.request
request = urllib.request.Request(
    sys.argv[1] + "/latest/api/token", method="PUT",
    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
)
try:
    with urllib.request.urlopen(request, timeout=3) as answer:
        print("token" if answer.read() else "empty")
except OSError as exc:
    print(type(exc).__name__)
"""


@dataclass
class Topology:
    client: netns.Namespace
    neighbour: netns.Namespace
    daemon: netns.Namespace
    #: The daemon's address towards the router, and towards its neighbour.
    address: str
    near: str


@pytest.fixture
def topology() -> Iterator[Topology]:
    with netns.namespaces() as net:
        daemon, router, client = (net.namespace(n) for n in ("daemon", "router", "client"))
        inner = net.veth(daemon, router)  # daemon side a, router side b
        outer = net.veth(router, client)  # router side a, client side b
        neighbour = net.namespace("neighbour")
        beside = net.veth(daemon, neighbour)
        router.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        client.route("default", via=outer.a_ipv4.ip)
        daemon.route(str(outer.b_ipv4.network), via=inner.b_ipv4.ip)
        yield Topology(client, neighbour, daemon, str(inner.a_ipv4.ip), str(beside.a_ipv4.ip))


def serve(topology: Topology, *flags: str) -> subprocess.Popen[str]:
    imds = ("--imds-listen", "0.0.0.0:8077", "--insecure-allow-unauthenticated-network-listener")
    server, _ = serve_dev_in(topology.daemon, *imds, *flags)
    return server


def ask(namespace: netns.Namespace, url: str) -> str:
    done = namespace.run([sys.executable, "-c", PUT_TOKEN, url], check=False)
    return done.stdout.strip()


def test_the_default_hop_limit_keeps_tokens_from_crossing_a_router(topology: Topology) -> None:
    """Hop limit 1: the neighbour on the daemon's link gets a token, the client behind the
    router times out (its TCP handshake crosses, the answer does not)."""
    serve(topology)
    url = f"http://{topology.address}:8077"
    assert ask(topology.daemon, url) == "token"
    assert ask(topology.neighbour, f"http://{topology.near}:8077") == "token"
    assert ask(topology.client, url) in ("TimeoutError", "URLError", "RemoteDisconnected")


def test_a_higher_hop_limit_lets_the_routed_client_in(topology: Topology) -> None:
    """--imds-hop-limit 2: the answer survives the router, and the client gets its token."""
    serve(topology, "--imds-hop-limit", "2")
    assert ask(topology.client, f"http://{topology.address}:8077") == "token"
