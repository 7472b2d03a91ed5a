"""The container-credentials endpoint: credentials, health, readiness, metrics.

``/v1/credentials`` serves the default identity, ``/v1/credentials/<name>`` a named role;
who may have which is the tenancy's decision (static auth tokens in the sidecar, pod
tokens in the node agent). Handlers only read memory, except for a bounded wait
(``cold_start_wait``) while an identity's very first credentials are being fetched.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.cache.refresher import Snapshot
from sidecar.core.credentials import Credentials, format_expiration, mask_key_id
from sidecar.core.errors import NotFound, Refusal, Unavailable
from sidecar.core.metrics import Metrics
from sidecar.outputs.http import (
    DEFAULT_REFUSAL_LOG_BUDGET,
    JSON,
    LIMITER,
    METRICS,
    NO_STORE,
    REFUSAL_LOG,
    ROLE,
    LogThrottle,
    answer,
    json_errors_and_metrics,
    log_refusal,
)
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.rendered import Rendered
from sidecar.tenancy.grant import Tenancy

log = logging.getLogger(__name__)

CREDENTIALS_PATH = "/v1/credentials"
#: How much of a client's User-Agent an audit line keeps.
AUDIT_USER_AGENT_CHARS = 200


def render_container_json(creds: Credentials) -> bytes:
    """The body of a 200 answer on the container-credentials endpoint.

    Every value a string; ``Token`` and ``Expiration`` always present (botocore raises
    without ``Token``, Go never refreshes without ``Expiration``); no ``Code`` field,
    because Rust treats any value but "Success" as an error.
    """
    body = {
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "Token": creds.session_token,
        "Expiration": format_expiration(creds.expiration),
        "AccountId": creds.account_id,
        "RoleArn": creds.role_arn,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class CredentialsHandler:
    """``GET /v1/credentials[/<role>]``: the granted identity's snapshot, or a JSON error.

    ``path_param`` names the route variable handed to the tenancy as the role asked for;
    ``secret_path`` (the capability endpoint, whose path holds an id) keeps its value out
    of the refusal log.
    """

    def __init__(
        self,
        tenancy: Tenancy,
        cold_start_wait: float,
        audit: bool = False,
        refusals: LogThrottle | None = None,
        path_param: str = "role",
        secret_path: bool = False,
    ) -> None:
        self._tenancy = tenancy
        self._path_param = path_param
        self._secret_path = secret_path
        self._cold_start_wait = cold_start_wait
        self._audit = audit
        self._throttle = refusals or LogThrottle(budget=DEFAULT_REFUSAL_LOG_BUDGET)
        self._body = Rendered(lambda snap: render_container_json(snap.credentials))

    async def handle(self, request: web.Request) -> web.Response:
        asked = request.match_info.get(self._path_param)
        try:
            grant = await self._tenancy.grant(asked, request.headers.get("Authorization"))
        except Refusal as exc:
            if exc.role is not None:
                request[ROLE] = exc.role
            if exc.log_event is not None:
                log_refusal(
                    self._throttle,
                    exc.log_event,
                    f"refused credentials request: {exc}",
                    request.remote or "?",
                    role=exc.role or ("" if self._secret_path else asked) or "",
                )
            return answer(exc)
        request[ROLE] = grant.role
        # The common case needs no coroutine: the wait is for a cold start only.
        snap = grant.refresher.servable()
        if snap is None:
            snap = await grant.refresher.wait_servable(self._cold_start_wait)
        if snap is None:
            failure = grant.refresher.last_error
            return answer(
                Unavailable(
                    f"no valid credentials for role {grant.role} yet; the daemon keeps "
                    "retrying STS"
                    + (f". Last error: {failure}" if failure else " (see its log and /readyz)")
                )
            )
        if self._audit:
            self._audit_line(request, grant.role, grant.subject, snap)
        return web.Response(body=self._body(snap), content_type=JSON, headers=NO_STORE)

    @staticmethod
    def _audit_line(request: web.Request, role: str, subject: str | None, snap: Snapshot) -> None:
        log.info(
            "served credentials of role %s",
            role,
            extra={
                "event": "served",
                "role": role,
                **({"subject": subject} if subject else {}),
                "remote": request.remote,
                # Opt-in, like the ECS agent's audit log; cut short, never another header.
                "user_agent": request.headers.get("User-Agent", "")[:AUDIT_USER_AGENT_CHARS],
                "access_key_id": mask_key_id(snap.credentials.access_key_id),
                "expires": format_expiration(snap.credentials.expiration),
            },
        )


def create_app(
    tenancy: Tenancy,
    metrics: Metrics,
    cold_start_wait: float,
    audit: bool = False,
    limiter: FailureLimiter | None = None,
    refusals: LogThrottle | None = None,
    check_host: bool = False,
    credentials: bool = True,
    metrics_route: bool = True,
) -> web.Application:
    """The credentials listener's app; ``limiter`` answers 429 to clients failing too often,
    ``refusals`` throttles the refusal log (pass the same ones to every listener);
    ``check_host`` (for listeners without client auth) refuses DNS-rebinding requests.
    ``credentials``/``metrics_route`` choose what it serves besides health and readiness:
    the node agent gives pods no ``/metrics`` (it names other tenants' namespaces, roles
    and errors) and Prometheus a listener of its own without credentials."""
    from sidecar.outputs.rebinding import refuse_rebinding  # it builds on outputs.http

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
        try:
            ready, body = tenancy.readiness(request.match_info.get("role"))
        except NotFound as exc:
            return answer(exc)
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    if credentials:
        handle = CredentialsHandler(tenancy, cold_start_wait, audit, refusals).handle
        app.router.add_get(CREDENTIALS_PATH, handle, allow_head=False)
        app.router.add_get(CREDENTIALS_PATH + "/{role}", handle, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/readyz/{role}", readyz, allow_head=False)
    if metrics_route:
        app.router.add_get("/metrics", metrics_view, allow_head=False)
    return app
