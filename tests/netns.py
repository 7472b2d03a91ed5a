"""Network namespaces for tests: private networks on one machine, no root needed, no host change.

Every namespace lives in one user namespace the helper creates (``unshare --user
--map-root-user``), so the test has CAP_NET_ADMIN inside them, and nothing it does touches
the host's interfaces, addresses or routes. A namespace exists while its holder process (a
``cat`` reading a pipe from the test) runs: when the test ends, or dies, the pipe closes and
the namespace, its veth ends and its addresses go with it.

API::

    from tests import netns

    with netns.namespaces() as net:          # pytest.skip()s, with the reason, if unsupported
        host = net.namespace("host")         # a new network namespace with lo up
        pod = net.namespace("pod")
        link = net.veth(host, pod)           # a veth pair, both ends up, addressed:
        #   link.a_ipv4 / link.b_ipv4  10.213.N.1/30, .2/30     (IPv4Interface)
        #   link.a_ipv6 / link.b_ipv6  fd00:213:0:N::1/64, ::2  (IPv6Interface, nodad)
        #   link.a_name / link.b_name  the interface names in host and pod
        pod.route("169.254.170.23", via=link.a_ipv4.ip)   # reach host's address over the veth
        pod.route("fd00:ec2::23", via=link.a_ipv6.ip)
        host.run(["credential-sidecar", "link-local", "up", "--address", "169.254.170.23"])
        server = host.popen([...])           # a subprocess.Popen inside host, ended on exit
        done = pod.run([...], check=False)   # CompletedProcess[str], output captured
        host.addresses("lo")                 # ["127.0.0.1/8", "169.254.170.23/32", "::1/128"]
        host.argv(["ip", "route"])           # the command line that runs argv inside host

``Namespace.run`` and ``Namespace.popen`` take the same keyword arguments as
``subprocess.run`` and ``subprocess.Popen`` (``run`` captures text output and checks the exit
code unless told otherwise; ``timeout`` defaults to 30 s). Processes started with ``popen``
are sent SIGTERM (then SIGKILL after 5 s) when the ``with`` block ends, before the namespaces
go away. ``unavailable_reason()`` says why namespaces cannot be used here (``None`` if they
can), for a ``pytest.mark.skipif``.

Needs ``unshare``, ``nsenter`` (util-linux), ``ip`` (iproute2), user namespaces and the
``veth`` driver; as root or as any user where unprivileged user namespaces are allowed.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

TIMEOUT = 30.0  # seconds for one command run inside a namespace
_STOP_TIMEOUT = 5.0
_TOOLS = ("unshare", "nsenter", "ip")
# The holder says it is inside its new namespaces, then holds them until its stdin closes.
_NEW_USER_AND_NET = ["unshare", "--user", "--map-root-user", "--net", "--"]
_HOLD = ["sh", "-c", "echo ready && exec cat >/dev/null"]


@functools.cache
def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can."""
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"network namespace tests need {', '.join(missing)} (util-linux, iproute2)"
    probe = subprocess.run(
        [*_NEW_USER_AND_NET, "ip", "link", "add", "probe0", "type", "veth", "peer", "name", "p1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if probe.returncode != 0:
        return (
            "cannot create a user + network namespace with a veth pair "
            f"(unshare --user --map-root-user --net; ip link add type veth): "
            f"{probe.stderr.strip() or f'exit {probe.returncode}'}"
        )
    return None


@dataclass(frozen=True)
class Veth:
    """A veth pair between namespaces ``a`` and ``b``, both ends up and addressed."""

    a: Namespace
    b: Namespace
    a_name: str
    b_name: str
    a_ipv4: ipaddress.IPv4Interface
    b_ipv4: ipaddress.IPv4Interface
    a_ipv6: ipaddress.IPv6Interface
    b_ipv6: ipaddress.IPv6Interface


@dataclass
class Namespace:
    """One network namespace, held open by ``holder``."""

    name: str
    holder: subprocess.Popen[str]
    _processes: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        """A process inside the namespace (``/proc/PID/ns/net`` names it)."""
        return self.holder.pid

    def argv(self, command: Sequence[str]) -> list[str]:
        """The command line that runs ``command`` inside this namespace."""
        # --preserve-credentials: no setgroups, which a mapped user namespace denies.
        enter = ["nsenter", f"--target={self.pid}", "--user", "--net"]
        return [*enter, "--preserve-credentials", "--", *command]

    def run(
        self, command: Sequence[str], *, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside; text output captured, an error if it fails (``check``)."""
        kwargs.setdefault("timeout", TIMEOUT)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        result: subprocess.CompletedProcess[str] = subprocess.run(
            self.argv(command), check=False, **kwargs
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in namespace {self.name}: {' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``command`` inside; it is stopped when the ``namespaces()`` block ends."""
        process: subprocess.Popen[Any] = subprocess.Popen(self.argv(command), **kwargs)
        self._processes.append(process)
        return process

    def route(
        self, destination: str, *, via: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> None:
        """Route ``destination`` (an address, /32 or /128, or a network) through ``via``."""
        self.run(["ip", "route", "add", destination, "via", str(via)])

    def addresses(self, interface: str = "lo") -> list[str]:
        """The addresses on ``interface``, as ``ADDRESS/PREFIX`` strings."""
        shown = json.loads(self.run(["ip", "-j", "address", "show", "dev", interface]).stdout)
        return [f"{a['local']}/{a['prefixlen']}" for link in shown for a in link["addr_info"]]

    def _stop_processes(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _close_pipes(process)


def _close_pipes(process: subprocess.Popen[Any]) -> None:
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class Namespaces:
    """The namespaces of one test: made by ``namespace()``, joined by ``veth()``."""

    def __init__(self) -> None:
        self._namespaces: list[Namespace] = []
        self._links = 0

    def namespace(self, name: str | None = None) -> Namespace:
        """A new network namespace (in the test's user namespace) with lo up."""
        name = name or f"ns{len(self._namespaces)}"
        if self._namespaces:  # the same user namespace, so veth pairs can join them
            holder_argv = self._namespaces[0].argv(["unshare", "--net", "--", *_HOLD])
        else:
            holder_argv = [*_NEW_USER_AND_NET, *_HOLD]
        holder = subprocess.Popen(
            holder_argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None
        # Nothing may run "inside" before the holder is: it would run in the host's namespace.
        if holder.stdout.readline() != "ready\n":
            _, error = holder.communicate(timeout=TIMEOUT)
            raise AssertionError(f"cannot create network namespace {name}: {error.strip()}")
        namespace = Namespace(name, holder)
        self._namespaces.append(namespace)
        namespace.run(["ip", "link", "set", "lo", "up"])
        return namespace

    def veth(self, a: Namespace, b: Namespace) -> Veth:
        """A veth pair from ``a`` to ``b``, each end with a /30 and a /64 (nodad), both up."""
        n = self._links
        self._links += 1
        a_name, b_name = f"veth{n}a", f"veth{n}b"
        v4 = ipaddress.IPv4Network(f"10.213.{n // 64}.{n % 64 * 4}/30")
        v6 = ipaddress.IPv6Network(f"fd00:213:0:{n:x}::/64")
        a_ipv4 = ipaddress.IPv4Interface(f"{v4[1]}/30")
        b_ipv4 = ipaddress.IPv4Interface(f"{v4[2]}/30")
        a_ipv6 = ipaddress.IPv6Interface(f"{v6[1]}/64")
        b_ipv6 = ipaddress.IPv6Interface(f"{v6[2]}/64")
        peer = ["peer", "name", b_name, "netns", f"/proc/{b.pid}/ns/net"]
        a.run(["ip", "link", "add", a_name, "type", "veth", *peer])
        for namespace, interface, ipv4, ipv6 in (
            (a, a_name, a_ipv4, a_ipv6),
            (b, b_name, b_ipv4, b_ipv6),
        ):
            namespace.run(["ip", "address", "add", str(ipv4), "dev", interface])
            namespace.run(["ip", "address", "add", str(ipv6), "dev", interface, "nodad"])
            namespace.run(["ip", "link", "set", interface, "up"])
        return Veth(a, b, a_name, b_name, a_ipv4, b_ipv4, a_ipv6, b_ipv6)

    def close(self) -> None:
        """Stop every process started inside, then let every namespace go."""
        for namespace in self._namespaces:
            namespace._stop_processes()
        # Later namespaces were entered through the first one's holder: close in reverse.
        for namespace in reversed(self._namespaces):
            holder = namespace.holder
            assert holder.stdin is not None
            with contextlib.suppress(OSError):
                holder.stdin.close()  # its cat reads end of file and exits
            try:
                holder.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
            _close_pipes(holder)
        self._namespaces.clear()


@contextlib.contextmanager
def namespaces() -> Iterator[Namespaces]:
    """Namespaces for one test, all gone when the block ends; skips the test if unsupported."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    net = Namespaces()
    try:
        yield net
    finally:
        net.close()
