"""``link-local up|down`` and sidecar.outputs.link_local, on real interfaces of network namespaces.

Each test makes its own namespaces (tests/netns.py): the addresses land there, never on the
host.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from sidecar.outputs.link_local import (
    LinkLocalAddressError,
    Outcome,
    parse_addresses,
)
from tests import netns
from tests.peers import REPO

AGENT_V4 = "169.254.170.23"
AGENT_V6 = "fd00:ec2::23"
AGENT = ["--address", AGENT_V4, "--address", AGENT_V6]
EXIT_CONFIG = 2
EXIT_LINK_LOCAL = 6
# Drops CAP_NET_ADMIN from the bounding set: even uid 0 (inside) then cannot change addresses.
WITHOUT_NET_ADMIN = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", "--"]


@pytest.fixture
def net() -> Iterator[netns.Namespaces]:
    with netns.namespaces() as namespaces:
        yield namespaces


@pytest.fixture
def host(net: netns.Namespaces) -> netns.Namespace:
    """A namespace playing the node: lo up, nothing else."""
    return net.namespace("host")


def cli(
    namespace: netns.Namespace, *args: str, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``credential-sidecar link-local ARGS`` run inside ``namespace``."""
    command = [*prefix, sys.executable, "-m", "sidecar", "link-local", *args]
    return namespace.run(command, check=False)


def call(namespace: netns.Namespace, function: str, *addresses: str, interface: str = "lo") -> str:
    """``link_local.FUNCTION`` inside ``namespace``: the outcomes, or the error's class."""
    script = textwrap.dedent(
        f"""
        import json
        from sidecar.outputs import link_local
        try:
            changes = link_local.{function}({list(addresses)!r}, {interface!r})
        except link_local.LinkLocalError as exc:
            print(json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
        else:
            print(json.dumps([change.outcome.name for change in changes]))
        """
    )
    return namespace.run([sys.executable, "-c", script]).stdout


def test_up_adds_ipv4_as_32_and_ipv6_as_128(host: netns.Namespace) -> None:
    """`up` puts both node-agent addresses on lo, IPv4 as /32 and IPv6 as /128."""
    done = cli(host, "up", *AGENT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"added {AGENT_V4}/32 to lo",
        f"added {AGENT_V6}/128 to lo",
    ]
    assert {f"{AGENT_V4}/32", f"{AGENT_V6}/128"} <= set(host.addresses("lo"))


def test_ipv6_is_added_without_duplicate_address_detection(host: netns.Namespace) -> None:
    """The IPv6 address is nodad, so a listener can bind it at once (not tentative)."""
    cli(host, "up", "--address", AGENT_V6)
    shown = json.loads(host.run(["ip", "-j", "address", "show", "dev", "lo"]).stdout)
    (info,) = [a for a in shown[0]["addr_info"] if a["local"] == AGENT_V6]
    assert info.get("nodad") is True and not info.get("tentative")


def test_default_address_is_the_capability_endpoint(host: netns.Namespace) -> None:
    """`up` with no --address adds 169.254.170.2/32, the ECS capability endpoint."""
    assert cli(host, "up").returncode == 0
    assert "169.254.170.2/32" in host.addresses("lo")


def test_up_twice_is_fine(host: netns.Namespace) -> None:
    """A second `up` succeeds, says the addresses are there, and adds no duplicate."""
    cli(host, "up", *AGENT)
    again = cli(host, "up", *AGENT)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"{AGENT_V4}/32 already on lo",
        f"{AGENT_V6}/128 already on lo",
    ]
    assert host.addresses("lo").count(f"{AGENT_V4}/32") == 1
    assert (
        json.loads(call(host, "add_addresses", AGENT_V4, AGENT_V6))
        == [Outcome.ALREADY_PRESENT.name] * 2
    )


