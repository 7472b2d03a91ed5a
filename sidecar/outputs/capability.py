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

from sidecar.config.load import RELATIVE_URI_HOST
from sidecar.core.metrics import Metrics
from sidecar.outputs.endpoint import CredentialsHandler
from sidecar.outputs.http import LogThrottle
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.outputs.rebinding import RebindingGuard
from sidecar.outputs.router import Router
from sidecar.tenancy.capability import RELATIVE_PREFIX, CapabilityTenancy

#: The ``Host`` values an SDK sends for ``http://169.254.170.2`` + RELATIVE_URI.
ECS_HOSTS = (RELATIVE_URI_HOST, f"{RELATIVE_URI_HOST}:80")


def create_capability_router(
    tenancy: CapabilityTenancy,
    metrics: Metrics,
    cold_start_wait: float,
    refusals: LogThrottle,
    audit: bool = False,
    limiter: FailureLimiter | None = None,
) -> Router:
    """The ``--relative-listen`` routes; pass the limiter and refusal log every listener
    shares."""
    router = Router(metrics, refusals, limiter, RebindingGuard(refusals, also_hosts=ECS_HOSTS))
    handler = CredentialsHandler(tenancy, cold_start_wait, audit, refusals, secret_path=True)
    router.add_prefix("GET", RELATIVE_PREFIX, "id", handler.handle)
    return router
