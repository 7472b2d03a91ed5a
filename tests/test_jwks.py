"""Issuer keys: OIDC discovery against a real local issuer, and a JWKS file on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sidecar.devmode.issuer import OidcIssuer
from sidecar.tenancy.jwks import (
    FETCH_TIMEOUT,
    MAX_DOCUMENT_BYTES,
    DiscoveryKeys,
    JwksFileKeys,
    KeySourceError,
    parse_jwks,
)
from sidecar.tenancy.pod_tokens import PodTokenError, PodTokenVerifier
from tests.fakes import FakeClock, settle

AUDIENCE = "sts.amazonaws.com"
SUBJECT = "system:serviceaccount:payments:api"
ERRORS = "sidecar.tenancy.jwks"


async def until(condition: Callable[[], bool]) -> None:
    """Wait (real time, in short steps) for real I/O a test started to finish."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def fetched(keys: DiscoveryKeys | JwksFileKeys, count: int) -> Callable[[], bool]:
    """True once ``count`` fetches were started and none is under way."""
    return lambda: keys.fetches == count and not keys.fetching


@dataclass
class FakeIssuer:
    """Plays a cluster's service-account issuer: discovery and JWKS, over real HTTP."""

    url: str = ""
    signers: list[OidcIssuer] = field(default_factory=list)
    status: int = 200
    discovery_patch: dict[str, Any] = field(default_factory=dict)
    jwks_body: bytes | None = None
    discovery_body: bytes | None = None
    #: While set and not yet released, requests wait on it (to hold a fetch in flight).
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[str] = field(default_factory=list)

    @property
    def signer(self) -> OidcIssuer:
        return self.signers[-1]

    def rotate(self, keep_old: bool = True) -> OidcIssuer:
        signer = OidcIssuer(self.url)
        self.signers = [*self.signers, signer] if keep_old else [signer]
        return signer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.status != 200:
            return web.json_response({"error": "nope"}, status=self.status)
        if request.path.endswith("/openid-configuration"):
            if self.discovery_body is not None:
                return web.Response(body=self.discovery_body, content_type="application/json")
            return web.json_response({**self.signer.discovery(), **self.discovery_patch})
        if self.jwks_body is not None:
            return web.Response(body=self.jwks_body, content_type="application/json")
        keys = [key for signer in self.signers for key in signer.jwks()["keys"]]
        return web.json_response({"keys": keys})

    def fetches(self, path: str = "/keys") -> int:
        return sum(p.endswith(path) for p in self.requests)


@contextlib.asynccontextmanager
async def running(keys: DiscoveryKeys | JwksFileKeys) -> AsyncIterator[None]:
    """The key source's refresh loop, for the length of the block."""
    runner = asyncio.ensure_future(keys.run())
    try:
        yield
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await keys.close()


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[FakeIssuer, aiohttp.ClientSession]]:
    fake = FakeIssuer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/cluster-1"))
    fake.rotate()
    async with aiohttp.ClientSession() as session:
        yield fake, session
    if fake.gate is not None:
        fake.gate.set()
    await server.close()


def discovery_keys(
    fake: FakeIssuer, session: aiohttp.ClientSession, clock: FakeClock, **kwargs: Any
) -> DiscoveryKeys:
    return DiscoveryKeys(fake.url, session, clock, **kwargs)


def token(clock: FakeClock, signer: OidcIssuer) -> str:
    return signer.mint(SUBJECT, now=clock.now().timestamp())