def test_down_removes_and_down_twice_is_fine(host: netns.Namespace) -> None:
    """`down` takes both addresses off; a second `down` succeeds with nothing to remove."""
    cli(host, "up", *AGENT)
    down = cli(host, "down", *AGENT)
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines() == [
        f"removed {AGENT_V4}/32 from lo",
        f"removed {AGENT_V6}/128 from lo",
    ]
    assert host.addresses("lo") == ["127.0.0.1/8", "::1/128"]
    again = cli(host, "down", *AGENT)
    assert again.returncode == 0, again.stderr
    assert (
        json.loads(call(host, "remove_addresses", AGENT_V4, AGENT_V6))
        == [Outcome.ALREADY_ABSENT.name] * 2
    )


def test_down_leaves_a_wider_prefix_of_the_same_address(host: netns.Namespace) -> None:
    """`down` removes only the /32 it adds, not an operator's 169.254.170.2/16."""
    host.run(["ip", "address", "add", "169.254.170.2/16", "dev", "lo"])
    assert json.loads(call(host, "remove_addresses", "169.254.170.2")) == ["ALREADY_ABSENT"]
    assert "169.254.170.2/16" in host.addresses("lo")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_cap_net_admin_the_error_says_how_to_grant_it(host: netns.Namespace) -> None:
    """Without CAP_NET_ADMIN: exit 6 and a message naming the capability and the init container."""
    done = cli(host, "up", *AGENT, prefix=WITHOUT_NET_ADMIN)
    assert done.returncode == EXIT_LINK_LOCAL
    assert "CAP_NET_ADMIN" in done.stderr and "capabilities.add: [NET_ADMIN]" in done.stderr
    assert "Traceback" not in done.stderr
    assert host.addresses("lo") == ["127.0.0.1/8", "::1/128"]
    script = (
        "from sidecar.outputs import link_local; "
        "link_local.remove_addresses(['169.254.170.2'], 'lo')"
    )
    refused = host.run([*WITHOUT_NET_ADMIN, sys.executable, "-c", script], check=False)
    assert "sidecar.outputs.link_local.NetAdminRequiredError" in refused.stderr


def test_missing_interface_is_a_clear_error(host: netns.Namespace) -> None:
    """An interface that does not exist: exit 2, named, with how to list interfaces."""
    for action in ("up", "down"):
        done = cli(host, action, "--interface", "nosuch0")
        assert done.returncode == EXIT_CONFIG
        assert "no network interface named 'nosuch0'" in done.stderr
        assert "ip link" in done.stderr and "Traceback" not in done.stderr
    assert json.loads(call(host, "add_addresses", AGENT_V4, interface="nosuch0"))["error"] == (
        "InterfaceNotFoundError"
    )


def test_a_bad_address_changes_nothing(host: netns.Namespace) -> None:
    """One address outside the allowed ranges: exit 2 and the good ones are not added either."""
    done = cli(host, "up", "--address", AGENT_V4, "--address", "10.0.0.1")
    assert done.returncode == EXIT_CONFIG
    assert "10.0.0.1 is neither IPv4 link-local" in done.stderr
    assert f"{AGENT_V4}/32" not in host.addresses("lo")


def test_other_interface_and_the_down_warning(net: netns.Namespaces) -> None:
    """--interface puts the address on that interface; a down interface gets a warning."""
    host = net.namespace("host")
    host.run(["ip", "link", "add", "agent0", "type", "veth", "peer", "name", "agent1"])
    done = cli(host, "up", "--interface", "agent0", "--address", AGENT_V4)
    assert done.returncode == 0, done.stderr
    assert f"{AGENT_V4}/32" in host.addresses("agent0")
    assert "agent0 is down" in done.stderr and "ip link set agent0 up" in done.stderr
    assert "agent0 is down" not in cli(host, "up").stderr  # lo is up


