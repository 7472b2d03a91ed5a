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
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.auth import AuthToken
from sidecar.credentials import format_expiration, mask_key_id
from sidecar.metrics import Metrics
from sidecar.refresher import Refresher

log = logging.getLogger(__name__)

CREDENTIALS_PATH = "/v1/credentials"
_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}

METRICS = web.AppKey("metrics", Metrics)
ROLE: web.RequestKey[str] = web.RequestKey("role", str)
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
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    role = request.get(ROLE, "")
    request.app[METRICS].count_request(route, role, response.status)
    return response


class LogThrottle:
    """At most one log line per key and interval; the next one says how many were dropped.

    A misconfigured client retrying in a loop must not flood the log (nor grow memory: the
    table is cleared when it gets large).
    """

    def __init__(
        self,
        interval: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._seen: dict[tuple[str, ...], tuple[float, int]] = {}

    def allow(self, *key: str) -> int | None:
        """None to stay quiet, else the number of lines suppressed since the last one."""
        now = self._monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0


class CredentialsHandler:
    """``GET /v1/credentials[/<role>]``: the role's current snapshot, or a JSON error."""

    def __init__(
        self,
        endpoints: Mapping[str, RoleEndpoint],
        default: str | None,
        cold_start_wait: float,
        audit: bool = False,
    ) -> None:
        self._endpoints = endpoints
        self._default = default
        self._cold_start_wait = cold_start_wait
        self._audit = audit
        self._throttle = LogThrottle()

    def _refused(self, request: web.Request, role: str, event: str, message: str) -> None:
        remote = request.remote or "?"
        suppressed = self._throttle.allow(event, role, remote)
        if suppressed is not None:
            log.warning(
                message,
                extra={
                    "event": event,
                    "role": role,
                    "remote": remote,
                    "suppressed_since_last": suppressed,
                },
            )

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
                    "send the auth token in the Authorization header "
                    "(set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
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
                    "user_agent": request.headers.get("User-Agent", ""),
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
) -> web.Application:
    app = web.Application(middlewares=[json_errors_and_metrics])
    app[METRICS] = metrics

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

    credentials = CredentialsHandler(endpoints, default, cold_start_wait, audit).handle
    app.router.add_get(CREDENTIALS_PATH, credentials, allow_head=False)
    app.router.add_get(CREDENTIALS_PATH + "/{role}", credentials, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/readyz/{role}", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_view, allow_head=False)
    return app
