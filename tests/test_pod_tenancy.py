"""PodTenancy: a pod's token is verified, its service account's association found, and
its identity taken from (or added to) the pool; refusals never reach the cache or STS."""

from __future__ import annotations

import gc
import json
import logging
import random
import tomllib
import weakref
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.cache.pool import Entry, Pool
from sidecar.cache.refresher import Refresher
from sidecar.config import RefreshPolicy
from sidecar.config.model import RoleConfig
from sidecar.core.credentials import Credentials
from sidecar.core.errors import Forbidden, NotFound, Refusal, Unauthenticated
from sidecar.core.metrics import Metrics
from sidecar.devmode.issuer import OidcIssuer
from sidecar.sources.base import TokenSource
from sidecar.sources.presented import PresentedTokenSource
from sidecar.tenancy.associations import Associations, parse_associations
from sidecar.tenancy.jwks import VerificationKey, parse_jwks
from sidecar.tenancy.pod_tokens import PodTokenError, PodTokenVerifier
from sidecar.tenancy.pods import IdentityKey, PodTenancy
from tests.fakes import FakeClock, make_credentials, settle

URL = "https://oidc.example.com/cluster-1"
AUDIENCE = "sts.amazonaws.com"
ISSUER = OidcIssuer(URL)
ASSOCIATIONS = """
[[associations]]
namespace = "payments"
service_account = "api"
role_arn = "arn:aws:iam::111122223333:role/payments-api"

[[associations]]
namespace = "builds"
service_account = "ci"
role_arn = "arn:aws:iam::111122223333:role/builds-ci"
"""


class Keys:
    def __init__(self) -> None:
        self.keys: dict[str | None, VerificationKey] = parse_jwks(
            json.dumps(ISSUER.jwks()).encode(), "test", "fix it"
        )
        self.ready = True

    async def load(self) -> None:
        return None

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        return self.keys.get(kid)

    def known(self, kid: str | None) -> VerificationKey | None:
        return self.keys.get(kid)


class Sts:
    """An exchanger that reads the presented token (as the real chain does) and records
    which token each exchange used."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tokens: list[str] = []

    def drop_cached(self) -> None:
        return None

    async def exchange(self, tokens: TokenSource) -> Credentials:
        token = await tokens.fetch()
        self.tokens.append(token.value)
        return make_credentials(self.clock.true_now() + timedelta(hours=1), len(self.tokens))


def associations(text: str) -> Associations:
    return parse_associations(tomllib.loads(text), AUDIENCE, "associations.toml")


class Node:
    """A PodTenancy wired like the node agent's, on a fake clock, with a recording STS."""

    def __init__(self, max_size: int | None = None) -> None:
        self.clock = FakeClock()
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.sts = Sts(self.clock)
        self.current = associations(ASSOCIATIONS)
        self.built: list[tuple[RoleConfig, PresentedTokenSource, str]] = []
        self.keys = Keys()
        self.pool: Pool[IdentityKey] = Pool(self.clock, 3600, max_size, self._evicted)
        self.tenancy = PodTenancy(
            PodTokenVerifier(self.keys, URL, AUDIENCE, self.clock),
            lambda: self.current,
            self.pool,
            self._build,
            self.metrics,
            self.clock,
            keys_ready=lambda: self.keys.ready,
        )

    def _evicted(self, key: IdentityKey, entry: Entry, reason: str) -> None:
        self.tenancy.forget(key, entry, reason)

    def _build(self, role: RoleConfig, source: PresentedTokenSource, namespace: str) -> Refresher:
        self.built.append((role, source, namespace))
        return Refresher(
            role.name,
            self.sts,
            source,
            role.duration,
            RefreshPolicy(),
            self.clock,
            self.metrics,
            random.Random(1),
        )

    def token(
        self,
        namespace: str = "payments",
        account: str = "api",
        ttl: float = 3600,
        issuer: OidcIssuer = ISSUER,
        **kwargs: Any,
    ) -> str:
        return issuer.mint(
            f"system:serviceaccount:{namespace}:{account}",
            ttl=ttl,
            now=self.clock.now().timestamp(),
            **kwargs,
        )

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"credential_sidecar_{name}", labels) or 0.0


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    node = Node()
    yield node
    await node.pool.close()


async def test_missing_authorization_is_401(node: Node) -> None:
    """No Authorization header: 401 MissingAuthorization saying where the token comes from."""
    for missing in (None, ""):
        with pytest.raises(Unauthenticated) as caught:
            await node.tenancy.grant(None, missing)
        assert caught.value.status == 401
        assert caught.value.json_code == "MissingAuthorization"
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" in str(caught.value)
    assert node.sample("pod_token_refusals_total", reason="missing") == 2
    assert node.built == [] and len(node.pool) == 0


async def test_named_roles_do_not_exist(node: Node) -> None:
    """/role/NAME is a 404 on the node agent, before any token work."""
    with pytest.raises(NotFound):
        await node.tenancy.grant("payments-api", node.token())


