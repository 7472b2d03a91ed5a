"""Where web-identity tokens come from, and what we can tell about them before STS does.

A ``TokenSource`` produces a token for every exchange attempt:

* ``FileTokenSource`` re-reads its file each time (a Kubernetes projected token is
  rewritten by the kubelet at 80% of its lifetime through a ``..data`` symlink swap);
* ``GithubTokenSource`` mints a fresh GitHub Actions token each time (they live ~5 min);
* ``EnvTokenSource`` reads a variable that cannot be renewed (GitLab, CircleCI, Bitbucket):
  it warns ahead of ``exp`` and fails clearly after it;
* ``CommandTokenSource`` runs a program (no shell) and reads the token from its stdout.

Every source is bounded: at most ``MAX_TOKEN_BYTES`` are read (never more than one byte
past it), a file must be a regular file opened without blocking and read off the event
loop (``sidecar.safe_read``), and a command runs in its own process group that is killed
as a whole, so nothing it started outlives it.

Claims are decoded *without* verifying the signature (STS does that): only to fail fast
with a clear message on an expired, malformed or wrongly addressed token, and to log who
we claim to be (never the token).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import jwt

from sidecar.bounded_command import run_bounded
from sidecar.clock import Clock
from sidecar.config import TokenSourceConfig
from sidecar.credentials import format_expiration
from sidecar.errors import Disposition, TokenError, TokenExpiredError
from sidecar.safe_read import (
    MAX_INPUT_BYTES,
    FileIdentity,
    OffLoopReader,
    read_small_file,
    size_text,
)
from sidecar.secret import redact

log = logging.getLogger(__name__)

#: STS accepts a token up to about this long past its ``exp`` (clock skew allowance).
STS_EXP_LEEWAY = 300
#: How long fetching a token over HTTP (GitHub) may take.
HTTP_FETCH_TIMEOUT = 10.0
#: Environment tokens: warn this long before they expire.
ENV_TOKEN_WARNING = 600
#: The most any source may deliver (a JWT is a few KB).
MAX_TOKEN_BYTES = MAX_INPUT_BYTES
#: How much of a token command's error output is kept for the error message.
COMMAND_STDERR_KEPT = 4096
#: Time claims past this (9999-12-31T23:59:59Z) cannot be represented as a date.
_MAX_TIMESTAMP = 253402300799


@dataclass(frozen=True)
class TokenClaims:
    """The claims worth logging and checking, and the rest for session-name templates."""

    issuer: str
    subject: str
    audience: tuple[str, ...]
    expires_at: datetime | None
    other: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def expires_text(self) -> str:
        return format_expiration(self.expires_at) if self.expires_at else "none"

    def describe(self) -> str:
        aud = ",".join(self.audience)
        return f"iss={self.issuer} sub={self.subject} aud={aud} exp={self.expires_text}"


@dataclass(frozen=True)
class WebIdentityToken:
    value: str = field(repr=False)
    claims: TokenClaims
    #: Where it came from, for error messages ("token file /var/run/...").
    origin: str


class TokenSource(Protocol):
    async def fetch(self) -> WebIdentityToken:
        """A token for one exchange attempt; raises ``TokenError`` with the cause."""
        ...


class TokenWatch(Protocol):
    """A source that can tell cheaply, without fetching, that its token (probably) changed."""

    async def fingerprint(self) -> Hashable:
        """A value that changes when the token changes; raises ``TokenError`` if stuck."""
        ...

    def last_read(self) -> Hashable | None:
        """The fingerprint of what the last ``fetch`` read, if it read anything."""
        ...


def watch_for(source: TokenSource) -> TokenWatch | None:
    """How to notice a new token in ``source``; None where looking is not cheap.

    Only files: an environment variable never changes, and a command or the GitHub token
    endpoint would have to be run or called to know.
    """
    return source if isinstance(source, FileTokenSource) else None


def _unverified_claims(value: str) -> dict[str, Any]:
    """The payload of JWT ``value``, nothing verified (raises ``jwt.PyJWTError``/``ValueError``)."""
    claims: dict[str, Any] = jwt.decode(
        value, options={"verify_signature": False, "verify_exp": False, "verify_aud": False}
    )
    return claims


def audiences_of(value: str) -> tuple[str, ...] | None:
    """The audiences JWT ``value`` names (decoded, not verified); None if it is not a JWT
    with a well-formed ``aud``."""
    try:
        return _audience_claim(_unverified_claims(value), "a JWT")
    except (jwt.PyJWTError, ValueError, TokenError):
        return None


def inspect_token(
    value: str, origin: str, now: datetime, audience: str | None = None
) -> TokenClaims:
    """Decode claims without verification; reject what STS would certainly reject.

    The claims come from whoever wrote the token: every type and range is checked, so a
    malformed token is a ``TokenError`` naming the claim, never a crash.
    """
    try:
        payload = _unverified_claims(value)
    except (jwt.PyJWTError, ValueError) as exc:
        raise TokenError(
            f"{origin} does not hold a JWT ({exc}); it must contain an OIDC ID token "
            "(three base64url parts separated by dots)"
        ) from None
    issuer = _text_claim(payload, "iss", origin)
    subject = _text_claim(payload, "sub", origin)
    audiences = _audience_claim(payload, origin)
    expires_at = _time_claim(payload, "exp", origin)
    for name in ("nbf", "iat"):
        _time_claim(payload, name, origin)
    claims = TokenClaims(
        issuer=issuer,
        subject=subject,
        audience=audiences,
        expires_at=expires_at,
        other=payload,
    )
    if expires_at is not None:
        overdue = (now - expires_at).total_seconds()
        if overdue > STS_EXP_LEEWAY:
            raise TokenExpiredError(
                f"{origin} holds a token that expired at {claims.expires_text} "
                f"({overdue:.0f}s ago); whatever writes it (kubelet, CI agent) has stopped "
                "renewing it"
            )
    if audience and audience not in audiences:
        raise TokenError(
            f"{origin} holds a token for audience {','.join(audiences) or '(none)'}, but STS "
            f"is expected to see {audience}: request the token for audience {audience} "
            "(Kubernetes: serviceAccountToken.audience; GitLab: id_tokens.<name>.aud) or "
            "change --audience to match the IAM OIDC provider's client ID",
            Disposition.FATAL,
        )
    return claims


def _malformed(origin: str, name: str, value: object, expected: str) -> TokenError:
    if isinstance(value, bool) or value is None:
        shown = json.dumps(value)
    elif isinstance(value, int | float):
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)[:24]
    else:
        names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
        shown = names.get(type(value), "a value")
    return TokenError(
        f"{origin} holds a malformed token: its {name} claim is {shown}, but it must be "
        f"{expected}; whatever issues the token is broken or it is not an OIDC ID token"
    )


def _text_claim(payload: Mapping[str, Any], name: str, origin: str) -> str:
    value = payload.get(name, "")
    if not isinstance(value, str):
        raise _malformed(origin, name, value, "a string")
    return value


def _audience_claim(payload: Mapping[str, Any], origin: str) -> tuple[str, ...]:
    value = payload.get("aud", ())
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(a, str) for a in value):
        return tuple(value)
    raise _malformed(origin, "aud", value, "a string or a list of strings")


def _time_claim(payload: Mapping[str, Any], name: str, origin: str) -> datetime | None:
    if name not in payload:
        return None
    value = payload[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_TIMESTAMP
    ):
        raise _malformed(
            origin, name, value, "a time in seconds since 1970 (a number up to year 9999)"
        )
    return datetime.fromtimestamp(value, UTC)


def read_token(
    raw: bytes | str, origin: str, now: datetime, audience: str | None
) -> WebIdentityToken:
    """A token from raw source output: text checks, then ``inspect_token``."""
    value = _from_text(raw, origin)
    return WebIdentityToken(value, inspect_token(value, origin, now, audience), origin)


def _from_text(raw: bytes | str, origin: str) -> str:
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        text.encode("ascii")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise TokenError(f"{origin} is not ASCII text, so it is not a JWT") from None
    if len(text) > MAX_TOKEN_BYTES:
        raise TokenError(
            f"{origin} holds more than {size_text(MAX_TOKEN_BYTES)} (a token is a few KB): "
            "is it the right source?"
        )
    # JWTs never contain whitespace; a trailing newline from `echo` is harmless here.
    value = text.strip()
    if not value:
        raise TokenError(f"{origin} is empty")
    return value


def _fingerprint(raw: bytes, identity: FileIdentity) -> Hashable:
    """A token file as the watch compares it: what the file is and what it holds."""
    return (identity, hashlib.sha256(raw).digest())


class FileTokenSource:
    """A token file re-read on every fetch: a regular file, bounded, read off the loop."""

    def __init__(self, path: Path, clock: Clock, audience: str | None = None) -> None:
        self.path = path
        self._clock = clock
        self._audience = audience
        self._reader = OffLoopReader(f"token file {path}")
        # Looks run while fetches may too: each has its own reader, so neither sees the
        # other's read as a stuck one.
        self._watch_reader = OffLoopReader(f"token file {path} (watch)")
        self._last_read: Hashable | None = None

    def __repr__(self) -> str:
        return f"FileTokenSource({str(self.path)!r})"

    async def fingerprint(self) -> Hashable:
        """The file's identity and a digest of its content, or why it cannot be read (with
        its identity where it has one): read like ``fetch`` reads, bounded and off the loop.
        """
        origin = f"token file {self.path}"

        def fail(problem: str) -> TokenError:
            return TokenError(f"{origin} {problem}")

        def look() -> Hashable:
            try:
                raw, identity = read_small_file(self.path, fail, MAX_TOKEN_BYTES)
            except FileNotFoundError:
                return ("missing",)
            except TokenError as exc:
                try:
                    return ("unusable", str(exc), FileIdentity.of(os.stat(self.path)))
                except OSError:
                    return ("unusable", str(exc))
            return _fingerprint(raw, identity)

        return await self._watch_reader.run(look, fail)

    async def fetch(self) -> WebIdentityToken:
        origin = f"token file {self.path}"

        def fail(problem: str) -> TokenError:
            return TokenError(f"{origin} {problem}")

        def read() -> bytes:
            raw, identity = read_small_file(self.path, fail, MAX_TOKEN_BYTES)
            # What this attempt sent: STS refusing it is only news once the file differs.
            self._last_read = _fingerprint(raw, identity)
            return raw

        self._last_read = None
        try:
            raw = await self._reader.run(read, fail)
        except FileNotFoundError:
            raise TokenError(f"{origin} does not exist (is the volume mounted?)") from None
        return read_token(raw, origin, self._clock.now(), self._audience)

    def last_read(self) -> Hashable | None:
        return self._last_read


class EnvTokenSource:
    """A token in an environment variable: read once at startup, never renewed."""

    def __init__(
        self, name: str, environ: Mapping[str, str], clock: Clock, audience: str | None = None
    ) -> None:
        self.name = name
        self._value = environ.get(name, "")
        self._clock = clock
        self._audience = audience
        self._warned = False

    def __repr__(self) -> str:
        return f"EnvTokenSource({self.name!r})"

    async def fetch(self) -> WebIdentityToken:
        origin = f"environment variable {self.name}"
        now = self._clock.now()
        try:
            token = read_token(self._value, origin, now, self._audience)
        except TokenExpiredError as exc:
            raise TokenExpiredError(
                f"{exc}. A token in an environment variable cannot be renewed: restart "
                "with a new one, or use a source that can (--token-file, --token-command, "
                "--token-source github)",
                Disposition.FATAL,
            ) from None
        claims = token.claims
        if claims.expires_at is not None and not self._warned:
            left = (claims.expires_at - now).total_seconds()
            if left < ENV_TOKEN_WARNING:
                self._warned = True
                log.warning(
                    "the token in %s expires at %s (in %.0fs) and cannot be renewed; "
                    "credentials stop refreshing after that",
                    self.name,
                    claims.expires_text,
                    left,
                    extra={"event": "token_expiring", "source": origin},
                )
        return token


class CommandTokenSource:
    """Runs ``argv`` (no shell, own process group, bounded output) per fetch; stdout: the token."""

    def __init__(
        self, argv: tuple[str, ...], timeout: float, clock: Clock, audience: str | None = None
    ) -> None:
        self.argv = argv
        self._timeout = timeout
        self._clock = clock
        self._audience = audience

    def __repr__(self) -> str:
        return f"CommandTokenSource({self.argv[0]!r})"

    async def fetch(self) -> WebIdentityToken:
        origin = f"token command {self.argv[0]}"

        def fail(problem: str) -> TokenError:
            return TokenError(f"{origin} {problem}")

        try:
            result = await run_bounded(
                self.argv, self._timeout, fail, MAX_TOKEN_BYTES, COMMAND_STDERR_KEPT
            )
        except OSError as exc:
            raise TokenError(f"{origin} cannot be started: {exc.strerror or exc}") from None
        if result.returncode != 0:
            # A helper run with -v or set -x may print its own bearer token: never ours to log.
            detail = redact(result.stderr_tail.decode(errors="replace").strip())[-300:]
            status = (
                f"was killed by signal {-result.returncode}"
                if result.returncode < 0
                else f"exited with status {result.returncode}"
            )
            raise TokenError(f"{origin} {status}: {detail or '(no error output)'}")
        return read_token(result.stdout, origin, self._clock.now(), self._audience)


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


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` (never more than one chunk past it)."""
    if (response.content_length or 0) > limit:
        return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(16384):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def build_token_source(
    config: TokenSourceConfig,
    clock: Clock,
    session: aiohttp.ClientSession | None,
    environ: Mapping[str, str] | None = None,
) -> TokenSource:
    """The token source a role's configuration describes."""
    audience = config.audience
    if config.kind == "env":
        assert config.env_var is not None
        return EnvTokenSource(
            config.env_var, environ if environ is not None else os.environ, clock, audience
        )
    if config.kind == "command":
        return CommandTokenSource(config.command, config.command_timeout, clock, audience)
    if config.kind == "github":
        assert config.github_url
        assert config.github_token is not None
        assert session is not None
        return GithubTokenSource(
            config.github_url, config.github_token.reveal(), audience, clock, session
        )
    assert config.path is not None
    return FileTokenSource(config.path, clock, audience)
