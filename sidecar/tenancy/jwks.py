"""The cluster's service-account signing keys: from OIDC discovery under the issuer URL, or
from a JWKS file (what ``kubectl get --raw /openid/v1/jwks`` prints).

Both kinds keep the last good key set and share one behaviour (``KeySource``):

* ``load()`` fetches now and raises ``KeySourceError`` naming the problem and the fix;
* ``key_for(kid)`` answers from memory; an unknown ``kid`` (the issuer rotated its key)
  triggers one re-fetch, at most once per ``min_refetch_interval`` on the injected clock, so
  a flood of tokens with made-up ``kid`` values costs one fetch per interval, not one each;
  concurrent misses share that fetch (single flight through one task);
* ``run()`` refreshes periodically until cancelled (and retries while nothing is loaded);
  a failed refresh keeps the old keys and logs the problem once, until it changes.

Documents are bounded in size (``MAX_DOCUMENT_BYTES``) and time (the clock's timeout for
HTTP, an ``OffLoopReader`` for the file). Keys are only RSA (2048 bits or more) and EC
(P-256, P-384, P-521) signature keys; anything else in a key set is skipped with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from sidecar.config.checks import cleartext_url_problem
from sidecar.core.bounded_http import read_capped
from sidecar.core.clock import Clock
from sidecar.core.errors import SidecarError
from sidecar.core.safe_read import FileIdentity, OffLoopReader, read_small_file, size_text

log = logging.getLogger(__name__)

#: A JWKS of a few keys is a few KB; a discovery document less.
MAX_DOCUMENT_BYTES = 256 * 1024
#: How long one HTTP request (headers and body) to the issuer may take.
FETCH_TIMEOUT = 10.0
#: At most one re-fetch per this many seconds for tokens naming an unknown key.
MIN_REFETCH_INTERVAL = 30.0
#: How often discovery keys are refreshed although no token asked for a new one.
REFRESH_INTERVAL = 3600.0
#: How often the JWKS file is looked at (a stat; read only when it changed).
FILE_POLL_INTERVAL = 10.0
#: RSA keys shorter than this are refused: forging a signature must stay infeasible.
MIN_RSA_BITS = 2048

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
#: Asymmetric signatures only: never ``none``, never HMAC (a public key is not a secret).
ALLOWED_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values())

PublicKey = RSAPublicKey | EllipticCurvePublicKey


class KeySourceError(SidecarError):
    """The issuer's signing keys cannot be fetched, read or parsed."""


@dataclass(frozen=True)
class VerificationKey:
    """One public key of the issuer and the algorithms a token signed with it may use."""

    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]


class KeySource(Protocol):
    @property
    def ready(self) -> bool:
        """True once a key set has been loaded (it is kept through later failures)."""
        ...

    async def load(self) -> None:
        """Fetch the keys now; ``KeySourceError`` if that fails (old keys are kept)."""
        ...

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        """The key with this ``kid``, re-fetching (rate-limited) if it is unknown."""
        ...

    def known(self, kid: str | None) -> VerificationKey | None:
        """The key with this ``kid`` among those loaded now (never fetches)."""
        ...


def check_issuer_url(url: str, what: str) -> None:
    """https:// only, except on loopback: keys fetched in clear could be replaced in transit."""
    problem = cleartext_url_problem(
        url,
        f"{what} {url}",
        "anyone on the path could replace the issuer's keys and forge pod tokens",
    )
    if problem:
        raise KeySourceError(f"{problem}; or use --jwks-file")


def _brief(value: object) -> str:
    """A value from the document, for a log line: short whatever it holds."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _key_from_jwk(entry: Mapping[str, Any]) -> VerificationKey:
    """One JWK as a verification key; ``ValueError`` saying why it cannot be used."""
    kty, use, alg, kid = (entry.get(name) for name in ("kty", "use", "alg", "kid"))
    if use is not None and use != "sig":
        raise ValueError(f'its "use" is {_brief(use)}, not "sig"')
    if kid is not None and not isinstance(kid, str):
        raise ValueError('its "kid" is not a string')
    if alg is not None and alg not in ALLOWED_ALGORITHMS:
        raise ValueError(
            f'its "alg" {_brief(alg)} is not an asymmetric signature algorithm we accept'
        )
    if kty == "RSA":
        algorithms = frozenset({alg}) if alg else RSA_ALGORITHMS
    elif kty == "EC":
        crv = entry.get("crv")
        curve_alg = EC_ALGORITHMS.get(crv) if isinstance(crv, str) else None
        if curve_alg is None or alg not in (None, curve_alg):
            raise ValueError(
                f"its curve {_brief(crv)} is not P-256, P-384 or P-521 fitting {_brief(alg)}"
            )
        algorithms = frozenset({curve_alg})
    else:
        raise ValueError(f"its key type {_brief(kty)} is not RSA or EC")
    try:
        key = jwt.PyJWK(dict(entry), algorithm=min(algorithms)).key
    except jwt.PyJWTError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise ValueError("it is not a public key")
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"its RSA key has {key.key_size} bits, fewer than {MIN_RSA_BITS}")
    return VerificationKey(kid, key, algorithms)


def parse_jwks(raw: bytes, origin: str, fix: str) -> dict[str | None, VerificationKey]:
    """The usable keys of a JWKS document, by ``kid``; ``KeySourceError`` if there are none."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise KeySourceError(f"{origin} is not a JSON document: {fix}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeySourceError(f'{origin} is not a JWKS (a JSON object with a "keys" list): {fix}')
    keys: dict[str | None, VerificationKey] = {}
    for number, entry in enumerate(entries, 1):
        try:
            if not isinstance(entry, dict):
                raise ValueError("it is not a JSON object")
            key = _key_from_jwk(entry)
        except ValueError as exc:
            log.warning("%s: skipping key %d: %s", origin, number, exc)
            continue
        if key.kid in keys:
            log.warning("%s: skipping key %d: its kid repeats an earlier key's", origin, number)
            continue
        keys[key.kid] = key
    if not keys:
        raise KeySourceError(f"{origin} holds no usable RSA or EC signing key: {fix}")
    return keys


