"""The HTTP side: container-credentials endpoint, health, readiness, metrics.

Handlers only read memory: a request never waits on STS, except for a bounded wait
(``cold_start_wait`` < 1 s) while the very first credentials are being fetched. Every
error is JSON with both spellings of its keys, because Go and Java read ``code``/``message``
and the JavaScript SDK reads ``Code``/``Message``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.auth import AuthToken
from sidecar.metrics import Metrics
from sidecar.refresher import Refresher

log = logging.getLogger(__name__)

CREDENTIALS_PATH = "/v1/credentials"
_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}

METRICS = web.AppKey("metrics", Metrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return canonical if canonical else "unmatched"


@web.middleware
async def _json_errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics: Metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # aiohttp's own 404/405: answer in JSON like everything else, never redirect.
        response = error_response(exc.status, exc.reason.replace(" ", ""), exc.reason)
    metrics.requests.labels(_route_label(request), str(response.status)).inc()
    return response


class CredentialsHandler:
    """``GET /v1/credentials``: the role's current snapshot, or a JSON error."""

    def __init__(self, refresher: Refresher, auth: AuthToken | None, cold_start_wait: float):
        self._refresher = refresher
        self._auth = auth
        self._cold_start_wait = cold_start_wait

    async def handle(self, request: web.Request) -> web.Response:
        if self._auth is not None:
            presented = request.headers.get("Authorization")
            if presented is None:
                log.warning(
                    "refused credentials request without Authorization header",
                    extra={"event": "auth_missing", "remote": request.remote},
                )
                return error_response(
                    401,
                    "MissingAuthorization",
                    "send the auth token in the Authorization header "
                    "(set AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
                )
            if not self._auth.check(presented):
                log.warning(
                    "refused credentials request with a wrong auth token",
                    extra={"event": "auth_denied", "remote": request.remote},
                )
                return error_response(
                    403,
                    "AccessDenied",
                    "the Authorization header does not match the auth token file",
                )
        snap = await self._refresher.wait_servable(self._cold_start_wait)
        if snap is None:
            return error_response(
                503,
                "CredentialsUnavailable",
                f"no valid credentials for role {self._refresher.name} yet; "
                "the daemon keeps retrying STS (see its log and /readyz)",
                headers={"Retry-After": "1"},
            )
        return web.Response(body=snap.body, content_type=_JSON, headers=_NO_STORE)


def create_app(
    refresher: Refresher, auth: AuthToken | None, metrics: Metrics, cold_start_wait: float
) -> web.Application:
    app = web.Application(middlewares=[_json_errors_and_metrics])
    app[METRICS] = metrics

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        status = refresher.status()
        body = {
            "ready": status.ready,
            "roles": {
                status.role: {
                    "ready": status.ready,
                    "seconds_until_expiry": status.seconds_until_expiry,
                    "consecutive_failures": status.consecutive_failures,
                }
            },
        }
        return web.json_response(body, status=200 if status.ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get(
        CREDENTIALS_PATH,
        CredentialsHandler(refresher, auth, cold_start_wait).handle,
        allow_head=False,
    )
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_view, allow_head=False)
    return app
