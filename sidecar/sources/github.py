"""A GitHub Actions OIDC token, minted for every fetch (they live about 5 minutes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import quote

import aiohttp

from sidecar.core.bounded_http import read_capped
from sidecar.core.clock import Clock
from sidecar.core.errors import Disposition, TokenError
from sidecar.core.safe_read import size_text
from sidecar.core.secret import Secret
from sidecar.sources.base import DEFAULT_AUDIENCE, MAX_TOKEN_BYTES, WebIdentityToken, read_token

#: How long fetching a token over HTTP may take.
HTTP_FETCH_TIMEOUT = 10.0


@dataclass(frozen=True)
class GithubSource:
    """``--token-source github``: the runner's token request URL and bearer token."""

    kind: ClassVar[str] = "github"
    url: str
    request_token: Secret = field(repr=False)
    audience: str = DEFAULT_AUDIENCE


class GithubTokenSource:
    """Mints a GitHub Actions OIDC token for every fetch (they live about 5 minutes)."""

    def __init__(
        self,
        url: str,
        request_token: str,
        audience: str,
        clock: Clock,
        session: aiohttp.ClientSession,
        timeout: float = HTTP_FETCH_TIMEOUT,
    ) -> None:
        separator = "&" if "?" in url else "?"
        self._url = f"{url}{separator}audience={quote(audience, safe='')}"
        self._request_token = request_token
        self._audience = audience
        self._clock = clock
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return "GithubTokenSource(<ACTIONS_ID_TOKEN_REQUEST_URL>)"

    async def fetch(self) -> WebIdentityToken:
        origin = "GitHub Actions OIDC token endpoint"
        headers = {"Authorization": f"Bearer {self._request_token}", "Accept": "application/json"}
        try:
            async with self._session.get(
                self._url, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                status = response.status
                body = await read_capped(response, MAX_TOKEN_BYTES)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenError(f"{origin} unreachable: {type(exc).__name__}: {exc}") from None
        if body is None:
            raise TokenError(
                f"{origin} answered with more than {size_text(MAX_TOKEN_BYTES)} (a token "
                "response is a few KB): is ACTIONS_ID_TOKEN_REQUEST_URL right?"
            )
        if status != 200:
            disposition = Disposition.RETRY if status >= 500 or status == 429 else Disposition.FATAL
            hint = (
                " (does the job have `permissions: id-token: write`?)"
                if status in (401, 403)
                else ""
            )
            raise TokenError(f"{origin} answered HTTP {status}{hint}", disposition)
        try:
            value = json.loads(body)["value"]
        except (ValueError, KeyError, TypeError):
            raise TokenError(f'{origin} answered without a JSON "value" field') from None
        return read_token(str(value), origin, self._clock.now(), self._audience)
