"""The HTTP side: container-credentials endpoints, health, readiness, metrics.

``/v1/credentials`` serves the default role, ``/v1/credentials/<name>`` any role; each
role is opened only by its own auth token (or the server-wide one when it has none).
Handlers only read memory: a request never waits on STS, except for a bounded wait
(``cold_start_wait`` < 1 s) while a role's very first credentials are being fetched.
Every error is JSON with both spellings of its keys, because Go and Java read
``code``/``message`` and the JavaScript SDK reads ``Code``/``Message``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.auth import AuthToken
from sidecar.credentials import format_expiration, mask_key_id
from sidecar.metrics import Metrics
from sidecar.ratelimit import FailureLimiter
from sidecar.refresher import Refresher

log = logging.getLogger(__name__)

CREDENTIALS_PATH = "/v1/credentials"
_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}

METRICS = web.AppKey("metrics", Metrics)
LIMITER = web.AppKey("limiter", FailureLimiter)
#: Refusal log lines per minute over all clients (``--refusal-log-budget``).
DEFAULT_REFUSAL_LOG_BUDGET = 60
ROLE: web.RequestKey[str] = web.RequestKey("role", str)
#: The route a request is counted under, where the app routes it itself (IMDS).
ROUTE: web.RequestKey[str] = web.RequestKey("route", str)
#: How much of a client's User-Agent an audit line keeps.
AUDIT_USER_AGENT_CHARS = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RoleEndpoint:
    refresher: Refresher
    #: None only with --insecure-no-auth for a role without its own token.
    auth: AuthToken | None


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"code": code, "message": message, "Code": code, "Message": message}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=_JSON,
        headers={**_NO_STORE, **(headers or {})},
    )


@web.middleware
async def json_errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own 404/405: answer in JSON like everything else, never redirect.
        response = error_response(exc.status, exc.reason.replace(" ", ""), exc.reason)
    limiter = request.app.get(LIMITER)
    if limiter is not None and 400 <= response.status < 500:
        response = _rate_limited(request, limiter) or response
    resource = request.match_info.route.resource
    route = request.get(ROUTE) or (resource.canonical if resource is not None else "unmatched")
    role = request.get(ROLE, "")
    request.app[METRICS].count_request(route, role, response.status)
    return response


class LogThrottle:
    """At most one log line per key and interval; the next one says how many were dropped.

    A misconfigured client retrying in a loop must not flood the log (nor grow memory: the
    oldest key is forgotten when the table is full). With a ``budget``, at most that many
    lines per interval are allowed over all keys together, so thousands of clients (one per
    loopback address) cannot flood it either; ``summary`` then reports how many were dropped.
    """

    def __init__(
        self,
        interval: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
        budget: int | None = None,
    ) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}
        self._budget = budget
        self._window_start = -math.inf
        self._window_lines = 0
        self._over_budget = 0
        self._unreported = 0

    def allow(self, *key: str) -> int | None:
        """None to stay quiet, else the number of lines suppressed since the last one."""
        now = self._monotonic()
        if now - self._window_start >= self._interval:
            self._unreported += self._over_budget
            self._window_start, self._window_lines, self._over_budget = now, 0, 0
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if self._budget is not None and self._window_lines >= self._budget:
            self._over_budget += 1
            return None
        self._window_lines += 1
        self._seen.pop(key, None)
        while len(self._seen) >= self._max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0

    def summary(self) -> int:
        """Lines the budget dropped in finished intervals and not yet reported (then zero)."""
        dropped, self._unreported = self._unreported, 0
        return dropped


REFUSAL_LOG = web.AppKey("refusal_log", LogThrottle)


def log_refusal(
    throttle: LogThrottle, event: str, message: str, remote: str, **fields: object
) -> None:
    """A warning about a refused request, throttled per (event, fields, client) and overall."""
    suppressed = throttle.allow(event, *map(str, fields.values()), remote)
    dropped = throttle.summary()
    if dropped:
        log.warning(
            "%d refused requests were not logged: more than the refusal log budget",
            dropped,
            extra={"event": "refusals_not_logged", "count": dropped},
        )
    if suppressed is not None:
        log.warning(
            message,
            extra={"event": event, **fields, "remote": remote, "suppressed_since_last": suppressed},
        )


def _rate_limited(request: web.Request, limiter: FailureLimiter) -> web.Response | None:
    """A 429 for a failing request once its client has no tokens left, else None."""
    remote = request.remote or "?"
    wait = limiter.charge(remote)
    if wait is None:
        return None
    refusals = request.app.get(REFUSAL_LOG)
    if refusals is not None:
        log_refusal(
            refusals, "rate_limited", "refused requests from a client failing too often", remote
        )
    retry_after = max(1, math.ceil(wait))
    return error_response(
        429,
        "TooManyRequests",
        f"too many failed requests from {remote} (more than {limiter.burst} at once or "
        f"{limiter.rate:g} per second); retry after {retry_after} s. Requests with the right "
        "auth token are still served",
        headers={"Retry-After": str(retry_after)},
    )


class CredentialsHandler:
    """``GET /v1/credentials[/<role>]``: the role's current snapshot, or a JSON error."""

    def __init__(
        self,
        endpoints: Mapping[str, RoleEndpoint],
        default: str | None,
        cold_start_wait: float,
        audit: bool = False,
        refusals: LogThrottle | None = None,
    ) -> None:
        self._endpoints = endpoints
        self._default = default
        self._cold_start_wait = cold_start_wait
        self._audit = audit
        self._throttle = refusals or LogThrottle(budget=DEFAULT_REFUSAL_LOG_BUDGET)

    def _refused(self, request: web.Request, role: str, event: str, message: str) -> None:
        log_refusal(self._throttle, event, message, request.remote or "?", role=role)

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info.get("role", self._default)
        if name is None:
            return error_response(
                404, "NoDefaultRole", "no default role is configured: use /v1/credentials/<role>"
            )
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            return error_response(404, "UnknownRole", f"no role named {name!r} is configured")
        request[ROLE] = name
        if endpoint.auth is not None:
            presented = request.headers.get("Authorization")
            if presented is None:
                self._refused(
                    request,
                    name,
                    "auth_missing",
                    "refused credentials request without Authorization header",
                )
                return error_response(
                    401,
                    "MissingAuthorization",
                    "send the auth token in the Authorization header: set "
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to the token file and, for older "
                    "SDKs that read only the plain variable, AWS_CONTAINER_AUTHORIZATION_TOKEN "
                    "to the same token",
                )
            if not endpoint.auth.check(presented):
                self._refused(
                    request,
                    name,
                    "auth_denied",
                    "refused credentials request with a wrong auth token",
                )
                return error_response(
                    403,
                    "AccessDenied",
                    f"the Authorization header does not match the auth token of role {name}",
                )
        snap = await endpoint.refresher.wait_servable(self._cold_start_wait)
        if snap is None:
            return error_response(
                503,
                "CredentialsUnavailable",
                f"no valid credentials for role {name} yet; the daemon keeps retrying STS "
                "(see its log and /readyz)",
                headers={"Retry-After": "1"},
            )
        if self._audit:
            log.info(
                "served credentials of role %s",
                name,
                extra={
                    "event": "served",
                    "role": name,
                    "remote": request.remote,
                    # Opt-in, like the ECS agent's audit log; cut short, never another header.
                    "user_agent": request.headers.get("User-Agent", "")[:AUDIT_USER_AGENT_CHARS],
                    "access_key_id": mask_key_id(snap.credentials.access_key_id),
                    "expires": format_expiration(snap.credentials.expiration),
                },
            )
        return web.Response(body=snap.body, content_type=_JSON, headers=_NO_STORE)


