"""Put the endpoints' link-local addresses on an interface of this host, and take them away.

AWS SDKs fetch container credentials over plain http only from loopback and a few fixed
addresses: ``169.254.170.2`` (the ECS capability endpoint), ``169.254.170.23`` and
``fd00:ec2::23`` (the EKS Pod Identity Agent's). To listen on one, the address must be
local to the host: ``add_addresses`` puts it on an interface (``lo`` by default) as a /32 or
/128, ``remove_addresses`` takes it off. Both are idempotent and need CAP_NET_ADMIN.

They speak rtnetlink directly (``RTM_NEWADDR``/``RTM_DELADDR`` on an ``AF_NETLINK``
socket, standard library only), as ``ip address add|del`` does: slim images have no
iproute2, and a netlink library would be a new runtime dependency for two messages. The
calls block for at most ``NETLINK_TIMEOUT`` seconds; from asyncio, run them with
``asyncio.to_thread``.

Errors (all ``SidecarError``, each naming the problem and the fix)::

    LinkLocalError                 the kernel refused the change (an unexpected errno)
    ├── LinkLocalAddressError      an address is malformed or outside 169.254.0.0/16 / fc00::/7
    ├── InterfaceNotFoundError     no such interface in this network namespace
    └── NetAdminRequiredError      the process lacks CAP_NET_ADMIN

An IPv6 address on a host whose IPv6 is disabled is not an error: no client could reach it,
so ``add_addresses`` reports ``Outcome.IPV6_DISABLED`` and the caller decides (the CLI warns,
as the EKS agent treats IPv6 as optional).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.core.errors import Disposition, SidecarError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The ECS capability endpoint: SDKs that know only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI.
CAPABILITY_ADDRESS = ipaddress.IPv4Address("169.254.170.2")
#: Where the node agent listens, as the EKS Pod Identity Agent does.
NODE_AGENT_ADDRESSES: tuple[Address, ...] = (
    ipaddress.IPv4Address("169.254.170.23"),
    ipaddress.IPv6Address("fd00:ec2::23"),
)
#: Always present, needs no kernel module (the EKS agent's dummy link needs ``dummy``).
DEFAULT_INTERFACE = "lo"
#: Seconds to wait for the kernel's answer: it is immediate unless something is badly wrong.
NETLINK_TIMEOUT = 5.0

# Only addresses nothing routes to: putting a routable address on the host would
# black-hole the host's traffic to whoever really owns it.
_ALLOWED: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv4Network("169.254.0.0/16"),  # IPv4 link-local (RFC 3927)
    ipaddress.IPv6Network("fc00::/7"),  # IPv6 unique local (RFC 4193)
)
_IFNAMSIZ = 16  # the kernel's limit, including the terminating NUL
_MAX_ADDRESSES = 16  # a handful is the use; more is a mistake (or a loop gone wrong)
_SHOWN = 64  # characters of a bad argument quoted back in an error

# rtnetlink, from <linux/netlink.h>, <linux/rtnetlink.h> and <linux/if_addr.h>.
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_NLMSGERR = struct.Struct("=i")  # negative errno, 0 for an acknowledgement
_NLMSG_ERROR = 2
_RTM_NEWADDR = 20
_RTM_DELADDR = 21
_NLM_F_REQUEST = 0x01
_NLM_F_ACK = 0x04
_NLM_F_CAPPED = 0x100  # in an error: the request echoed back is only its header
_NLM_F_ACK_TLVS = 0x200  # in an error: extended-ack attributes follow
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_FLAGS = 8
_IFA_F_NODAD = 0x02  # IPv6: usable at once, no duplicate address detection
_NLMSGERR_ATTR_MSG = 1
_SOL_NETLINK = 270
_NETLINK_EXT_ACK = 11  # the kernel says why in words (Linux >= 4.12)
_RECV_SIZE = 65536
_MAX_READS = 64  # each read holds whole messages; ours is answered by the first one


class LinkLocalError(SidecarError):
    """An address could not be added or removed; the message says why and what to do."""

    disposition = Disposition.FATAL


class LinkLocalAddressError(LinkLocalError):
    """An address is malformed, or not in 169.254.0.0/16 (IPv4) or fc00::/7 (IPv6)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class InterfaceNotFoundError(LinkLocalError):
    """The interface does not exist in this network namespace, or its name is invalid."""


