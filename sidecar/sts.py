"""The STS side: one long-lived aiobotocore client, and the web-identity exchange.

The client is unsigned (``AssumeRoleWithWebIdentity`` needs no credentials), so botocore
never walks its credential chain, which would otherwise find our own users' env vars or
probe the instance metadata service. botocore's retries are off: the refresher owns
retrying, with backoff that knows the error classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from sidecar import __version__
from sidecar.config import RoleConfig, StsConfig
from sidecar.credentials import Credentials
from sidecar.diagnosis import classify, explain
from sidecar.errors import StsError
from sidecar.metrics import Metrics
from sidecar.tokens import TokenClaims, TokenSource

log = logging.getLogger(__name__)


class Exchanger(Protocol):
    """Produces a fresh set of credentials for one role; raises ``SidecarError``."""

    async def exchange(self) -> Credentials: ...


def _credentials(response: dict[str, Any], role_arn: str) -> Credentials:
    raw = response["Credentials"]
    expiration = raw["Expiration"]
    if isinstance(expiration, str):  # botocore parses it; be tolerant of raw strings anyway
        expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    return Credentials(
        access_key_id=raw["AccessKeyId"],
        secret_access_key=raw["SecretAccessKey"],
        session_token=raw["SessionToken"],
        expiration=expiration.astimezone(UTC),
        role_arn=role_arn,
        assumed_role_arn=response.get("AssumedRoleUser", {}).get("Arn", ""),
    )


class StsClient:
    """Owns the aiobotocore STS client; use as ``async with StsClient(...) as sts``."""

    def __init__(self, config: StsConfig, timeout: float, metrics: Metrics) -> None:
        self._config = config
        self._timeout = timeout
        self._metrics = metrics
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> StsClient:
        session = AioSession()
        session.set_config_variable("sts_regional_endpoints", self._config.regional_endpoints)
        boto_config = BotoConfig(
            signature_version=UNSIGNED,
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            user_agent_appid=f"credential-sidecar-{__version__}",
        )
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "sts",
                region_name=self._config.region,
                endpoint_url=self._config.endpoint_url,
                config=boto_config,
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    async def assume_role_with_web_identity(
        self, role: RoleConfig, token: str, claims: TokenClaims | None
    ) -> Credentials:
        operation = "AssumeRoleWithWebIdentity"
        started = time.perf_counter()
        outcome = "error"
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.assume_role_with_web_identity(
                    RoleArn=role.role_arn,
                    RoleSessionName=role.session_name,
                    WebIdentityToken=token,
                    DurationSeconds=role.duration,
                )
            outcome = "success"
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "Unknown")
            message = str(error.get("Message") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise StsError(
                operation,
                code,
                message,
                classify(code, status),
                status,
                explain(code, message, role.role_arn, claims),
            ) from None
        except TimeoutError:
            raise StsError(
                operation,
                "Timeout",
                f"no answer from {self.endpoint} within {self._timeout:g}s",
                classify("Timeout", None),
            ) from None
        except BotoCoreError as exc:
            # Connection refused, DNS, TLS, read timeouts: botocore's text names the endpoint.
            raise StsError(
                operation, "NetworkError", str(exc), classify("NetworkError", None)
            ) from None
        finally:
            self._metrics.sts_latency.labels(operation, outcome).observe(
                time.perf_counter() - started
            )
        return _credentials(response, role.role_arn)


class WebIdentityExchanger:
    """One role: read a fresh token, exchange it, log who we became."""

    def __init__(self, role: RoleConfig, tokens: TokenSource, sts: StsClient) -> None:
        self.role = role
        self._tokens = tokens
        self._sts = sts
        self._last_claims: TokenClaims | None = None

    async def exchange(self) -> Credentials:
        token = await self._tokens.fetch()
        if token.claims != self._last_claims:
            log.info(
                "using web-identity token from %s",
                token.origin,
                extra={
                    "event": "token_read",
                    "iss": token.claims.issuer,
                    "sub": token.claims.subject,
                    "aud": ",".join(token.claims.audience),
                    "exp": token.claims.expires_text,
                },
            )
            self._last_claims = token.claims
        return await self._sts.assume_role_with_web_identity(self.role, token.value, token.claims)
