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
off unless ``--imds-listen`` is given, serves one chosen role, insists on IMDSv2 session
tokens (no GET without one, which blocks the classic SSRF pattern) and, like EC2's IMDSv2,
refuses a token request that carries ``X-Forwarded-For`` (it came through a proxy).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

from aiohttp import web

from sidecar.credentials import format_expiration
from sidecar.metrics import Metrics
from sidecar.refresher import Refresher
from sidecar.server import METRICS, ROLE, error_response, json_errors_and_metrics

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a password
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MAX_TOKENS = 10_000


class SessionTokens:
    """IMDSv2 session tokens: random, with a TTL of 1..21600 s, in a bounded table."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._expiry: dict[str, float] = {}

    def issue(self, ttl: int) -> str:
        now = self._monotonic()
        if len(self._expiry) >= MAX_TOKENS:
            self._expiry = {t: e for t, e in self._expiry.items() if e > now}
            while len(self._expiry) >= MAX_TOKENS:  # still full: drop the oldest
                self._expiry.pop(next(iter(self._expiry)))
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        expiry = self._expiry.get(token)
        return expiry is not None and expiry > self._monotonic()


def role_name(role_arn: str) -> str:
    """``arn:aws:iam::1:role/path/name`` -> ``name``, as EC2's IMDS lists it."""
    return role_arn.rsplit("/", 1)[-1]


def create_imds_app(
    refresher: Refresher,
    role_arn: str,
    metrics: Metrics,
    cold_start_wait: float,
    tokens: SessionTokens | None = None,
) -> web.Application:
    tokens = tokens or SessionTokens()
    name = role_name(role_arn)
    app = web.Application(middlewares=[json_errors_and_metrics])
    app[METRICS] = metrics

    async def issue_token(request: web.Request) -> web.Response:
        if "X-Forwarded-For" in request.headers:
            return error_response(
                403, "Forbidden", "token requests that came through a proxy are refused"
            )
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            return error_response(400, "InvalidTTL", f"{TTL_HEADER} must be 1..21600")
        return web.Response(text=tokens.issue(ttl), headers={TTL_HEADER: str(ttl)})

    def authorised(request: web.Request) -> bool:
        return tokens.valid(request.headers.get(TOKEN_HEADER))

    async def list_roles(request: web.Request) -> web.Response:
        if not authorised(request):
            return error_response(401, "Unauthorized", f"send a session token in {TOKEN_HEADER}")
        return web.Response(text=name)

    async def credentials(request: web.Request) -> web.Response:
        if not authorised(request):
            return error_response(401, "Unauthorized", f"send a session token in {TOKEN_HEADER}")
        if request.match_info["name"] != name:
            return error_response(404, "NotFound", f"this endpoint serves only the role {name}")
        request[ROLE] = refresher.name
        snap = await refresher.wait_servable(cold_start_wait)
        if snap is None:
            return error_response(
                503,
                "CredentialsUnavailable",
                "no valid credentials yet; the daemon keeps retrying STS",
                headers={"Retry-After": "1"},
            )
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
        return web.Response(
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_put(TOKEN_PATH, issue_token)
    app.router.add_get(CREDENTIALS_PATH, list_roles, allow_head=False)
    app.router.add_get(CREDENTIALS_PATH + "{name}", credentials, allow_head=False)
    return app
