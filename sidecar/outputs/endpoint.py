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
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.cache.refresher import Snapshot
from sidecar.core.credentials import Credentials, format_expiration, mask_key_id
from sidecar.core.errors import Refusal, Unavailable
from sidecar.core.metrics import Metrics
from sidecar.outputs.http import (
    DEFAULT_REFUSAL_LOG_BUDGET,
    JSON,
    NO_STORE,
    ROLE,
    LogThrottle,
    answer,
    log_refusal,
)
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.rendered import Rendered, Wire, respond
from sidecar.outputs.router import Guard, Router
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

    The route's path segment is handed to the tenancy as the role asked for; ``secret_path``
    (the capability endpoint, whose path holds an id) keeps its value out of the refusal log.
    """

    def __init__(
        self,
        tenancy: Tenancy,
        cold_start_wait: float,
        audit: bool = False,
        refusals: LogThrottle | None = None,
        secret_path: bool = False,
    ) -> None:
        self._tenancy = tenancy
        self._secret_path = secret_path
        self._cold_start_wait = cold_start_wait
        self._audit = audit
        self._throttle = refusals or LogThrottle(budget=DEFAULT_REFUSAL_LOG_BUDGET)
        self._answer = Rendered(
            lambda snap: Wire.ok(render_container_json(snap.credentials), JSON, NO_STORE)
        )

    async def handle(self, request: BaseRequest, asked: str | None) -> web.StreamResponse:
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
        return respond(request, self._answer(snap))

    @staticmethod
    def _audit_line(request: BaseRequest, role: str, subject: str | None, snap: Snapshot) -> None:
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


def create_router(
    tenancy: Tenancy,
    metrics: Metrics,
    cold_start_wait: float,
    audit: bool = False,
    limiter: FailureLimiter | None = None,
    refusals: LogThrottle | None = None,
    check_host: bool = False,
    credentials: bool = True,
    metrics_route: bool = True,
) -> Router:
    """The credentials listener's routes; ``limiter`` answers 429 to clients failing too
    often, ``refusals`` throttles the refusal log (pass the same ones to every listener);
    ``check_host`` (for listeners without client auth) refuses DNS-rebinding requests.
    ``credentials``/``metrics_route`` choose what it serves besides health and readiness:
    the node agent gives pods no ``/metrics`` (it names other tenants' namespaces, roles
    and errors) and Prometheus a listener of its own without credentials."""
    refusals = refusals or LogThrottle(budget=DEFAULT_REFUSAL_LOG_BUDGET)
    guard: Guard | None = None
    if check_host:
        from sidecar.outputs.rebinding import RebindingGuard  # only listeners without auth

        guard = RebindingGuard(refusals)
    router = Router(metrics, refusals, limiter, guard)

    async def healthz(_: BaseRequest, __: str | None) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(_: BaseRequest, role: str | None) -> web.StreamResponse:
        ready, body = tenancy.readiness(role)  # an unknown role: NotFound, a JSON 404
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_view(_: BaseRequest, __: str | None) -> web.StreamResponse:
        response = web.Response(body=generate_latest(metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    if credentials:
        handle = CredentialsHandler(tenancy, cold_start_wait, audit, refusals).handle
        router.add("GET", CREDENTIALS_PATH, handle)
        router.add_prefix("GET", CREDENTIALS_PATH + "/", "role", handle)
    router.add("GET", "/healthz", healthz)
    router.add("GET", "/readyz", readyz)
    router.add_prefix("GET", "/readyz/", "role", readyz)
    if metrics_route:
        router.add("GET", "/metrics", metrics_view)
    return router
