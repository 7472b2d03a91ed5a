"""``node-agent --dev``: the embedded issuer plays the cluster's service-account issuer, the
STS emulator trusts it, and two demo associations give two service accounts two roles.

``credential-sidecar dev-pod-token --namespace NS --service-account SA --issuer URL``
mints what the kubelet would project into such a pod (from the dev issuer only: it
answers on loopback, in dev mode).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.devmode.environment import DEV_REGION, private_directory, serve_emulator
from sidecar.devmode.issuer import OidcIssuer

DEV_ASSOCIATIONS = """\
# node-agent --dev: two service accounts, two roles (in the STS emulator's account)
[[associations]]
namespace = "payments"
service_account = "api"
role_arn = "arn:aws:iam::123456789012:role/payments-api"

[[associations]]
namespace = "builds"
service_account = "ci"
role_arn = "arn:aws:iam::123456789012:role/builds-ci"
duration = 1800
"""
#: Where the dev issuer mints pod tokens (dev mode only, loopback only).
MINT_PATH = "/oidc/_dev/pod-token"
MAX_DEV_TOKEN_TTL = 86400


def mint_route(issuer: OidcIssuer) -> web.RouteDef:
    async def mint(request: web.Request) -> web.Response:
        namespace = request.query.get("namespace", "")
        account = request.query.get("service_account", "")
        if not namespace or not account:
            raise web.HTTPBadRequest(text="namespace and service_account are required")
        try:
            ttl = min(float(request.query.get("ttl", "3600")), MAX_DEV_TOKEN_TTL)
        except ValueError:
            raise web.HTTPBadRequest(text="ttl must be a number of seconds") from None
        claims: dict[str, Any] = {
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account}}
        }
        token = issuer.mint(f"system:serviceaccount:{namespace}:{account}", ttl=ttl, **claims)
        return web.Response(text=token)

    return web.get(MINT_PATH, mint)


@dataclass(frozen=True)
class DevCluster:
    issuer_url: str
    sts_url: str
    associations: Path

    def overrides(self) -> dict[str, str]:
        return {
            "issuer": self.issuer_url,
            "associations": str(self.associations),
            "sts_endpoint": self.sts_url,
            "region": DEV_REGION,
            "listen": "127.0.0.1:9923",
            "metrics_listen": "127.0.0.1:9924",
        }


@contextlib.asynccontextmanager
async def dev_cluster() -> AsyncIterator[DevCluster]:
    with private_directory("credential-sidecar-node-dev-") as tmp:
        associations = Path(tmp) / "associations.toml"
        associations.write_text(DEV_ASSOCIATIONS)
        async with serve_emulator(extra_routes=mint_route) as (base, issuer, _):
            yield DevCluster(issuer.url, base, associations)
