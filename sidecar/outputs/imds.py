"""An IMDSv2-compatible listener, for clients that cannot use container credentials.

SDKs accept plain-HTTP container credentials only from loopback and two link-local
addresses, so a `docker build` on a bridge network cannot reach ``127.0.0.1``. The
instance metadata protocol has no such host allow-list: a client pointed at
``AWS_EC2_METADATA_SERVICE_ENDPOINT=http://<bridge-gateway>:<port>/`` gets credentials
through the same flow as on EC2:

    PUT /latest/api/token                              X-aws-ec2-metadata-token-ttl-seconds
    GET /latest/meta-data/iam/security-credentials/    -> the role name (no newline)
    GET /latest/meta-data/iam/security-credentials/<role-name>   X-aws-ec2-metadata-token

IMDS has no client auth token: anyone who can reach this listener gets the role. So it is
off unless ``--imds-listen`` is given, binds only loopback or link-local addresses unless
``--insecure-allow-unauthenticated-network-listener`` (a bridge gateway needs it), serves
one chosen role, insists on IMDSv2 session tokens (no GET without one, which blocks the
classic SSRF pattern), refuses DNS-rebinding requests from web pages (``rebinding.py``)
and, like EC2's IMDSv2, refuses a token request that carries ``X-Forwarded-For`` (it came
through a proxy).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar.cache.refresher import Refresher, Snapshot
from sidecar.core.credentials import format_expiration, role_name
from sidecar.core.errors import BadRequest, Forbidden, NotFound, Unauthenticated, Unavailable
from sidecar.core.metrics import Metrics
from sidecar.outputs.http import DEFAULT_REFUSAL_LOG_BUDGET, JSON, NO_STORE, ROLE, LogThrottle
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.rebinding import RebindingGuard
from sidecar.outputs.rendered import Rendered, Wire, respond
from sidecar.outputs.router import Router

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a password
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
_SLASHES = re.compile("/{2,}")
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MIN_TTL, MAX_TTL = 1, 21600


class SessionTokens:
    """IMDSv2 session tokens, stateless: nothing is stored, so nothing can be flooded or evicted.

    A token is ``base64url(expiry || nonce || HMAC-SHA256(key, expiry || nonce))`` with a
    random key per listener (so per process): checking one recomputes the MAC, compares it in
    constant time and checks the expiry on the injected monotonic clock. Tokens die with the
    process, as EC2's die with the instance's metadata service.
    """

    _EXPIRY = struct.Struct(">Q")  # expiry in milliseconds on the monotonic clock
    _NONCE_BYTES = 16
    _MAC_BYTES = hashlib.sha256().digest_size
    _RAW_BYTES = _EXPIRY.size + _NONCE_BYTES + _MAC_BYTES
    #: Every token has exactly this length: base64 of _RAW_BYTES bytes, no padding.
    LENGTH = (_RAW_BYTES * 4 + 2) // 3

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._key = secrets.token_bytes(32)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def issue(self, ttl: int) -> str:
        if not 1 <= ttl <= 21600:
            raise ValueError(f"ttl must be {MIN_TTL}..{MAX_TTL}")
        expiry_ms = math.ceil((self._monotonic() + ttl) * 1000)
        payload = self._EXPIRY.pack(expiry_ms) + secrets.token_bytes(self._NONCE_BYTES)
        raw = payload + self._mac(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def valid(self, token: str | None) -> bool:
        if not token or len(token) != self.LENGTH or not token.isascii():
            return False
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:  # binascii.Error: not base64
            return False
        if len(raw) != self._RAW_BYTES:
            return False
        payload, mac = raw[: -self._MAC_BYTES], raw[-self._MAC_BYTES :]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return False
        (expiry_ms,) = self._EXPIRY.unpack_from(payload)
        return bool(expiry_ms > self._monotonic() * 1000)


def limit_hops(request: BaseRequest, hops: int) -> None:
    """Send this connection's answers with an IP TTL (hop limit) of ``hops``, like EC2's
    IMDSv2 token answers: with 1, a token never crosses a router, so a client behind one
    (a container network routed through this host, a NAT) cannot start a session."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
        with contextlib.suppress(OSError):  # IPv4 clients of a dual-stack socket
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)
    elif sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)


def render_imds_json(snap: Snapshot) -> bytes:
    """EC2's answer: ``Code``, ``LastUpdated`` and ``Type`` besides the credentials."""
    creds = snap.credentials
    body = {
        "Code": "Success",
        "LastUpdated": format_expiration(snap.obtained_on),
        "Type": "AWS-HMAC",
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token,
        "Expiration": format_expiration(creds.expiration),
    }
    return json.dumps(body).encode()


def _collapse_slashes(path: str) -> str:
    # Java v1/v2 and JavaScript v2 append /latest/... to an endpoint ending in a slash.
    return _SLASHES.sub("/", path) if "//" in path else path


def create_imds_router(
    refresher: Refresher,
    role_arn: str,
    metrics: Metrics,
    cold_start_wait: float,
    tokens: SessionTokens | None = None,
    limiter: FailureLimiter | None = None,
    refusals: LogThrottle | None = None,
    hop_limit: int | None = None,
) -> Router:
    """The IMDS routes. It has no client auth, so it refuses DNS-rebinding requests (a Host
    naming another host, any Origin); ``limiter``/``refusals`` as for ``create_router``;
    ``hop_limit``: the IP TTL of its answers (EC2's response hop limit)."""
    tokens = tokens or SessionTokens()
    name = role_name(role_arn)
    answers = Rendered(lambda snap: Wire.ok(render_imds_json(snap), JSON, NO_STORE))
    refusals = refusals or LogThrottle(budget=DEFAULT_REFUSAL_LOG_BUDGET)
    router = Router(metrics, refusals, limiter, RebindingGuard(refusals), _collapse_slashes)

    async def issue_token(request: BaseRequest, _: str | None) -> web.StreamResponse:
        if "X-Forwarded-For" in request.headers:
            raise Forbidden("token requests that came through a proxy are refused", "Forbidden")
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            raise BadRequest(f"{TTL_HEADER} must be 1..21600", "InvalidTTL")
        if hop_limit is not None:
            limit_hops(request, hop_limit)
        return web.Response(text=tokens.issue(ttl), headers={TTL_HEADER: str(ttl)})

    def authorise(request: BaseRequest) -> None:
        if not tokens.valid(request.headers.get(TOKEN_HEADER)):
            raise Unauthenticated(f"send a session token in {TOKEN_HEADER}")

    async def list_roles(request: BaseRequest, _: str | None) -> web.StreamResponse:
        authorise(request)
        return web.Response(text=name)

    async def credentials(request: BaseRequest, asked: str | None) -> web.StreamResponse:
        authorise(request)
        if asked != name:
            raise NotFound(f"this endpoint serves only the role {name}")
        request[ROLE] = refresher.name
        snap = await refresher.wait_servable(cold_start_wait)
        if snap is None:
            raise Unavailable("no valid credentials yet; the daemon keeps retrying STS")
        return respond(request, answers(snap))

    router.add("PUT", TOKEN_PATH, issue_token)
    router.add("GET", CREDENTIALS_PATH, list_roles)
    # PHP's IMDS client lists roles without the final slash.
    router.add("GET", CREDENTIALS_PATH.rstrip("/"), list_roles)
    router.add_prefix("GET", CREDENTIALS_PATH, "name", credentials)
    return router
