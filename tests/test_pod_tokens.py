"""Pod token verification: every check, its status/code/reason, and the verified-token cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import astuple
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.devmode.issuer import OidcIssuer
from sidecar.tenancy.jwks import VerificationKey, parse_jwks
from sidecar.tenancy.pod_tokens import (
    MAX_TOKEN_BYTES,
    OUTCOMES,
    PodIdentity,
    PodTokenError,
    PodTokenVerifier,
)
from tests.fakes import FakeClock

URL = "https://oidc.example.com/cluster-1"
AUDIENCE = "sts.amazonaws.com"
ISSUER = OidcIssuer(URL)
SUBJECT = "system:serviceaccount:payments:api"


class StaticKeys:
    """A key source holding fixed keys; counts lookups (a lookup precedes every signature
    check)."""

    def __init__(self, *jwks: dict[str, Any], ready: bool = True) -> None:
        self.keys: dict[str | None, VerificationKey] = {}
        for document in jwks:
            self.keys.update(parse_jwks(json.dumps(document).encode(), "test", "fix it"))
        self.ready = ready
        self.lookups = 0

    async def load(self) -> None:
        return None

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        self.lookups += 1
        return self.keys.get(kid)

    def known(self, kid: str | None) -> VerificationKey | None:
        return self.keys.get(kid)  # a dictionary read, not a lookup that may fetch


def setup(**kwargs: Any) -> tuple[PodTokenVerifier, StaticKeys, FakeClock]:
    clock = FakeClock()
    keys = StaticKeys(ISSUER.jwks())
    return PodTokenVerifier(keys, URL, AUDIENCE, clock, **kwargs), keys, clock


def mint(clock: FakeClock, issuer: OidcIssuer = ISSUER, /, **kwargs: Any) -> str:
    kwargs.setdefault("subject", SUBJECT)
    return issuer.mint(now=clock.now().timestamp(), **kwargs)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"sig") -> str:
    return (
        ".".join(b64(json.dumps(part).encode()) for part in (header, payload))
        + "."
        + b64(signature)
    )


async def refused(verifier: PodTokenVerifier, token: str, reason: str) -> PodTokenError:
    """The token is refused for ``reason``; the error never holds the token or its parts."""
    with pytest.raises(PodTokenError) as caught:
        await verifier.verify(f"Bearer {token}")
    error = caught.value
    assert error.reason == reason, str(error)
    assert (error.status, error.code) == OUTCOMES[error.reason] or error.code == "MissingToken"
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in str(error)
            assert part not in repr(error)
    return error


async def test_valid_token_gives_the_pod_identity() -> None:
    """A token of our issuer and audience gives namespace, service account, expiry, pod."""
    verifier, _, clock = setup()
    token = mint(
        clock,
        ttl=600,
        **{
            "kubernetes.io": {
                "namespace": "payments",
                "serviceaccount": {"name": "api", "uid": "0b6e7a4c-1f0e-4c1b-9a53-3c8d3c1b0c11"},
                "pod": {"name": "api-7d9f-x2x", "uid": "5e3f3c1a-0c2d-4f3b-8c7a-1d2e3f4a5b6c"},
            }
        },
    )
    identity = await verifier.verify(f"Bearer {token}")
    expected = PodIdentity(
        URL,
        "payments",
        "api",
        SUBJECT,
        (clock.now() + timedelta(seconds=600)).replace(microsecond=0),
        identity.token,
        "api-7d9f-x2x",
        "5e3f3c1a-0c2d-4f3b-8c7a-1d2e3f4a5b6c",
    )
    assert astuple(identity) == astuple(expected)
    assert identity.token.reveal() == token
    assert token not in repr(identity) and token not in str(identity)


async def test_bare_token_and_any_case_of_bearer_are_accepted() -> None:
    """The Authorization value may be the bare token (what SDKs send) or "Bearer <token>"."""
    verifier, _, clock = setup()
    token = mint(clock)
    for value in (token, f"Bearer {token}", f"bearer  {token} ", f" {token}\n", f"BEARER {token}"):
        assert (await verifier.verify(value)).service_account == "api"
    # Only "bearer" and a space is the scheme: anything else is read as the token itself.
    for value in (f"Bearer\t{token}", f"Bearerx {token}", f"Basic {token}"):
        with pytest.raises(PodTokenError):
            await verifier.verify(value)


async def test_forged_token_with_our_kid_is_refused() -> None:
    """A token signed by another key under our kid fails the signature check (401)."""
    verifier, _, clock = setup()
    forger = OidcIssuer(URL)
    forger.kid = ISSUER.kid
    error = await refused(verifier, mint(clock, forger), "signature")
    assert error.status == 401 and error.code == "InvalidSignature"
    assert verifier.cached == 0


async def test_altered_payload_is_refused() -> None:
    """Changing the payload of a genuine token breaks its signature."""
    verifier, _, clock = setup()
    header, _, signature = mint(clock).split(".")
    other = b64(json.dumps({"iss": URL, "sub": "system:serviceaccount:kube-system:admin"}).encode())
    await refused(verifier, f"{header}.{other}.{signature}", "signature")


async def test_unknown_kid_is_refused() -> None:
    """A token naming a key the issuer does not have is 401 UnknownSigningKey."""
    verifier, _, clock = setup()
    error = await refused(verifier, mint(clock, OidcIssuer(URL)), "unknown_key")
    assert (error.status, error.code) == (401, "UnknownSigningKey")


async def test_keys_not_loaded_is_503() -> None:
    """Before the issuer's keys are loaded the answer is 503 (retry), not 401."""
    clock = FakeClock()
    verifier = PodTokenVerifier(StaticKeys(ready=False), URL, AUDIENCE, clock)
    error = await refused(verifier, mint(clock), "keys_unavailable")
    assert error.status == 503


