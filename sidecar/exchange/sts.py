"""The STS side: one aiobotocore session, an unsigned client, and the calls we make.

The client is unsigned (``AssumeRoleWithWebIdentity`` needs no credentials), so botocore
never walks its credential chain, which would otherwise find our own users' env vars or
probe the instance metadata service. botocore's retries are off: the refresher owns
retrying, with backoff that knows the error classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from sidecar import __version__
from sidecar.config import HopConfig, StsConfig
from sidecar.core.clock import Clock
from sidecar.core.credentials import Credentials
from sidecar.core.errors import StsError
from sidecar.core.metrics import Metrics
from sidecar.exchange.diagnosis import classify
from sidecar.exchange.rate_cap import StsRateCap
from sidecar.sources.base import TokenSource


class Exchanger(Protocol):
    """Turns a token from ``tokens`` into a fresh set of credentials for one identity;
    raises ``SidecarError``. The source is an argument, so one exchanger serves a role
    whatever the token's origin (a file, a CI variable, the caller's own request)."""

    async def exchange(self, tokens: TokenSource) -> Credentials: ...

    def drop_cached(self) -> None:
        """Forget intermediate credentials (a chain's first hop): start afresh next time."""
        ...


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
    """Owns the aiobotocore session and the unsigned STS client.

    Use as ``async with StsClient(...) as sts``. ``assume_role`` signs with the caller's
    credentials through a short-lived client of the same session (chained hops refresh
    rarely, so a client per call costs nothing that matters).
    """

    def __init__(
        self,
        config: StsConfig,
        timeout: float,
        metrics: Metrics,
        clock: Clock,
        rate_cap: StsRateCap | None = None,
    ) -> None:
        self._config = config
        self._timeout = timeout
        self._metrics = metrics
        self._clock = clock
        self._rate_cap = rate_cap
        self._stack = contextlib.AsyncExitStack()
        # AWS_PROFILE belongs to the user's own tools: a profile missing from the config
        # file must not stop the daemon (botocore raises ProfileNotFound), and our client
        # is configured explicitly anyway.
        self._session = AioSession(session_vars={"profile": (None, None, None, None)})
        self._client: Any = None
        #: Local wall clock minus STS's (its answer's ``Date``), once measured.
        self.clock_skew: float | None = None

    def _boto_config(self, signed: bool) -> BotoConfig:
        return BotoConfig(
            signature_version=None if signed else UNSIGNED,
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
            user_agent_appid=f"credential-sidecar-{__version__}",
        )

    def _create_client(self, **credentials: str) -> Any:
        return self._session.create_client(
            "sts",
            region_name=self._config.region,
            endpoint_url=self._config.endpoint_url,
            config=self._boto_config(signed=bool(credentials)),
            **credentials,
        )

    async def __aenter__(self) -> StsClient:
        self._session.set_config_variable("sts_regional_endpoints", self._config.regional_endpoints)
        self._client = await self._stack.enter_async_context(self._create_client())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    async def assume_role_with_web_identity(
        self, hop: HopConfig, session_name: str, token: str
    ) -> Credentials:
        params: dict[str, Any] = {
            "RoleArn": hop.role_arn,
            "RoleSessionName": session_name,
            "WebIdentityToken": token,
            "DurationSeconds": hop.duration,
        }
        params.update(_policy_params(hop))

        async def call() -> Any:
            return await self._client.assume_role_with_web_identity(**params)

        response = await self._call("AssumeRoleWithWebIdentity", call)
        return _credentials(response, hop.role_arn)

    async def assume_role(
        self,
        hop: HopConfig,
        session_name: str,
        source_identity: str | None,
        caller: Credentials,
    ) -> Credentials:
        params: dict[str, Any] = {
            "RoleArn": hop.role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": hop.duration,
        }
        params.update(_policy_params(hop))
        if hop.external_id is not None:
            params["ExternalId"] = hop.external_id
        if hop.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in hop.tags]
        if hop.transitive_tag_keys:
            params["TransitiveTagKeys"] = list(hop.transitive_tag_keys)
        if source_identity is not None:
            params["SourceIdentity"] = source_identity

        async def call() -> Any:
            async with self._create_client(
                aws_access_key_id=caller.access_key_id,
                aws_secret_access_key=caller.secret_access_key,
                aws_session_token=caller.session_token,
            ) as client:
                return await client.assume_role(**params)

        response = await self._call("AssumeRole", call)
        return _credentials(response, hop.role_arn)

    async def _call(self, operation: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run one STS call under the attempt timeout; map every failure to a coded
        ``StsError`` (the layer above adds what the code means for its role)."""
        if self._rate_cap is not None:
            await self._rate_cap.acquire()
        started = time.perf_counter()
        outcome = "error"
        try:
            async with self._clock.timeout(self._timeout):
                response = await call()
            outcome = "success"
            self._measure_skew(response)
            return response
        except asyncio.CancelledError:
            outcome = "cancelled"  # shutdown: not an STS failure
            raise
        except ClientError as exc:
            self._measure_skew(exc.response)
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "Unknown")
            message = str(error.get("Message") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise StsError(operation, code, message, classify(code, status), status) from None
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

    def _measure_skew(self, response: Mapping[str, Any]) -> None:
        """Compare our wall clock with the ``Date`` header of STS's answer."""
        received = datetime.now(UTC)
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            served = parsedate_to_datetime(str(headers["date"]))
        except (KeyError, TypeError, ValueError):
            return  # no Date, or one we cannot read: keep the last measurement
        if served.tzinfo is None:
            return
        # Date is truncated to the second: on average it lags the real instant by 0.5 s.
        self.clock_skew = round((received - served).total_seconds() - 0.5, 1)
        self._metrics.clock_skew.set(self.clock_skew)


def _policy_params(hop: HopConfig) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if hop.policy is not None:
        params["Policy"] = hop.policy
    if hop.policy_arns:
        params["PolicyArns"] = [{"arn": arn} for arn in hop.policy_arns]
    return params
