"""GitHub, environment and command token sources against real local peers."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.core.clock import SystemClock
from sidecar.core.errors import Disposition, TokenError, TokenExpiredError
from sidecar.devmode.issuer import OidcIssuer
from sidecar.sources.base import inspect_token
from sidecar.sources.command import CommandTokenSource
from sidecar.sources.env import EnvTokenSource
from sidecar.sources.github import GithubTokenSource

ISSUER = OidcIssuer("https://token.actions.githubusercontent.com")
REQUEST_TOKEN = "ghs_request-token-0123456789"


@dataclass
class FakeGithub:
    """Plays GitHub's OIDC token endpoint: checks the bearer token, mints per audience."""

    status: int = 200
    requests: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "auth": request.headers.get("Authorization", ""),
                "audience": request.query.get("audience", ""),
                "api": request.query.get("api-version", ""),
            }
        )
        if request.headers.get("Authorization") != f"Bearer {REQUEST_TOKEN}":
            return web.json_response({"message": "Bad credentials"}, status=401)
        if self.status != 200:
            return web.json_response({"message": "boom"}, status=self.status)
        subject = f"repo:org/app:run:{len(self.requests)}"
        token = ISSUER.mint(
            subject,
            audience=request.query["audience"],
            ttl=300,
            repository="org/app",
            run_id=str(len(self.requests)),
        )
        return web.json_response({"count": 1, "value": token})


@pytest.fixture
async def github() -> AsyncIterator[tuple[FakeGithub, str, aiohttp.ClientSession]]:
    fake = FakeGithub()
    app = web.Application()
    app.router.add_get("/_apis/token", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield fake, str(server.make_url("/_apis/token?api-version=2.0")), session
    await server.close()


async def test_github_mints_a_fresh_token_per_fetch(
    github: tuple[FakeGithub, str, aiohttp.ClientSession],
) -> None:
    """Every fetch asks GitHub for a new token, with the bearer token and the audience."""
    fake, url, session = github
    source = GithubTokenSource(url, REQUEST_TOKEN, "sts.amazonaws.com", SystemClock(), session)
    first = await source.fetch()
    second = await source.fetch()
    assert first.value != second.value
    assert first.claims.subject == "repo:org/app:run:1"
    assert second.claims.other["run_id"] == "2"
    assert fake.requests[0] == {
        "auth": f"Bearer {REQUEST_TOKEN}",
        "audience": "sts.amazonaws.com",
        "api": "2.0",
    }
    assert REQUEST_TOKEN not in repr(source)


async def test_github_refusal_needs_permissions(
    github: tuple[FakeGithub, str, aiohttp.ClientSession],
) -> None:
    """A 401 is an operator problem: it names the id-token permission."""
    _, url, session = github
    source = GithubTokenSource(url, "wrong", "sts.amazonaws.com", SystemClock(), session)
    with pytest.raises(TokenError, match="id-token: write") as caught:
        await source.fetch()
    assert caught.value.disposition is Disposition.FATAL
    assert "wrong" not in str(caught.value)


async def test_github_server_error_is_retryable(
    github: tuple[FakeGithub, str, aiohttp.ClientSession],
) -> None:
    """A 5xx from GitHub is transient."""
    fake, url, session = github
    fake.status = 503
    source = GithubTokenSource(url, REQUEST_TOKEN, "sts.amazonaws.com", SystemClock(), session)
    with pytest.raises(TokenError, match="HTTP 503") as caught:
        await source.fetch()
    assert caught.value.disposition is Disposition.RETRY


async def test_github_unreachable() -> None:
    """No server: a retryable error naming the endpoint kind, not the URL's secrets."""
    async with aiohttp.ClientSession() as session:
        source = GithubTokenSource(
            "http://127.0.0.1:9/_apis/token",
            REQUEST_TOKEN,
            "sts.amazonaws.com",
            SystemClock(),
            session,
            timeout=2,
        )
        with pytest.raises(TokenError, match="unreachable") as caught:
            await source.fetch()
    assert caught.value.disposition is Disposition.RETRY


async def test_env_token_is_read(caplog: pytest.LogCaptureFixture) -> None:
    """An environment token is used as is; one expiring soon is warned about once."""
    token = ISSUER.mint("project_path:group/app", audience="sts.amazonaws.com", ttl=300)
    source = EnvTokenSource(
        "GITLAB_OIDC_TOKEN", {"GITLAB_OIDC_TOKEN": token}, SystemClock(), "sts.amazonaws.com"
    )
    fetched = await source.fetch()
    await source.fetch()
    assert fetched.claims.subject == "project_path:group/app"
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "token_expiring"]
    assert len(warnings) == 1
    assert "cannot be renewed" in warnings[0].getMessage()


async def test_expired_env_token_fails_clearly() -> None:
    """Past exp, an environment token is a fatal error that suggests renewable sources."""
    token = ISSUER.mint(ttl=-3600)
    source = EnvTokenSource("CIRCLE_OIDC_TOKEN_V2", {"CIRCLE_OIDC_TOKEN_V2": token}, SystemClock())
    with pytest.raises(TokenExpiredError, match="cannot be renewed") as caught:
        await source.fetch()
    assert caught.value.disposition is Disposition.FATAL
    assert "CIRCLE_OIDC_TOKEN_V2" in str(caught.value)


async def test_command_token() -> None:
    """A real subprocess prints the token; each fetch runs it again."""
    token = ISSUER.mint("buildkite:pipeline")
    argv = (sys.executable, "-c", f"print({token!r})")
    fetched = await CommandTokenSource(argv, 10, SystemClock()).fetch()
    assert fetched.value == token
    assert fetched.claims.subject == "buildkite:pipeline"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            (sys.executable, "-c", "import sys; sys.stderr.write('not logged in'); sys.exit(3)"),
            "exited with status 3: not logged in",
        ),
        (("/nonexistent/oidc-helper",), "cannot be started"),
        ((sys.executable, "-c", "print('')"), "is empty"),
    ],
)
async def test_command_failures(argv: tuple[str, ...], match: str) -> None:
    """Non-zero exit, a missing program and empty output are clear errors."""
    with pytest.raises(TokenError, match=match):
        await CommandTokenSource(argv, 10, SystemClock()).fetch()


async def test_command_timeout_kills_it() -> None:
    """A hanging command is killed at its timeout."""
    argv = (sys.executable, "-c", "import time; time.sleep(30)")
    started = time.monotonic()
    with pytest.raises(TokenError, match=r"did not exit within 0\.3s"):
        await CommandTokenSource(argv, 0.3, SystemClock()).fetch()
    assert time.monotonic() - started < 5


def test_audience_mismatch_is_fatal_and_actionable() -> None:
    """A token for another audience is refused before STS with the fix."""
    token = ISSUER.mint(audience="https://gitlab.example.com")
    with pytest.raises(TokenError, match="request the token for audience") as caught:
        inspect_token(token, "token file /t", datetime.now(UTC), "sts.amazonaws.com")
    assert caught.value.disposition is Disposition.FATAL


def test_audience_list_containing_expected_is_accepted() -> None:
    """aud may be a list; containing the expected audience is enough."""
    token = ISSUER.mint(audience=["other", "sts.amazonaws.com"])
    claims = inspect_token(
        token, "t", datetime.now(UTC) - timedelta(seconds=1), "sts.amazonaws.com"
    )
    assert claims.audience == ("other", "sts.amazonaws.com")