async def test_expiry_uses_the_injected_clock_and_leeway() -> None:
    """exp is checked on the injected wall clock, with the leeway; past it: 401 TokenExpired."""
    verifier, _, clock = setup(leeway=30)
    token = mint(clock, ttl=60)
    await clock.advance(60 + 29)
    assert (await verifier.verify(token)).namespace == "payments"  # within the leeway
    await clock.advance(1)
    error = await refused(verifier, token, "expired")
    assert (error.status, error.code) == (401, "TokenExpired")


async def test_not_yet_valid_uses_the_injected_clock_and_leeway() -> None:
    """nbf in the future beyond the leeway is 401 TokenNotYetValid; within it, accepted."""
    verifier, _, clock = setup(leeway=30)
    now = clock.now().timestamp()
    early = ISSUER.mint(SUBJECT, now=now + 31)
    error = await refused(verifier, early, "not_yet_valid")
    assert error.code == "TokenNotYetValid"
    assert await verifier.verify(ISSUER.mint(SUBJECT, now=now + 29))


async def test_token_without_exp_is_refused() -> None:
    """A token that never expires is not a projected token: refused."""
    verifier, _, clock = setup()
    await refused(verifier, mint(clock, exp=None), "malformed")


async def test_wrong_issuer_is_403_without_a_key_lookup() -> None:
    """A token of another issuer is 403 before any key lookup (no re-fetch for it)."""
    verifier, keys, clock = setup()
    other = OidcIssuer("https://oidc.example.com/cluster-2")
    error = await refused(verifier, mint(clock, other), "issuer")
    assert (error.status, error.code) == (403, "InvalidIssuer")
    assert keys.lookups == 0


async def test_our_key_with_another_iss_is_403() -> None:
    """A token signed by our key but naming another iss is refused too."""
    verifier, _, clock = setup()
    await refused(verifier, mint(clock, iss="https://evil.example.com"), "issuer")


@pytest.mark.parametrize("audience", ["other", ["a", "b"], []])
async def test_wrong_audience_is_403(audience: str | list[str]) -> None:
    """A token for another audience is 403 InvalidAudience, naming the expected one."""
    verifier, _, clock = setup()
    error = await refused(verifier, mint(clock, audience=audience), "audience")
    assert error.status == 403 and AUDIENCE in str(error)


async def test_audience_list_containing_ours_is_accepted() -> None:
    """aud may be a list; it must contain our audience."""
    verifier, _, clock = setup()
    assert await verifier.verify(mint(clock, audience=["vault", AUDIENCE]))