def create_app(
    endpoints: Mapping[str, RoleEndpoint],
    default: str | None,
    metrics: Metrics,
    cold_start_wait: float,
    audit: bool = False,
    limiter: FailureLimiter | None = None,
    refusals: LogThrottle | None = None,
    check_host: bool = False,
) -> web.Application:
    """The credentials listener's app; ``limiter`` answers 429 to clients failing too often,
    ``refusals`` throttles the refusal log (pass the same ones to every listener);
    ``check_host`` (for --insecure-no-auth) refuses DNS-rebinding requests."""
    from sidecar.rebinding import refuse_rebinding  # it builds on this module

    guards = [refuse_rebinding] if check_host else []
    app = web.Application(middlewares=[json_errors_and_metrics, *guards])
    app[METRICS] = metrics
    refusals = refusals or LogThrottle(budget=DEFAULT_REFUSAL_LOG_BUDGET)
    app[REFUSAL_LOG] = refusals
    if limiter is not None:
        app[LIMITER] = limiter

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        """200 while every role (or the one named) holds valid credentials."""
        only = request.match_info.get("role")
        if only is not None and only not in endpoints:
            return error_response(404, "UnknownRole", f"no role named {only!r} is configured")
        statuses = [e.refresher.status() for n, e in endpoints.items() if only in (None, n)]
        ready = all(s.ready for s in statuses)
        body = {
            "ready": ready,
            "roles": {
                s.role: {
                    "ready": s.ready,
                    "seconds_until_expiry": s.seconds_until_expiry,
                    "consecutive_failures": s.consecutive_failures,
                }
                for s in statuses
            },
        }
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    credentials = CredentialsHandler(endpoints, default, cold_start_wait, audit, refusals).handle
    app.router.add_get(CREDENTIALS_PATH, credentials, allow_head=False)
    app.router.add_get(CREDENTIALS_PATH + "/{role}", credentials, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/readyz/{role}", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_view, allow_head=False)
    return app