def test_ipv6_disabled_is_a_warning_and_ipv4_still_added(host: netns.Namespace) -> None:
    """With IPv6 disabled on lo, `up` adds the IPv4 address, warns about IPv6 and exits 0."""
    host.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6"])
    done = cli(host, "up", *AGENT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"added {AGENT_V4}/32 to lo"]
    assert "warning" in done.stderr and "IPv6 is disabled on lo" in done.stderr
    assert json.loads(call(host, "add_addresses", AGENT_V6)) == [Outcome.IPV6_DISABLED.name]
    assert json.loads(call(host, "remove_addresses", AGENT_V6)) == [Outcome.ALREADY_ABSENT.name]


def test_an_unexpected_refusal_carries_the_kernels_words(host: netns.Namespace) -> None:
    """The kernel's extended-ack message reaches the caller (here: IPv6 disabled, EACCES)."""
    host.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6"])
    script = textwrap.dedent(
        """
        import errno, ipaddress, socket
        from sidecar.outputs import link_local as ll
        message = ll._address_message(ipaddress.ip_address("fd00::1"), socket.if_nametoindex("lo"))
        with ll._Netlink() as netlink:
            code, words = netlink.request(ll._RTM_NEWADDR, ll._NLM_F_CREATE, message)
        print(errno.errorcode[code], words, sep="|")
        """
    )
    code, words = host.run([sys.executable, "-c", script]).stdout.strip().split("|")
    assert code == "EACCES" and "IPv6 is disabled" in words


def test_parse_addresses_names_every_bad_address() -> None:
    """Malformed, prefixed and routable addresses are all named in one error; duplicates merge."""
    with pytest.raises(LinkLocalAddressError) as caught:
        parse_addresses(["10.0.0.1", "nonsense", "169.254.170.2/32", "2001:db8::1", "[fd00::1]"])
    assert len(caught.value.problems) == 5
    assert [str(a) for a in parse_addresses([AGENT_V4, AGENT_V6, AGENT_V4])] == [
        AGENT_V4,
        AGENT_V6,
    ]
    with pytest.raises(LinkLocalAddressError):
        parse_addresses([])
    with pytest.raises(LinkLocalAddressError, match="at most 16"):
        parse_addresses([f"169.254.1.{n}" for n in range(17)])
    with pytest.raises(LinkLocalAddressError) as huge:
        parse_addresses(["9" * 100_000])
    assert len(str(huge.value)) < 300


# A listener: argv is PORT ADDRESS...; one socket per address, each answering every
# connection with the address it was reached on.
SERVER = """
import socket, sys, threading
port = int(sys.argv[1])
def serve(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, port))
    listener.listen()
    def loop():
        while True:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(address.encode())
    threading.Thread(target=loop, daemon=True).start()
for address in sys.argv[2:]:
    serve(address)
print("listening", flush=True)
threading.Event().wait()
"""

# A client: connects to port 80 of each address in argv, prints what the listener says.
CLIENT = """
import socket, sys
for address in sys.argv[1:]:
    with socket.create_connection((address, 80), timeout=10) as connection:
        print(connection.recv(100).decode())
"""