async def test_no_association_is_403_naming_namespace_and_service_account(node: Node) -> None:
    """A valid token of a service account without an association: 403 NoAssociation naming
    the namespace, the service account and the file to edit; nothing cached."""
    with pytest.raises(Forbidden) as caught:
        await node.tenancy.grant(None, node.token("payments", "worker"))
    error = caught.value
    assert (error.status, error.json_code, error.reason) == (403, "NoAssociation", "no_association")
    message = str(error)
    assert "service account worker in namespace payments" in message
    assert "associations file" in message and "/etc" not in message  # no path to pods
    assert node.sample("pod_token_refusals_total", reason="no_association") == 1
    assert node.built == [] and len(node.pool) == 0


@pytest.mark.parametrize(
    ("make", "reason", "status"),
    [
        (lambda n: n.token(ttl=-600), "expired", 401),
        (lambda n: n.token(audience="someone-else"), "audience", 403),
        (lambda n: n.token(issuer=OidcIssuer("https://other.example.com")), "issuer", 403),
        (lambda n: forged(n), "signature", 401),
        (lambda n: "not-a-token", "malformed", 401),
    ],
)
async def test_refused_tokens_reach_neither_cache_nor_sts(
    node: Node, make: Any, reason: str, status: int
) -> None:
    """Expired, wrong-audience, wrong-issuer, forged and malformed tokens are refused with
    their status and counted by reason; no identity is created and STS is never called."""
    with pytest.raises(PodTokenError) as caught:
        await node.tenancy.grant(None, make(node))
    assert (caught.value.reason, caught.value.status) == (reason, status)
    await settle()
    assert node.sample("pod_token_refusals_total", reason=reason) == 1
    assert node.built == [] and len(node.pool) == 0 and node.sts.tokens == []
    assert node.sample("identity_lookups_total", namespace="payments", result="miss") == 0


def forged(node: Node) -> str:
    """Signed by another key under our issuer's kid."""
    impostor = OidcIssuer(URL)
    impostor.kid = ISSUER.kid
    return node.token(issuer=impostor)


async def test_first_request_misses_then_pods_of_the_account_hit(node: Node) -> None:
    """The first request of an identity creates it (one exchange); other pods of the same
    service account share it; metrics count one miss and the hits, by namespace."""
    first = await node.tenancy.grant(None, node.token())
    assert first.role == "payments-api"
    assert first.subject == "system:serviceaccount:payments:api"
    await settle()
    assert first.refresher.ready
    for _ in range(3):
        again = await node.tenancy.grant(None, f"Bearer {node.token()}")
        assert again.refresher is first.refresher
    assert len(node.built) == 1 and len(node.sts.tokens) == 1
    assert node.sample("identity_lookups_total", namespace="payments", result="miss") == 1
    assert node.sample("identity_lookups_total", namespace="payments", result="hit") == 3
    assert node.sample("identities", namespace="payments") == 1
    await node.pool.close()


async def test_concurrent_first_requests_share_one_exchange(node: Node) -> None:
    """A storm of first requests of one identity builds one refresher and exchanges once."""
    tokens = [node.token(jti=str(i)) for i in range(20)]
    grants = [await node.tenancy.grant(None, token) for token in tokens]
    await settle()
    assert len({id(g.refresher) for g in grants}) == 1
    assert len(node.built) == 1 and len(node.sts.tokens) == 1
    await node.pool.close()


async def test_each_service_account_gets_its_own_role(node: Node) -> None:
    """Two service accounts: two identities, two roles, two exchanges, each with its own
    pod's token."""
    api_token, ci_token = node.token("payments", "api"), node.token("builds", "ci")
    api = await node.tenancy.grant(None, api_token)
    ci = await node.tenancy.grant(None, ci_token)
    await settle()
    assert (api.role, ci.role) == ("payments-api", "builds-ci")
    assert api.refresher is not ci.refresher
    assert sorted(node.sts.tokens) == sorted([api_token, ci_token])
    assert node.sample("identities", namespace="payments") == 1
    assert node.sample("identities", namespace="builds") == 1
    await node.pool.close()


async def test_the_latest_token_seen_is_the_one_exchanged(node: Node) -> None:
    """Every request offers its token to the identity's source, which keeps the latest:
    a later refresh uses it, even where an earlier pod's token lived longer."""
    await node.tenancy.grant(None, node.token(ttl=1800))
    source = node.built[0][1]
    await settle()
    await node.tenancy.grant(None, node.token(ttl=86400))  # a pod asking for a long token
    latest = node.token(ttl=3000)
    await node.tenancy.grant(None, latest)
    assert (await source.fetch()).value == latest
    # The identity's next refresh (before the credentials expire) uses it.
    await node.clock.advance(3600)
    assert len(node.sts.tokens) >= 2
    assert node.sts.tokens[-1] == latest
    await node.pool.close()