class NetAdminRequiredError(LinkLocalError):
    """The kernel refused because the process lacks CAP_NET_ADMIN."""


class Outcome(enum.Enum):
    """What happened to one address."""

    ADDED = "added"
    ALREADY_PRESENT = "already present"
    REMOVED = "removed"
    ALREADY_ABSENT = "already absent"
    #: IPv6 is disabled on the interface or in the kernel: nothing added, nothing to reach.
    IPV6_DISABLED = "IPv6 disabled"


@dataclass(frozen=True)
class AddressChange:
    """The outcome for one address on one interface."""

    address: Address
    interface: str
    outcome: Outcome

    @property
    def prefix(self) -> str:
        """The address as it sits on the interface: ``169.254.170.2/32``."""
        return f"{self.address}/{self.address.max_prefixlen}"

    def describe(self) -> str:
        """One line for a person: ``added 169.254.170.2/32 to lo``."""
        where = self.interface
        match self.outcome:
            case Outcome.ADDED:
                return f"added {self.prefix} to {where}"
            case Outcome.ALREADY_PRESENT:
                return f"{self.prefix} already on {where}"
            case Outcome.REMOVED:
                return f"removed {self.prefix} from {where}"
            case Outcome.ALREADY_ABSENT:
                return f"{self.prefix} not on {where}: nothing to remove"
            case Outcome.IPV6_DISABLED:
                return (
                    f"{self.prefix} not added: IPv6 is disabled on {where} "
                    f"(sysctl net.ipv6.conf.{where}.disable_ipv6, or ipv6.disable=1 at boot); "
                    "IPv6 clients cannot reach this host, IPv4 addresses still work"
                )


def parse_addresses(addresses: Iterable[str | Address]) -> list[Address]:
    """The addresses, checked and without duplicates; every bad one named in one error."""
    parsed: list[Address] = []
    problems: list[str] = []
    items = list(addresses)
    if len(items) > _MAX_ADDRESSES:
        raise LinkLocalAddressError(
            [f"{len(items)} addresses given; at most {_MAX_ADDRESSES} at once"]
        )
    for item in items:
        try:
            address = item if not isinstance(item, str) else _parse(item)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not any(address in network for network in _ALLOWED):
            problems.append(
                f"{address} is neither IPv4 link-local (169.254.0.0/16) nor IPv6 unique local "
                f"(fc00::/7): adding it to this host would capture traffic meant for another "
                f"machine; use e.g. {CAPABILITY_ADDRESS} or {NODE_AGENT_ADDRESSES[1]}"
            )
        elif address not in parsed:
            parsed.append(address)
    if problems:
        raise LinkLocalAddressError(problems)
    if not parsed:
        raise LinkLocalAddressError(["no address given"])
    return parsed


def add_addresses(addresses: Iterable[str | Address], interface: str) -> list[AddressChange]:
    """Put each address on ``interface`` (/32 or /128); one already there is left as it is.

    Raises ``LinkLocalAddressError`` before changing anything if any address is bad, and
    stops at the first address the kernel refuses (the ones before it stay added: running
    it again after the fix is safe).
    """
    parsed = parse_addresses(addresses)
    index = _interface_index(interface)
    with _Netlink() as netlink:
        return [_add(netlink, address, interface, index) for address in parsed]


def remove_addresses(addresses: Iterable[str | Address], interface: str) -> list[AddressChange]:
    """Take each address (/32 or /128) off ``interface``; one not there is not an error."""
    parsed = parse_addresses(addresses)
    index = _interface_index(interface)
    with _Netlink() as netlink:
        return [_remove(netlink, address, interface, index) for address in parsed]


