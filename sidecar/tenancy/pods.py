"""The node agent's tenancy: a pod proves who it is with its projected service-account
token, verified here before anything else, and gets the role its service account is
associated with.

Identities are (issuer, subject, role): every pod of a service account shares one
refresher, fed with the latest token any of them presented. A refused token never
reaches the cache or STS. A cache miss creates the refresher synchronously, so concurrent
first requests of one identity share it (and its single exchange).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.cache.pool import Entry, Pool
from sidecar.cache.refresher import Refresher
from sidecar.config.model import RoleConfig
from sidecar.core.clock import Clock
from sidecar.core.credentials import role_name
from sidecar.core.errors import Forbidden, NotFound, Refusal, Unauthenticated
from sidecar.core.metrics import Metrics
from sidecar.sources.presented import PresentedTokenSource
from sidecar.tenancy.associations import Association, Associations
from sidecar.tenancy.grant import Grant
from sidecar.tenancy.pod_tokens import PodIdentity

log = logging.getLogger(__name__)

#: (issuer, subject, role): one refresher, one STS session, shared by the account's pods.
IdentityKey = tuple[str, str, RoleConfig]


class PodVerifier(Protocol):
    async def verify(self, authorization: str) -> PodIdentity: ...


#: Builds the refresher of a new identity from its role and token source.
RefresherFactory = Callable[[RoleConfig, PresentedTokenSource, str], Refresher]


@dataclass(frozen=True, slots=True)
class _Identity:
    """A cached identity's token source and the grant its requests get."""

    source: PresentedTokenSource
    grant: Grant


@dataclass(frozen=True, slots=True)
class _Resolved:
    """Which identity a verified token was resolved to: good while the associations are
    still that table (held weakly: an old table is not kept alive by cached tokens) and
    the identity is still cached. It holds no refresher, so an evicted identity goes."""

    associations: weakref.ref[Associations]
    key: IdentityKey


class PodTenancy:
    def __init__(
        self,
        verifier: PodVerifier,
        associations: Callable[[], Associations],
        pool: Pool[IdentityKey],
        build: RefresherFactory,
        metrics: Metrics,
        clock: Clock,
        keys_ready: Callable[[], bool],
    ) -> None:
        self._clock = clock
        self._keys_ready = keys_ready
        self._verifier = verifier
        self._associations = associations
        self._pool = pool
        self._build = build
        self._metrics = metrics
        #: Every cached identity's source and grant; ``forget`` drops them with it.
        self._identities: dict[IdentityKey, _Identity] = {}
        # A cache hit's association lookup, done once per verified token: an entry lives
        # as long as the verifier keeps the token's PodIdentity.
        self._resolved: weakref.WeakKeyDictionary[PodIdentity, _Resolved] = (
            weakref.WeakKeyDictionary()
        )

    def forget(self, key: IdentityKey, entry: Entry, reason: str) -> None:
        """The pool dropped ``key`` (its ``on_evict``)."""
        self._identities.pop(key, None)
        self._metrics.identities.labels(entry.label).dec()
        if reason != "shutdown":
            self._metrics.identity_evictions.labels(reason).inc()
            log.info(
                "dropped identity %s (%s)",
                key[1],
                reason,
                extra={"event": "identity_evicted", "subject": key[1], "reason": reason},
            )

    def prune(self) -> int:
        """Drop identities whose association changed or went (after a reload)."""
        current = self._associations()
        stale = [
            key
            for key, _ in self._pool.items()
            if (found := _find(current, key[1])) is None or found.role != key[2]
        ]
        for key in stale:
            self._pool.remove(key, "association")
        return len(stale)

    async def grant(self, role: str | None, authorization: str | None) -> Grant:
        if role is not None:
            raise NotFound(
                "the node agent serves each pod the role of its service account at "
                "/v1/credentials; there are no named roles",
                "UnknownRole",
            )
        if not authorization:
            self._metrics.pod_token_refusals.labels("missing").inc()
            raise Unauthenticated(
                "send the pod's service-account token in the Authorization header: set "
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to the projected token's path",
                "MissingAuthorization",
                reason="missing",
                log_event="pod_token_missing",
            )
        try:
            pod = await self._verifier.verify(authorization)
        except Refusal as exc:
            self._metrics.pod_token_refusals.labels(exc.reason).inc()
            raise
        current = self._associations()
        resolved = self._resolved.get(pod)
        if resolved is not None and resolved.associations() is current:
            known = self._identities.get(resolved.key)
            if known is not None and self._pool.get(resolved.key) is known.grant.refresher:
                self._metrics.count_lookup(pod.namespace, hit=True)
                known.source.offer(pod.token, pod.expires_at)
                return known.grant
        association = current.find(pod.namespace, pod.service_account)
        if association is None:
            self._metrics.pod_token_refusals.labels("no_association").inc()
            raise Forbidden(
                f"service account {pod.service_account} in namespace {pod.namespace} has no "
                "role: add an association for it to the node agent's associations file",
                "NoAssociation",
                reason="no_association",
                log_event="no_association",
            )
        key: IdentityKey = (pod.issuer, pod.subject, association.role)
        refresher = self._pool.get(key)
        if refresher is None:
            self._metrics.count_lookup(pod.namespace, hit=False)
            source = PresentedTokenSource(pod.subject, self._clock, association.role.token.audience)
            source.offer(pod.token, pod.expires_at)
            refresher = self._build(association.role, source, pod.namespace)
            grant = Grant(refresher, role_name(association.role.role_arn), pod.subject)
            self._identities[key] = identity = _Identity(source, grant)
            self._pool.add(key, refresher, label=pod.namespace)
            self._metrics.identities.labels(pod.namespace).inc()
            log.info(
                "first request of %s: serving role %s",
                pod.subject,
                association.role.role_arn,
                extra={
                    "event": "identity_created",
                    "subject": pod.subject,
                    "role_arn": association.role.role_arn,
                    "issuer": pod.issuer,
                },
            )
        else:
            self._metrics.count_lookup(pod.namespace, hit=True)
            identity = self._identities[key]
            identity.source.offer(pod.token, pod.expires_at)
        self._resolved[pod] = _Resolved(weakref.ref(current), key)
        return identity.grant

    def readiness(self, role: str | None) -> tuple[bool, dict[str, Any]]:
        """Ready once the issuer's keys are loaded (listening is implied by answering)."""
        if role is not None:
            raise NotFound("the node agent has no named roles", "UnknownRole")
        ready = self._keys_ready()
        body = {
            "ready": ready,
            "issuer_keys_loaded": ready,
            "identities": len(self._pool),
            "associations": len(self._associations()),
        }
        return ready, body


def _find(associations: Associations, subject: str) -> Association | None:
    parts = subject.split(":")
    if len(parts) != 4:
        return None
    return associations.find(parts[2], parts[3])
