"""A role as a chain of hops: web identity first, then AssumeRole signed by the previous hop.

``ChainExchanger`` keeps the first hop's credentials and re-runs only the later hops while
they have life left, so a chained role stays fresh without a new web-identity token (a
GitHub token lives 5 minutes; the first hop can live 12 hours). A single-hop role is a
chain of one. When a later hop refuses the kept credentials (expired, or revoked with
"revoke active sessions"), they are dropped and the chain restarts from the web identity
at once; ``drop_cached`` (SIGHUP) forces the same.

Session names (and source identities) can be templates of token claims (``{sub}``,
``{repository}``, ``{run_id}``) or of the previous hop (``{previous_session}``), sanitised
to STS's rules: 2..64 characters of ``[A-Za-z0-9_+=,.@-]``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from sidecar.config import RoleConfig
from sidecar.core.clock import Clock
from sidecar.core.credentials import Credentials
from sidecar.core.errors import AccountNotAllowedError, Disposition, SidecarError, StsError
from sidecar.exchange.diagnosis import caller_rejected, explain
from sidecar.exchange.sts import StsClient
from sidecar.sources.base import TokenClaims, TokenSource

log = logging.getLogger(__name__)

_INVALID = re.compile(r"[^A-Za-z0-9_+=,.@-]")
#: Reuse the first hop while it has at least this long left.
FIRST_HOP_REUSE_MARGIN = 600.0


class TemplateError(SidecarError):
    """A session-name template names something the token does not have."""

    disposition = Disposition.FATAL


def sanitize_session_name(text: str) -> str:
    """Make ``text`` a valid RoleSessionName: replace what STS refuses, cut, pad."""
    name = _INVALID.sub("-", text)[:64]
    return name if len(name) >= 2 else name.ljust(2, "-")


def render(
    template: str, claims: TokenClaims | None, previous_session: str | None, role: str
) -> str:
    if "{" not in template:
        return template
    values: dict[str, Any] = dict(claims.other) if claims else {}
    if previous_session is not None:
        values["previous_session"] = previous_session
    try:
        text = template.format_map({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        available = ", ".join(sorted(values)) or "none"
        raise TemplateError(
            f"role {role}: the template {template!r} uses {exc.args[0]!r}, which the token "
            f"does not have (it has: {available})"
        ) from None
    return sanitize_session_name(text)


def session_of(assumed_role_arn: str) -> str:
    """``arn:aws:sts::1:assumed-role/role/session`` -> ``session``."""
    return assumed_role_arn.rsplit("/", 1)[-1]


def _chained_hint(role: RoleConfig, number: int, code: str) -> str | None:
    """What to check when hop ``number`` (2 or later) of ``role`` is refused with ``code``."""
    hop, previous = role.hops[number - 1], role.hops[number - 2]
    if code not in ("AccessDenied", "AccessDeniedException"):
        return None
    return (
        f"hop {number}: the trust policy of {hop.role_arn} must allow sts:AssumeRole "
        "(and sts:TagSession / sts:SetSourceIdentity when tags or a source identity "
        f"are set) for the previous hop's role {previous.role_arn}"
    )


class ChainExchanger:
    """Produces the final hop's credentials for one role."""

    def __init__(self, role: RoleConfig, sts: StsClient, clock: Clock) -> None:
        self.role = role
        self._sts = sts
        self._clock = clock
        self._first: Credentials | None = None
        self._claims: TokenClaims | None = None
        #: Which token the last exchange used (its hash), so a new one is logged once.
        self._token_seen: int | None = None

    def _first_hop_usable(self) -> bool:
        if self._first is None or len(self.role.hops) == 1:
            return False
        left = (self._first.expiration - self._clock.now()).total_seconds()
        return left > FIRST_HOP_REUSE_MARGIN

    async def _web_identity(self, tokens: TokenSource) -> Credentials:
        token = await tokens.fetch()
        seen = hash(token.value)
        if seen != self._token_seen:
            log.info(
                "using web-identity token from %s",
                token.origin,
                extra={
                    "event": "token_read",
                    "role": self.role.name,
                    "iss": token.claims.issuer,
                    "sub": token.claims.subject,
                    "aud": ",".join(token.claims.audience),
                    "exp": token.claims.expires_text,
                },
            )
        self._token_seen = seen
        # Later hops' templates need the claims; a single hop (the node agent's thousands
        # of identities) need not keep ~1 KiB of decoded token each.
        self._claims = token.claims if len(self.role.hops) > 1 else None
        hop = self.role.hops[0]
        name = render(
            hop.session_name or self.role.default_session_name, token.claims, None, self.role.name
        )
        try:
            creds = await self._sts.assume_role_with_web_identity(hop, name, token.value)
        except StsError as exc:
            hint = explain(exc.code, exc.message, hop.role_arn, token.claims)
            raise exc.explained(hint) from None
        self._check_account(creds)
        return creds

    def _check_account(self, creds: Credentials) -> None:
        allowed = self.role.allowed_accounts
        account = creds.account_id
        if allowed and account not in allowed:
            raise AccountNotAllowedError(
                f"role {self.role.name}: STS returned credentials for account {account or '?'} "
                f"({creds.assumed_role_arn}), which is not in allowed_accounts "
                f"({', '.join(allowed)}); refusing to serve them"
            )

    def drop_cached(self) -> None:
        self._first = None

    async def exchange(self, tokens: TokenSource) -> Credentials:
        reused = self._first_hop_usable()
        try:
            return await self._run_chain(tokens, reused)
        except StsError as exc:
            if not caller_rejected(exc):
                raise
            # The kept first hop may be dead (revoked, expired early): never retry with it.
            self._first = None
            if not reused:
                raise
            log.warning(
                "role %s: a later hop refused the kept first-hop credentials (%s); "
                "restarting the chain from the web identity",
                self.role.name,
                exc.code,
                extra={"event": "chain_restarted", "role": self.role.name, "error_code": exc.code},
            )
            return await self._run_chain(tokens, False)

    async def _run_chain(self, tokens: TokenSource, reuse_first: bool) -> Credentials:
        if reuse_first:
            assert self._first is not None
            creds = self._first
        else:
            creds = self._first = await self._web_identity(tokens)
        for number, hop in enumerate(self.role.hops[1:], start=2):
            previous = session_of(creds.assumed_role_arn)
            name = render(
                hop.session_name or "{previous_session}", self._claims, previous, self.role.name
            )
            source_identity = (
                render(hop.source_identity, self._claims, previous, self.role.name)
                if hop.source_identity
                else None
            )

            try:
                creds = await self._sts.assume_role(hop, name, source_identity, creds)
            except StsError as exc:
                raise exc.explained(_chained_hint(self.role, number, exc.code)) from None
            self._check_account(creds)
        return creds