async def test_keys_not_loaded_is_503_and_not_ready(node: Node) -> None:
    """Before the issuer's keys are loaded: /readyz says not ready, and a token is refused
    with 503 (retry), not as forged."""
    node.keys.ready = False
    node.keys.keys = {}
    ready, body = node.tenancy.readiness(None)
    assert not ready and body["issuer_keys_loaded"] is False
    with pytest.raises(Refusal) as caught:
        await node.tenancy.grant(None, node.token())
    assert caught.value.status == 503
    node.keys.ready = True
    ready, body = node.tenancy.readiness(None)
    assert ready and body["associations"] == 2 and body["identities"] == 0


async def test_a_changed_association_prunes_only_its_identities(node: Node) -> None:
    """After a reload, identities whose association changed or went are dropped; the
    others keep their refresher (no new STS call)."""
    api = await node.tenancy.grant(None, node.token("payments", "api"))
    ci = await node.tenancy.grant(None, node.token("builds", "ci"))
    await settle()
    assert len(node.sts.tokens) == 2
    node.current = associations(ASSOCIATIONS.replace("role/builds-ci", "role/builds-ci-v2"))
    assert node.tenancy.prune() == 1
    await settle()
    assert len(node.pool) == 1
    assert (await node.tenancy.grant(None, node.token("payments", "api"))).refresher is (
        api.refresher
    )
    ci_again = await node.tenancy.grant(None, node.token("builds", "ci"))
    await settle()
    assert ci_again.refresher is not ci.refresher and ci_again.role == "builds-ci-v2"
    assert len(node.sts.tokens) == 3
    assert node.sample("identity_evictions_total", reason="association") == 1
    # A removed association: its identity goes, and its pods are refused.
    node.current = associations(ASSOCIATIONS.split("\n\n")[0])  # payments/api only
    assert node.tenancy.prune() == 1
    with pytest.raises(Forbidden):
        await node.tenancy.grant(None, node.token("builds", "ci"))
    assert node.sample("identities", namespace="builds") == 0
    assert node.sample("identities", namespace="payments") == 1
    await node.pool.close()


async def test_evicted_identities_leave_the_metrics_and_come_back() -> None:
    """A size eviction decrements the namespace's identity gauge and counts the reason;
    the evicted identity is created again on its next request."""
    node = Node(max_size=1)
    await node.tenancy.grant(None, node.token("payments", "api"))
    await settle()
    await node.tenancy.grant(None, node.token("builds", "ci"))
    await settle()
    assert len(node.pool) == 1
    assert node.sample("identities", namespace="payments") == 0
    assert node.sample("identities", namespace="builds") == 1
    assert node.sample("identity_evictions_total", reason="size") == 1
    await node.tenancy.grant(None, node.token("payments", "api"))
    await settle()
    assert len(node.built) == 3 and len(node.sts.tokens) == 3
    await node.pool.close()
    assert node.sample("identities", namespace="payments") == 0
    assert node.sample("identities", namespace="builds") == 0


async def test_an_evicted_identity_is_freed_while_its_token_stays_cached() -> None:
    """Eviction frees the identity (refresher, credentials) although the verifier still
    caches the pod's token, and a later request of that token builds it again."""
    node = Node(max_size=1)
    token = node.token("payments", "api")
    first = await node.tenancy.grant(None, token)
    await settle()
    snap = first.refresher.servable()
    assert snap is not None
    gone = weakref.ref(snap)  # its credentials: held by the refresher alone
    del first, snap
    await node.tenancy.grant(None, node.token("builds", "ci"))  # evicts payments/api
    await settle()
    gc.collect()
    assert gone() is None
    again = await node.tenancy.grant(None, token)
    assert again.refresher in [e.refresher for _, e in node.pool.items()]
    await node.pool.close()


async def test_an_eviction_is_logged_with_its_subject_and_reason(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """Dropping an identity logs one readable line with the subject and the reason as
    fields (the line must format: a broken one is lost to a logging error)."""
    await node.tenancy.grant(None, node.token("payments", "api"))
    await settle()
    node.current = associations("")
    with caplog.at_level(logging.INFO, logger="sidecar.tenancy.pods"):
        assert node.tenancy.prune() == 1
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "identity_evicted"]
    assert record.subject == "system:serviceaccount:payments:api"  # type: ignore[attr-defined]
    assert record.reason == "association"  # type: ignore[attr-defined]
    assert "system:serviceaccount:payments:api" in record.getMessage()
    assert "association" in record.getMessage()


async def test_an_identity_whose_token_expired_recovers_on_the_next_pod_token(
    node: Node,
) -> None:
    """When the only token seen has expired by the identity's refresh, the refresh fails
    (no STS call with an expired token); the next pod request's token is used within
    seconds, not after the backoff."""
    grant = await node.tenancy.grant(None, node.token(ttl=600))
    await settle()
    assert len(node.sts.tokens) == 1
    await node.clock.advance(40 * 60)  # the refresh (about 25 min in) found it expired
    assert len(node.sts.tokens) == 1 and grant.refresher.consecutive_failures > 0
    fresh = node.token(ttl=3600)
    await node.tenancy.grant(None, fresh)
    await node.clock.advance(5)
    assert node.sts.tokens[1:] == [fresh]
