"""DNS-rebinding defence for listeners without client auth (IMDS, ``--insecure-no-auth``).

A web page in the developer's browser can make ``attacker.example`` resolve to 127.0.0.1
and then read whatever a local listener answers. Browsers always send the name they used
in ``Host`` and, for cross-origin requests, an ``Origin`` header; SDKs send the address they
were given (or, like aws-crt 0.16 over IMDS, no ``Host`` at all) and never ``Origin``. So
these listeners accept only a ``Host`` naming their own address or ``localhost`` (with their
port, if one is given) and refuse every request carrying ``Origin``.
"""

from __future__ import annotations

import ipaddress

from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar.outputs.http import LogThrottle, error_response, log_refusal

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    """An IP literal, without any IPv6 scope, IPv4-mapped addresses as IPv4; else None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _split_host(value: str) -> tuple[str, str | None] | None:
    """``name[:port]`` / ``[v6][:port]`` -> (name, port or None); None if malformed."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        return name, rest[1:] if rest else None
    name, sep, port = value.partition(":")
    if ":" in port:
        return None
    return name, port if sep else None


def host_allowed(value: str, local_host: str, local_port: int) -> bool:
    """Does a ``Host`` header name the socket the request arrived on (or ``localhost``)?"""
    parts = _split_host(value.strip().lower())
    if parts is None:
        return False
    name, port = parts
    if port is not None and (not port.isdigit() or int(port) != local_port):
        return False
    if name == "localhost":
        return True
    # A DNS name (what a rebinding page sends) is no address and never equal to ours.
    address = _address(name)
    return address is not None and address == _address(local_host)


def _local_socket(request: BaseRequest) -> tuple[str, int] | None:
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return str(sockname[0]), int(sockname[1])
    return None


class RebindingGuard:
    """403 JSON for a request with an ``Origin`` header or a ``Host`` naming another host.

    The listener's own address is read from the connection's socket, so a listener on
    port 0 (or, with the override, on 0.0.0.0) needs no configuration: ``Host`` must name
    the very address and port the client connected to. ``also_hosts``: ``Host`` values
    accepted besides (the capability listener's ``169.254.170.2``).
    """

    def __init__(self, refusals: LogThrottle, also_hosts: tuple[str, ...] = ()) -> None:
        self._refusals = refusals
        self._also = also_hosts

    def __call__(self, request: BaseRequest) -> web.StreamResponse | None:
        headers = request.headers
        hosts = headers.getall("Host", [])
        if "Origin" in headers:
            code, message = (
                "OriginNotAllowed",
                "requests carrying an Origin header (from a web page) are refused: this "
                "listener has no client auth and serves SDKs only",
            )
        else:
            if not hosts or (len(hosts) == 1 and hosts[0].strip() in self._also):
                return None
            local = _local_socket(request)
            if len(hosts) == 1 and local is not None and host_allowed(hosts[0], *local):
                return None
            shown = "this listener's address"
            if local is not None:
                host = f"[{local[0]}]" if ":" in local[0] else local[0]
                shown = f"{host}:{local[1]} or localhost:{local[1]}"
            code, message = (
                "HostNotAllowed",
                f"the Host header must name this listener ({shown}); other names are refused "
                "to stop DNS rebinding: point the client at the address itself",
            )
        # Never the header's value: no request header value reaches the log.
        log_refusal(
            self._refusals, "host_refused", f"refused a request: {code}", request.remote or "?"
        )
        return error_response(403, code, message)