def listen(namespace: netns.Namespace, port: int, *addresses: str) -> None:
    """Start SERVER inside ``namespace`` and wait until it listens."""
    server = namespace.popen(
        [sys.executable, "-c", SERVER, str(port), *addresses], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdout.readline() == "listening\n"


def test_a_listener_on_the_addresses_is_reached_from_another_namespace(
    net: netns.Namespaces,
) -> None:
    """After `up`, port 80 on both addresses binds; a pod reaches it over a veth.

    IPv4 through the pod's default route (as a container on a Docker bridge reaches the
    host), IPv6 through a /128 route (as the node agent's cluster test does).
    """
    host, pod = net.namespace("host"), net.namespace("pod")
    link = net.veth(host, pod)
    assert cli(host, "up", *AGENT).returncode == 0
    listen(host, 80, AGENT_V4, AGENT_V6)
    pod.route("default", via=link.a_ipv4.ip)
    pod.route(f"{AGENT_V6}/128", via=link.a_ipv6.ip)
    reached = pod.run([sys.executable, "-c", CLIENT, AGENT_V4, AGENT_V6])
    assert reached.stdout.splitlines() == [AGENT_V4, AGENT_V6]


# The DNAT alternative in docs/link-local.md, exactly as written there ("docker0" is the
# bridge; the test swaps in its veth). The daemon listens on its default 127.0.0.1:9911.
IPTABLES_UP = [
    "sysctl -w net.ipv4.conf.docker0.route_localnet=1",
    "iptables -t nat -A PREROUTING -p tcp -d 169.254.170.2 --dport 80"
    " -j DNAT --to-destination 127.0.0.1:9911",
    "iptables -t nat -A OUTPUT -p tcp -d 169.254.170.2 --dport 80"
    " -j DNAT --to-destination 127.0.0.1:9911",
    "iptables -I INPUT -d 127.0.0.0/8 ! -s 127.0.0.0/8"
    " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
]
IPTABLES_DOWN = [
    "iptables -t nat -D PREROUTING -p tcp -d 169.254.170.2 --dport 80"
    " -j DNAT --to-destination 127.0.0.1:9911",
    "iptables -t nat -D OUTPUT -p tcp -d 169.254.170.2 --dport 80"
    " -j DNAT --to-destination 127.0.0.1:9911",
    "iptables -D INPUT -d 127.0.0.0/8 ! -s 127.0.0.0/8"
    " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    "sysctl -w net.ipv4.conf.docker0.route_localnet=0",
]
NFT_RULES = """\
table ip credential_sidecar {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 169.254.170.2 tcp dport 80 dnat to 127.0.0.1:9911
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tip daddr 169.254.170.2 tcp dport 80 dnat to 127.0.0.1:9911
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct status & dnat == 0 drop
\t}
}
"""
NFT_UP = ["sysctl -w net.ipv4.conf.docker0.route_localnet=1", "nft -f credential-sidecar.nft"]
NFT_DOWN = [
    "nft delete table ip credential_sidecar",
    "sysctl -w net.ipv4.conf.docker0.route_localnet=0",
]


@pytest.mark.parametrize(
    ("tool", "up", "down"),
    [("iptables", IPTABLES_UP, IPTABLES_DOWN), ("nft", NFT_UP, NFT_DOWN)],
)
def test_the_documented_dnat_alternative_works_and_is_undone(
    net: netns.Namespaces, tmp_path: Path, tool: str, up: list[str], down: list[str]
) -> None:
    """The doc's DNAT commands let a pod and the host reach 127.0.0.1:9911 via 169.254.170.2."""
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool}")
    documented = (REPO / "docs" / "link-local.md").read_text()
    for command in [*up, *down]:
        assert command in documented, command
    assert NFT_RULES.expandtabs(4) in documented.expandtabs(4)
    host, pod = net.namespace("host"), net.namespace("pod")
    link = net.veth(host, pod)
    pod.route("default", via=link.a_ipv4.ip)
    host.route("default", via=link.b_ipv4.ip)  # a real host routes 169.254.170.2 somewhere
    listen(host, 9911, "127.0.0.1")
    (tmp_path / "credential-sidecar.nft").write_text(NFT_RULES)
    for command in up:
        host.run(["sh", "-c", command.replace("docker0", link.a_name)], cwd=tmp_path)
    capability = [sys.executable, "-c", CLIENT, "169.254.170.2"]
    assert pod.run(capability).stdout.splitlines() == ["127.0.0.1"]
    assert host.run(capability).stdout.splitlines() == ["127.0.0.1"]
    for command in down:
        host.run(["sh", "-c", command.replace("docker0", link.a_name)], cwd=tmp_path)
    nat = host.run(["iptables-save"] if tool == "iptables" else ["nft", "list", "ruleset"])
    assert "169.254.170.2" not in nat.stdout


def test_namespaces_unavailable_names_the_missing_tools(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without unshare/nsenter/ip on PATH, the skip reason names them."""
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = netns.unavailable_reason.__wrapped__()
    assert reason is not None and "unshare, nsenter, ip" in reason