class _CachedKeys:
    """The key set both kinds share: lookup, rate-limited single-flight re-fetch, refresh."""

    def __init__(self, clock: Clock, min_refetch_interval: float, refresh_interval: float) -> None:
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._refresh_interval = refresh_interval
        self._keys: Mapping[str | None, VerificationKey] = {}
        self._ready = False
        self._last_attempt = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self._last_reported: str | None = None
        #: Number of fetches started (tests and metrics read it).
        self.fetches = 0

    async def _fetch(self) -> dict[str | None, VerificationKey] | None:
        """The new key set, or None when the source has not changed since the last one."""
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def fetching(self) -> bool:
        return self._inflight is not None

    @property
    def kids(self) -> tuple[str | None, ...]:
        return tuple(self._keys)

    async def load(self) -> None:
        if self._inflight is None:
            self._last_attempt = self._clock.monotonic()
            self.fetches += 1
            self._inflight = asyncio.ensure_future(self._fetch_and_store())
            self._inflight.add_done_callback(self._fetch_done)
        # Shielded: a waiter that is cancelled (its client went away) leaves the fetch to
        # the others.
        await asyncio.shield(self._inflight)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_and_store(self) -> None:
        keys = await self._fetch()
        if keys is not None:
            if set(keys) != set(self._keys):
                log.info("issuer keys loaded from %s: kid %s", self, ", ".join(map(str, keys)))
            self._keys = keys
        self._ready = True
        self._last_reported = None

    def known(self, kid: str | None) -> VerificationKey | None:
        return self._lookup(kid)

    def _lookup(self, kid: str | None) -> VerificationKey | None:
        if kid is None:  # no kid: only unambiguous with a single key
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        if (key := self._lookup(kid)) is not None:
            return key
        waited = self._clock.monotonic() - self._last_attempt
        if self._inflight is None and waited < self._min_refetch_interval:
            return None  # rate-limited: made-up kids must not make us hammer the issuer
        try:
            await self.load()
        except KeySourceError as exc:
            self._report(exc)
            return None
        return self._lookup(kid)

    def _report(self, exc: KeySourceError) -> None:
        """Log a failed refresh once per distinct problem (the old keys stay in use)."""
        if str(exc) == self._last_reported:
            return
        self._last_reported = str(exc)
        kept = "keeping the keys loaded before" if self._ready else "no keys loaded yet"
        log.error("%s (%s)", exc, kept)

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` (while nothing is loaded, every
        ``min_refetch_interval``, or sooner if refreshes are more frequent: a JWKS file's
        poll) until cancelled."""
        while True:
            wait = self._refresh_interval
            if not self._ready:
                wait = min(self._refresh_interval, self._min_refetch_interval)
            await self._clock.sleep(wait)
            try:
                await self.load()
            except KeySourceError as exc:
                self._report(exc)

    async def close(self) -> None:
        """Cancel a fetch under way (at shutdown)."""
        if (task := self._inflight) is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KeySourceError):
                await task


class DiscoveryKeys(_CachedKeys):
    """Keys from ``<issuer>/.well-known/openid-configuration`` -> ``jwks_uri``.

    The session belongs to the caller (it closes it after ``close()``).
    """

    def __init__(
        self,
        issuer: str,
        session: aiohttp.ClientSession,
        clock: Clock,
        *,
        timeout: float = FETCH_TIMEOUT,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        check_issuer_url(issuer, "--issuer")
        super().__init__(clock, min_refetch_interval, refresh_interval)
        self.issuer = issuer
        self._session = session
        self._timeout = timeout
        self._digest: bytes | None = None

    def __repr__(self) -> str:
        return f"DiscoveryKeys({self.issuer!r})"

    __str__ = __repr__

    async def _fetch(self) -> dict[str | None, VerificationKey] | None:
        what = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            discovery = json.loads(await self._get(what, "its discovery document"))
        except (ValueError, RecursionError):
            raise KeySourceError(
                f"issuer {self.issuer}: its discovery document at {what} is not JSON: check "
                "--issuer, or use --jwks-file"
            ) from None
        if not isinstance(discovery, dict) or discovery.get("issuer") != self.issuer:
            named = discovery.get("issuer") if isinstance(discovery, dict) else None
            raise KeySourceError(
                f"issuer {self.issuer}: its discovery document names issuer "
                f"{named if isinstance(named, str) and len(named) < 300 else '(none)'}, not "
                f"{self.issuer}: --issuer must be exactly the cluster's service-account issuer "
                "(`kubectl get --raw /.well-known/openid-configuration` shows it)"
            )
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeySourceError(
                f'issuer {self.issuer}: its discovery document has no "jwks_uri": '
                "is --issuer an OIDC issuer? Otherwise use --jwks-file"
            )
        check_issuer_url(jwks_uri, f"issuer {self.issuer}: its jwks_uri")
        raw = await self._get(jwks_uri, "its key set (jwks_uri)")
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return None  # unchanged: no re-parse, no repeated warnings
        keys = parse_jwks(
            raw,
            f"issuer {self.issuer}: the key set at {jwks_uri}",
            "check --issuer, or use --jwks-file with `kubectl get --raw /openid/v1/jwks`",
        )
        self._digest = digest
        return keys

    async def _get(self, url: str, what: str) -> bytes:
        """The body of a 200 answer, bounded in size and time."""
        problem = f"issuer {self.issuer}: {what} at {url}"
        fix = "check --issuer and that this node reaches it, or use --jwks-file"
        try:
            async with (
                self._clock.timeout(self._timeout),
                self._session.get(
                    url, allow_redirects=False, headers={"Accept": "application/json"}
                ) as response,
            ):
                status = response.status
                body = await read_capped(response, MAX_DOCUMENT_BYTES)
        except TimeoutError:
            raise KeySourceError(
                f"{problem} did not answer within {self._timeout:g}s: {fix}"
            ) from None
        except aiohttp.ClientError as exc:
            raise KeySourceError(
                f"{problem} is unreachable ({type(exc).__name__}): {fix}"
            ) from None
        except ValueError:  # yarl refusing a URL that urlsplit accepted
            raise KeySourceError(f"{problem} is not a valid URL: {fix}") from None
        if status != 200:
            raise KeySourceError(f"{problem} returned HTTP {status}: {fix}")
        if body is None:
            raise KeySourceError(f"{problem} is larger than {size_text(MAX_DOCUMENT_BYTES)}: {fix}")
        return body


class JwksFileKeys(_CachedKeys):
    """Keys from a JWKS file, re-read when its stat fingerprint changes."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        *,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL,
        poll_interval: float = FILE_POLL_INTERVAL,
    ) -> None:
        super().__init__(clock, min_refetch_interval, poll_interval)
        self.path = path
        self._reader = OffLoopReader(f"jwks:{path}")
        self._loaded: FileIdentity | None = None
        self._failed: tuple[FileIdentity, KeySourceError] | None = None

    def __repr__(self) -> str:
        return f"JwksFileKeys({str(self.path)!r})"

    __str__ = __repr__

    def _fail(self, problem: str) -> KeySourceError:
        return KeySourceError(
            f"--jwks-file {self.path} {problem} (it should hold what "
            "`kubectl get --raw /openid/v1/jwks` prints)"
        )

    def _missing(self) -> KeySourceError:
        return self._fail("does not exist")

    async def _fetch(self) -> dict[str | None, VerificationKey] | None:
        def look() -> FileIdentity:
            try:
                return FileIdentity.of(os.stat(self.path))
            except FileNotFoundError:
                raise self._missing() from None
            except OSError as exc:
                raise self._fail(f"cannot be read ({exc.strerror or exc})") from None

        identity = await self._reader.run(look, self._fail)
        if identity == self._loaded:
            return None
        if self._failed is not None and self._failed[0] == identity:
            raise self._failed[1]  # the same broken version: not read (nor logged) again

        def read() -> tuple[bytes, FileIdentity]:
            try:
                return read_small_file(self.path, self._fail, MAX_DOCUMENT_BYTES)
            except FileNotFoundError:
                raise self._missing() from None

        raw, identity = await self._reader.run(read, self._fail)
        try:
            keys = parse_jwks(
                raw,
                f"--jwks-file {self.path}",
                f"write it again with `kubectl get --raw /openid/v1/jwks > {self.path}`",
            )
        except KeySourceError as exc:
            self._failed = (identity, exc)
            raise
        self._loaded, self._failed = identity, None
        return keys
