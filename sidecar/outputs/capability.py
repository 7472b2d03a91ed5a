"""The capability endpoint's listener: ``GET /v2/credentials/<id>``, nothing else.

The credentials handler is the container endpoint's (same body, same 503 on a cold
start, same audit line); the tenancy (``tenancy.capability``) picks the role by the id.
There is no client auth, so like the IMDS listener it binds only loopback or link-local
addresses unless overridden (``config.load``), and refuses DNS-rebinding requests
(``rebinding``). One more ``Host`` is accepted: the literal ``169.254.170.2`` on port 80,
which SDKs send when a DNAT rule forwards that address to a loopback listener
(docs/link-local.md). A page cannot make a browser send it by rebinding a name: a
browser sends the name it resolved, and an IP literal is no name.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.config.load import RELATIVE_URI_HOST
from sidecar.core.metrics import Metrics
from sidecar.outputs.endpoint import CredentialsHandler
from sidecar.outputs.http import (
    LIMITER,
    METRICS,
    REFUSAL_LOG,
    Handler,
    LogThrottle,
    json_errors_and_metrics,
)
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.rebinding import refuse_rebinding
from sidecar.tenancy.capability import RELATIVE_PREFIX, CapabilityTenancy

#: The ``Host`` values an SDK sends for ``http://169.254.170.2`` + RELATIVE_URI.
ECS_HOSTS = (RELATIVE_URI_HOST, f"{RELATIVE_URI_HOST}:80")


@web.middleware
async def refuse_rebinding_but_ecs_address(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    hosts = request.headers.getall("Host", [])
    if "Origin" not in request.headers and len(hosts) == 1 and hosts[0].strip() in ECS_HOSTS:
        return await handler(request)
    return await refuse_rebinding(request, handler)


def create_capability_app(
    tenancy: CapabilityTenancy,
    metrics: Metrics,
    cold_start_wait: float,
    refusals: LogThrottle,
    audit: bool = False,
    limiter: FailureLimiter | None = None,
) -> web.Application:
    """The ``--relative-listen`` app; pass the limiter and refusal log every listener shares."""
    app = web.Application(middlewares=[json_errors_and_metrics, refuse_rebinding_but_ecs_address])
    app[METRICS] = metrics
    app[REFUSAL_LOG] = refusals
    if limiter is not None:
        app[LIMITER] = limiter
    handler = CredentialsHandler(
        tenancy, cold_start_wait, audit, refusals, path_param="id", secret_path=True
    )
    app.router.add_get(RELATIVE_PREFIX + "{id}", handler.handle, allow_head=False)
    return app