@pytest.mark.parametrize(
    "subject",
    [
        "admin",
        "system:serviceaccount:payments",
        "system:serviceaccount:payments:api:extra",
        "system:serviceaccount:Payments:api",
        "system:serviceaccount:pay_ments:api",
        "system:serviceaccount:payments:-api",
        "system:serviceaccount::api",
        "system:serviceaccount:" + "n" * 64 + ":api",
        "system:node:ip-10-0-0-1",
    ],
)
async def test_bad_subject_is_403(subject: str) -> None:
    """sub must be system:serviceaccount:<DNS label>:<DNS subdomain>."""
    verifier, _, clock = setup()
    error = await refused(verifier, mint(clock, subject=subject), "subject")
    assert (error.status, error.code) == (403, "InvalidSubject")


async def test_service_account_may_be_a_dns_subdomain() -> None:
    """Service-account names may hold dots (DNS subdomains)."""
    verifier, _, clock = setup()
    identity = await verifier.verify(mint(clock, subject="system:serviceaccount:ns:my.app-1"))
    assert (identity.namespace, identity.service_account) == ("ns", "my.app-1")


async def test_kubernetes_claim_must_agree_with_sub() -> None:
    """A kubernetes.io claim naming another namespace or service account is refused."""
    verifier, _, clock = setup()
    for claim in (
        {"namespace": "kube-system", "serviceaccount": {"name": "api"}},
        {"namespace": "payments", "serviceaccount": {"name": "admin"}},
        {"namespace": "payments"},
        "payments",
    ):
        await refused(verifier, mint(clock, **{"kubernetes.io": claim}), "subject")


async def test_alg_none_is_refused() -> None:
    """An unsigned token (alg none) is refused before any key lookup."""
    verifier, keys, clock = setup()
    payload = jwt.decode(mint(clock), options={"verify_signature": False})
    for alg in ("none", "None", "NONE"):
        await refused(verifier, handmade({"alg": alg, "kid": ISSUER.kid}, payload), "algorithm")
    assert keys.lookups == 0


async def test_hmac_with_the_public_key_as_secret_is_refused() -> None:
    """The classic confusion attack (HS256 keyed with the public key) is refused."""
    verifier, _, clock = setup()
    payload = jwt.decode(mint(clock), options={"verify_signature": False})
    pem = ISSUER.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
        header = {"alg": alg, "kid": ISSUER.kid, "typ": "JWT"}
        unsigned = handmade(header, payload).rsplit(".", 1)[0]
        signature = hmac.new(pem, unsigned.encode(), digest).digest()
        await refused(verifier, f"{unsigned}.{b64(signature)}", "algorithm")


async def test_algorithm_must_fit_the_key() -> None:
    """An RS256 key cannot verify a token that claims ES256 (nor PS256 when the JWK says
    RS256)."""
    verifier, _, clock = setup()
    _, payload, signature = mint(clock).split(".")
    for alg in ("ES256", "PS256"):
        fake = b64(json.dumps({"alg": alg, "kid": ISSUER.kid}).encode())
        error = await refused(verifier, f"{fake}.{payload}.{signature}", "algorithm")
        assert alg in str(error)


async def test_oversize_is_refused_before_parsing() -> None:
    """More than the size cap is 401 TokenTooLarge, whatever it holds."""
    verifier, keys, _ = setup()
    error = await refused(verifier, "eyJ" + "a" * MAX_TOKEN_BYTES, "too_large")
    assert error.code == "TokenTooLarge" and keys.lookups == 0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer",
        "Bearer   ",
        "not-a-token",
        "a.b.c",
        "a.b",
        "a.b.c.d",
        "eyJ.eyJ.sig",
        b64(b"[1,2]") + "." + b64(b"{}") + ".c2ln",
        b64(b'{"alg":"RS256"}') + "." + b64(b"\xff\xfe") + ".c2ln",
        b64(b'{"alg":"RS256"}') + "." + b64(b"[" * 5000 + b"]" * 5000) + ".c2ln",
        b64(b'{"alg":"RS256","kid":7}') + "." + b64(b"{}") + ".c2ln",
        "eyJ+/=.x.y",
        "Basic dXNlcjpwYXNz",
        "/var/run/secrets/token",
        "eyJhbGciOiJSUzI1NiJ9.e\udcff.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.éé.c2ln",
    ],
)
async def test_garbage_is_401_malformed(value: str) -> None:
    """Anything that is not a JWT gets 401 with a message, never a traceback."""
    verifier, _, _ = setup()
    with pytest.raises(PodTokenError) as caught:
        await verifier.verify(value)
    assert caught.value.reason in ("malformed", "issuer", "algorithm")
    assert caught.value.status in (401, 403)