def interface_is_up(interface: str) -> bool:
    """Whether ``interface`` is administratively up (an address on a down one answers nothing)."""
    siocgifflags = 0x8913
    iff_up = 0x1
    request = struct.pack("16sH22x", _interface_name(interface).encode(), 0)  # struct ifreq
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), siocgifflags, request)
        except OSError as exc:
            raise _no_interface(interface) from exc
    (flags,) = struct.unpack_from("H", answer, 16)
    return bool(flags & iff_up)


def _parse(text: str) -> Address:
    shown = repr(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")
    if "/" in text:
        raise ValueError(
            f"{shown}: give the address without a prefix length; it is always added as "
            "/32 (IPv4) or /128 (IPv6)"
        )
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(
            f"{shown} is not an IP address: expected e.g. {CAPABILITY_ADDRESS} or "
            f"{NODE_AGENT_ADDRESSES[1]} (no brackets, no port)"
        ) from None


def _interface_name(interface: str) -> str:
    encoded = interface.encode(errors="replace")
    if (
        not interface
        or len(encoded) >= _IFNAMSIZ
        or interface in (".", "..")
        or any(c in interface for c in "/:\0")
        or any(c.isspace() for c in interface)
    ):
        raise InterfaceNotFoundError(
            f"{interface[:_SHOWN]!r} is not a valid interface name (1 to {_IFNAMSIZ - 1} bytes, "
            f"no '/', ':' or spaces); the default is {DEFAULT_INTERFACE}"
        )
    return interface


def _no_interface(interface: str) -> InterfaceNotFoundError:
    return InterfaceNotFoundError(
        f"no network interface named {interface!r} in this network namespace: list them with "
        f"`ip link` (or /sys/class/net), or leave out --interface to use {DEFAULT_INTERFACE}; "
        "in a container, the host's interfaces are visible only with host networking "
        "(hostNetwork: true, --network host)"
    )


def _interface_index(interface: str) -> int:
    try:
        return socket.if_nametoindex(_interface_name(interface))
    except OSError:
        raise _no_interface(interface) from None


def _add(netlink: _Netlink, address: Address, interface: str, index: int) -> AddressChange:
    flags = _NLM_F_CREATE | _NLM_F_EXCL
    code, detail = netlink.request(_RTM_NEWADDR, flags, _address_message(address, index))
    if code == 0:
        return AddressChange(address, interface, Outcome.ADDED)
    if code == errno.EEXIST:
        return AddressChange(address, interface, Outcome.ALREADY_PRESENT)
    if address.version == 6 and code in (errno.EACCES, errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
        # EACCES: disable_ipv6 on the interface; the others: no IPv6 in the kernel at all.
        return AddressChange(address, interface, Outcome.IPV6_DISABLED)
    raise _refused("add", address, interface, code, detail)


def _remove(netlink: _Netlink, address: Address, interface: str, index: int) -> AddressChange:
    code, detail = netlink.request(_RTM_DELADDR, 0, _address_message(address, index))
    if code == 0:
        return AddressChange(address, interface, Outcome.REMOVED)
    # EADDRNOTAVAIL: not there. For IPv6, ENXIO (no IPv6 state on the interface) and
    # EAFNOSUPPORT/EOPNOTSUPP (no IPv6 in the kernel) also mean it cannot be there.
    absent = {errno.EADDRNOTAVAIL}
    if address.version == 6:
        absent |= {errno.ENXIO, errno.EAFNOSUPPORT, errno.EOPNOTSUPP}
    if code in absent:
        return AddressChange(address, interface, Outcome.ALREADY_ABSENT)
    raise _refused("remove", address, interface, code, detail)


def _refused(verb: str, address: Address, interface: str, code: int, detail: str) -> LinkLocalError:
    """The error for a refusal, with the fix for the ones an operator can cause."""
    where = "to" if verb == "add" else "from"
    what = f"cannot {verb} {address}/{address.max_prefixlen} {where} {interface}"
    if code == errno.EPERM:
        return NetAdminRequiredError(
            f"{what}: changing addresses needs CAP_NET_ADMIN: run as root or with "
            "CAP_NET_ADMIN, e.g. an init container with securityContext.capabilities.add: "
            "[NET_ADMIN] (and hostNetwork: true, so the address lands on the node)"
        )
    if code == errno.ENODEV:
        return _no_interface(interface)
    name = errno.errorcode.get(code, str(code))
    kernel = f" ({detail})" if detail else ""
    return LinkLocalError(f"{what}: the kernel refused: {os.strerror(code)} [{name}]{kernel}")


def _address_message(address: Address, index: int) -> bytes:
    """An ``ifaddrmsg`` for ``address``/max prefix on interface ``index``, as ``ip`` sends it."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    flags = _IFA_F_NODAD if address.version == 6 else 0
    packed = address.packed
    return (
        _IFADDRMSG.pack(family, address.max_prefixlen, flags, 0, index)  # scope 0: global
        + _attribute(_IFA_LOCAL, packed)
        + _attribute(_IFA_ADDRESS, packed)
        + _attribute(_IFA_FLAGS, struct.pack("=I", flags))
    )


def _attribute(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    padding = b"\0" * (-length % 4)
    return _RTATTR.pack(length, kind) + payload + padding


class _Netlink:
    """One rtnetlink socket: a request, then its acknowledgement or error."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:  # a sandbox without netlink (seccomp, gVisor)
            raise LinkLocalError(
                f"cannot open an rtnetlink socket to change addresses: {exc.strerror or exc}; "
                "run on a Linux host (or a container on the host's network) that allows it"
            ) from None
        self._sequence = 0
        try:
            self._sock.bind((0, 0))
            # An old kernel refuses: its errors then come without the kernel's words.
            with contextlib.suppress(OSError):
                self._sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> _Netlink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()

    def request(self, kind: int, flags: int, payload: bytes) -> tuple[int, str]:
        """Send one request; the kernel's errno (0 for success) and its message, if any."""
        self._sequence += 1
        sequence = self._sequence
        header = _NLMSGHDR.pack(
            _NLMSGHDR.size + len(payload), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, sequence, 0
        )
        deadline = time.monotonic() + NETLINK_TIMEOUT
        try:
            self._sock.settimeout(NETLINK_TIMEOUT)
            self._sock.send(header + payload)
            for _ in range(_MAX_READS):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._sock.settimeout(remaining)
                answer = _find_answer(self._sock.recv(_RECV_SIZE), sequence)
                if answer is not None:
                    return answer
        except TimeoutError:
            pass
        except OSError as exc:
            raise LinkLocalError(f"rtnetlink request failed: {exc.strerror or exc}") from None
        raise LinkLocalError(
            f"the kernel did not answer a netlink request within {NETLINK_TIMEOUT:g}s"
        )


def _find_answer(data: bytes, sequence: int) -> tuple[int, str] | None:
    """The (errno, kernel message) of the error/ack for ``sequence`` in ``data``, if there."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break  # malformed: stop rather than read past the message
        if kind == _NLMSG_ERROR and seq == sequence:
            body = data[offset + _NLMSGHDR.size : offset + length]
            if len(body) < _NLMSGERR.size:
                return errno.EIO, "truncated netlink error"
            (code,) = _NLMSGERR.unpack_from(body)
            return -code, _extended_message(body, flags)
        offset += (length + 3) & ~3
    return None


def _extended_message(body: bytes, flags: int) -> str:
    """The kernel's own words (extended ack ``NLMSGERR_ATTR_MSG``), or ''."""
    if not flags & _NLM_F_ACK_TLVS or len(body) < _NLMSGERR.size + _NLMSGHDR.size:
        return ""
    echoed = _NLMSGHDR.size
    if not flags & _NLM_F_CAPPED:
        (echoed,) = struct.unpack_from("=I", body, _NLMSGERR.size)
    offset = _NLMSGERR.size + ((echoed + 3) & ~3)
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size or offset + length > len(body):
            break
        if kind == _NLMSGERR_ATTR_MSG:
            text = body[offset + _RTATTR.size : offset + length].split(b"\0", 1)[0]
            return text.decode("utf-8", "replace")[:200]
        offset += (length + 3) & ~3
    return ""