async def test_discovery_loads_keys_and_tokens_verify(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """Discovery -> jwks_uri -> keys; a token of that issuer then verifies end to end."""
    fake, session = issuer
    clock = FakeClock()
    keys = discovery_keys(fake, session, clock)
    assert not keys.ready
    await keys.load()
    assert keys.ready and keys.kids == (fake.signer.kid,)
    assert fake.requests == ["/cluster-1/.well-known/openid-configuration", "/cluster-1/keys"]
    verifier = PodTokenVerifier(keys, fake.url, AUDIENCE, clock)
    assert (await verifier.verify(token(clock, fake.signer))).service_account == "api"


async def test_rotation_is_picked_up_on_an_unknown_kid(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """A token signed with the issuer's new key makes one re-fetch, then verifies."""
    fake, session = issuer
    clock = FakeClock()
    keys = discovery_keys(fake, session, clock)
    await keys.load()
    await clock.advance(31)
    new = fake.rotate(keep_old=False)
    verifier = PodTokenVerifier(keys, fake.url, AUDIENCE, clock)
    assert (await verifier.verify(token(clock, new))).namespace == "payments"
    assert keys.fetches == 2 and keys.kids == (new.kid,)


async def test_unknown_kid_refetches_once_then_is_rate_limited(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """Made-up kids cost one fetch per min_refetch_interval (on the injected clock)."""
    fake, session = issuer
    clock = FakeClock()
    keys = discovery_keys(fake, session, clock, min_refetch_interval=30)
    await keys.load()
    await clock.advance(30)
    assert await keys.key_for("made-up-1") is None
    assert keys.fetches == 2
    for n in range(10):
        await clock.advance(2)
        assert await keys.key_for(f"made-up-{n}") is None
    assert keys.fetches == 2 and fake.fetches() == 2
    await clock.advance(10)
    assert await keys.key_for("made-up-x") is None
    assert keys.fetches == 3
    verifier = PodTokenVerifier(keys, fake.url, AUDIENCE, clock)
    with pytest.raises(PodTokenError) as caught:
        await verifier.verify(token(clock, OidcIssuer(fake.url)))
    assert caught.value.reason == "unknown_key" and keys.fetches == 3


async def test_concurrent_misses_share_one_fetch(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """Many requests with the new kid at once wait for one shared fetch."""
    fake, session = issuer
    clock = FakeClock()
    keys = discovery_keys(fake, session, clock)
    await keys.load()
    await clock.advance(60)
    new = fake.rotate()
    fake.gate = asyncio.Event()
    fake.entered.clear()
    verifier = PodTokenVerifier(keys, fake.url, AUDIENCE, clock)
    tokens = [
        new.mint(f"system:serviceaccount:ns:sa-{n}", now=clock.now().timestamp()) for n in range(20)
    ]
    waiting = [asyncio.ensure_future(verifier.verify(t)) for t in tokens]
    await until(fake.entered.is_set)
    fake.gate.set()
    identities = await asyncio.gather(*waiting)
    assert {i.service_account for i in identities} == {f"sa-{n}" for n in range(20)}
    assert keys.fetches == 2 and fake.fetches() == 2


async def test_periodic_refresh_keeps_old_keys_on_failure(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture
) -> None:
    """run() refreshes hourly; a failed refresh keeps the keys and is logged once."""
    fake, session = issuer
    clock = FakeClock()
    keys = discovery_keys(fake, session, clock, refresh_interval=3600)
    await keys.load()
    old = fake.signer
    async with running(keys):
        fake.status = 500
        for hour in (1, 2):
            await clock.advance(3600)
            await until(fetched(keys, 1 + hour))
            await settle()
        errors = [r for r in caplog.records if r.name == ERRORS and r.levelno == logging.ERROR]
        assert len(errors) == 1 and "returned HTTP 500" in errors[0].getMessage()
        assert keys.ready and keys.kids == (old.kid,)
        fake.status = 200
        new = fake.rotate()
        await clock.advance(3600)
        await until(lambda: len(keys.kids) == 2)
        assert set(keys.kids) == {old.kid, new.kid}


async def test_run_retries_soon_while_nothing_is_loaded(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """If the first load failed, run() retries every min_refetch_interval, not hourly."""
    fake, session = issuer
    clock = FakeClock()
    keys = discovery_keys(fake, session, clock, min_refetch_interval=30)
    fake.status = 503
    with pytest.raises(KeySourceError, match="HTTP 503"):
        await keys.load()
    async with running(keys):
        fake.status = 200
        await clock.advance(30)
        await until(lambda: keys.ready)
        assert keys.fetches == 2


@pytest.mark.parametrize(
    ("status", "patch", "body", "match"),
    [
        (404, {}, None, r"returned HTTP 404: check --issuer"),
        (200, {"issuer": "https://elsewhere.example.com"}, None, r"names issuer .*--issuer must"),
        (200, {"jwks_uri": None}, None, r'no "jwks_uri"'),
        (200, {"jwks_uri": "http://keys.example.com/keys"}, None, r"plain http://"),
        (200, {"jwks_uri": "https://a..b/keys"}, None, r"is not a valid URL"),
        (200, {}, b"not json", r"is not a JSON document"),
        (200, {}, b'{"keys": "x"}', r"is not a JWKS"),
        (200, {}, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', r"no usable RSA or EC"),
        (200, {}, b" " * (MAX_DOCUMENT_BYTES + 1), r"larger than 256 KiB"),
    ],
)
async def test_bad_issuer_answers_are_clear_errors(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
    status: int,
    patch: dict[str, Any],
    body: bytes | None,
    match: str,
) -> None:
    """Every bad discovery or JWKS answer is a KeySourceError naming the problem and fix."""
    fake, session = issuer
    fake.status, fake.discovery_patch, fake.jwks_body = status, patch, body
    keys = discovery_keys(fake, session, FakeClock())
    with pytest.raises(KeySourceError, match=match):
        await keys.load()
    assert not keys.ready


async def test_discovery_document_is_checked_as_json(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """A discovery document that is not JSON is an error, not a traceback."""
    fake, session = issuer
    fake.discovery_body = b"<html>"
    with pytest.raises(KeySourceError, match=r"discovery document .* is not JSON"):
        await DiscoveryKeys(fake.url, session, FakeClock()).load()


async def test_fetch_times_out_on_the_injected_clock(
    issuer: tuple[FakeIssuer, aiohttp.ClientSession],
) -> None:
    """An issuer that never answers is given up after the timeout of fake time."""
    fake, session = issuer
    clock = FakeClock()
    fake.gate = asyncio.Event()
    keys = discovery_keys(fake, session, clock)
    loading = asyncio.ensure_future(keys.load())
    await until(fake.entered.is_set)
    await clock.advance(FETCH_TIMEOUT)
    with pytest.raises(KeySourceError, match="did not answer within 10s"):
        await loading


async def test_unreachable_issuer_is_a_clear_error() -> None:
    """A closed port is reported as unreachable, with the fix."""
    async with aiohttp.ClientSession() as session:
        keys = DiscoveryKeys("http://127.0.0.1:9", session, FakeClock())
        with pytest.raises(KeySourceError, match=r"unreachable .*check --issuer"):
            await keys.load()


@pytest.mark.parametrize(
    "url", ["http://oidc.example.com", "http://10.0.0.1/x", "ftp://x", "oidc.example.com"]
)
async def test_plain_http_issuer_off_loopback_is_refused(url: str) -> None:
    """--issuer must be https:// except on loopback (keys in clear could be replaced)."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(KeySourceError, match="--issuer"):
            DiscoveryKeys(url, session, FakeClock())
        for loopback in ("http://127.0.0.2:8080", "http://[::1]/x", "http://localhost"):
            DiscoveryKeys(loopback, session, FakeClock())


def test_unusable_keys_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Encryption keys, symmetric keys, short RSA keys and junk are skipped, not fatal."""
    good = OidcIssuer("https://x").jwks()["keys"][0]
    short = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 - refused
        )
    )
    ec_key = json.loads(
        jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key())
    )
    document = {
        "keys": [
            {**good, "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**short, "kid": "short"},
            {**ec_key, "kid": "p384-wrong-alg", "alg": "ES256"},
            {**good, "alg": "HS256", "kid": "confused"},
            {**good, "kid": 5},
            "junk",
            good,
            {**ec_key, "kid": "p384"},
            {**good},
        ]
    }
    keys = parse_jwks(json.dumps(document).encode(), "test jwks", "fix it")
    assert set(keys) == {good["kid"], "p384"}
    assert keys["p384"].algorithms == {"ES384"}
    assert keys[good["kid"]].algorithms == {"RS256"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 8


# -- JWKS file ---------------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> None:
    """Replace the file like kubectl > file.tmp && mv would (a new inode)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(tmp, path)


async def test_jwks_file_loads_and_verifies(tmp_path: Path) -> None:
    """A JWKS file (kubectl get --raw /openid/v1/jwks) gives keys that verify tokens."""
    signer = OidcIssuer("https://kubernetes.default.svc.cluster.local")
    path = tmp_path / "jwks.json"
    write(path, json.dumps(signer.jwks()))
    clock = FakeClock()
    keys = JwksFileKeys(path, clock)
    await keys.load()
    verifier = PodTokenVerifier(keys, signer.url, AUDIENCE, clock)
    assert (await verifier.verify(token(clock, signer))).namespace == "payments"


async def test_jwks_file_change_is_picked_up_by_the_poll(tmp_path: Path) -> None:
    """A rewritten file is re-read on the next poll (run)."""
    first, second = OidcIssuer("https://k8s"), OidcIssuer("https://k8s")
    path = tmp_path / "jwks.json"
    write(path, json.dumps(first.jwks()))
    clock = FakeClock()
    keys = JwksFileKeys(path, clock, poll_interval=10)
    await keys.load()
    async with running(keys):
        write(path, json.dumps(second.jwks()))
        await clock.advance(10)
        await until(lambda: keys.kids == (second.kid,))


async def test_a_jwks_file_missing_at_start_is_read_on_the_next_poll(tmp_path: Path) -> None:
    """A file written after the agent started (by an init step, or late) is read on the
    next poll, not only after the issuer re-fetch rate limit: readiness waits one poll."""
    signer = OidcIssuer("https://k8s")
    path = tmp_path / "jwks.json"
    clock = FakeClock()
    keys = JwksFileKeys(path, clock, poll_interval=10, min_refetch_interval=30)
    with pytest.raises(KeySourceError, match="does not exist"):
        await keys.load()
    async with running(keys):
        write(path, json.dumps(signer.jwks()))
        await clock.advance(10)
        await until(lambda: keys.ready)
        assert keys.kids == (signer.kid,)


async def test_jwks_file_change_is_picked_up_on_an_unknown_kid(tmp_path: Path) -> None:
    """An unknown kid re-reads a changed file, at most once per min_refetch_interval."""
    first, second = OidcIssuer("https://k8s"), OidcIssuer("https://k8s")
    path = tmp_path / "jwks.json"
    write(path, json.dumps(first.jwks()))
    clock = FakeClock()
    keys = JwksFileKeys(path, clock, min_refetch_interval=30)
    await keys.load()
    write(path, json.dumps(second.jwks()))
    await clock.advance(29)
    assert await keys.key_for(second.kid) is None  # too soon after the last read
    await clock.advance(1)
    assert await keys.key_for(second.kid) is not None
    assert keys.fetches == 2


async def test_unchanged_jwks_file_is_not_reparsed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A look that finds the same stat fingerprint does not parse the file again."""
    signer = OidcIssuer("https://k8s")
    path = tmp_path / "jwks.json"
    jwks = signer.jwks()
    jwks["keys"].append({"kty": "oct", "k": "c2VjcmV0"})  # warned about on every parse
    write(path, json.dumps(jwks))
    keys = JwksFileKeys(path, FakeClock())
    for _ in range(3):
        await keys.load()
    assert keys.kids == (signer.kid,) and keys.fetches == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_broken_jwks_file_keeps_old_keys_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken new version keeps the old keys, logs one error, and a fixed one is loaded."""
    signer, fixed = OidcIssuer("https://k8s"), OidcIssuer("https://k8s")
    path = tmp_path / "jwks.json"
    write(path, json.dumps(signer.jwks()))
    clock = FakeClock()
    keys = JwksFileKeys(path, clock, poll_interval=10)
    await keys.load()
    async with running(keys):
        write(path, '{"keys": [')
        for n in range(1, 4):
            await clock.advance(10)
            await until(fetched(keys, 1 + n))
            await settle()
        errors = [r for r in caplog.records if r.name == ERRORS and r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "is not a JSON document" in errors[0].getMessage()
        assert "kubectl get --raw /openid/v1/jwks" in errors[0].getMessage()
        assert keys.ready and keys.kids == (signer.kid,)
        write(path, json.dumps(fixed.jwks()))
        await clock.advance(10)
        await until(lambda: keys.kids == (fixed.kid,))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "FIFO"),
        (lambda p: p.write_bytes(b"x" * (MAX_DOCUMENT_BYTES + 1)), "larger than 256 KiB"),
        (lambda p: p.write_text("[]"), "is not a JWKS"),
    ],
)
async def test_bad_jwks_file_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], object], match: str
) -> None:
    """Missing, not a regular file, too big or not a JWKS: KeySourceError naming the file."""
    path = tmp_path / "jwks.json"
    make(path)
    with pytest.raises(KeySourceError, match=match) as caught:
        await JwksFileKeys(path, FakeClock()).load()
    assert str(path) in str(caught.value)