async def test_missing_token_has_its_own_code() -> None:
    """An empty Authorization value says the token is missing and how to mount one."""
    verifier, _, _ = setup()
    with pytest.raises(PodTokenError) as caught:
        await verifier.verify("Bearer ")
    assert (caught.value.status, caught.value.code) == (401, "MissingToken")
    with pytest.raises(PodTokenError) as caught:
        await verifier.verify("bearer")
    assert caught.value.code == "MissingToken"
    assert "projected service-account token" in str(caught.value)


async def test_es256_keys_work() -> None:
    """EC (P-256, ES256) issuer keys verify ES256 tokens."""
    clock = FakeClock()
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "ec-1", "use": "sig"})
    keys = StaticKeys({"keys": [jwk]})
    verifier = PodTokenVerifier(keys, URL, AUDIENCE, clock)
    now = int(clock.now().timestamp())
    claims = {"iss": URL, "aud": AUDIENCE, "sub": SUBJECT, "exp": now + 600, "nbf": now}
    token = jwt.encode(claims, private, algorithm="ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(token)).service_account == "api"
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, other, algorithm="ES256", headers={"kid": "ec-1"})
    await refused(verifier, forged, "signature")


async def test_cache_hit_costs_no_key_lookup_or_signature_check() -> None:
    """A token verified once is served from the cache: no key lookup the second time."""
    verifier, keys, clock = setup()
    token = mint(clock)
    first = await verifier.verify(token)
    assert keys.lookups == 1
    for _ in range(5):
        assert await verifier.verify(f"Bearer {token}") is first
    assert keys.lookups == 1 and verifier.cached == 1


async def test_expired_cache_entries_are_not_served() -> None:
    """A cached token past its exp (and leeway) is checked again, and refused."""
    verifier, keys, clock = setup(leeway=30)
    token = mint(clock, ttl=300)
    await verifier.verify(token)
    await clock.advance(300 + 30)
    await refused(verifier, token, "expired")
    assert keys.lookups == 2 and verifier.cached == 0


async def test_refused_token_is_never_cached() -> None:
    """A refused token is checked in full every time (never remembered as valid)."""
    verifier, keys, clock = setup()
    forger = OidcIssuer(URL)
    forger.kid = ISSUER.kid
    forged = mint(clock, forger)
    for _ in range(3):
        await refused(verifier, forged, "signature")
    assert keys.lookups == 3 and verifier.cached == 0


async def test_cache_is_bounded_least_recently_used() -> None:
    """Past cache_size the least recently used token is forgotten (and re-verified)."""
    verifier, keys, clock = setup(cache_size=2)
    a, b, c = (mint(clock, subject=f"system:serviceaccount:ns:sa-{n}") for n in range(3))
    await verifier.verify(a)
    await verifier.verify(b)
    await verifier.verify(a)  # a is now the most recent
    await verifier.verify(c)  # evicts b
    assert verifier.cached == 2 and keys.lookups == 3
    await verifier.verify(a)
    assert keys.lookups == 3
    await verifier.verify(b)
    assert keys.lookups == 4


async def test_rotating_a_key_out_revokes_tokens_it_verified() -> None:
    """A cached token stops working once the key that verified it is no longer the issuer's
    (a leaked key rotated out), though its exp is far away; it is then refused."""
    verifier, keys, clock = setup()
    token = mint(clock, ttl=86400)
    await verifier.verify(token)
    await verifier.verify(token)  # a cache hit
    keys.keys.clear()
    rotated = OidcIssuer(URL)
    keys.keys.update(parse_jwks(json.dumps(rotated.jwks()).encode(), "test", "fix it"))
    with pytest.raises(PodTokenError) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "unknown_key"
