"""The sidecar's tenancy: a fixed set of roles, each opened by its own auth token (or the
server-wide one), compared in constant time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.cache.refresher import Refresher
from sidecar.core.errors import Forbidden, NotFound, Unauthenticated
from sidecar.tenancy.auth_tokens import AuthToken
from sidecar.tenancy.grant import Grant

MISSING_AUTH_FIX = (
    "send the auth token in the Authorization header: set "
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to the token file and, for older "
    "SDKs that read only the plain variable, AWS_CONTAINER_AUTHORIZATION_TOKEN "
    "to the same token"
)


@dataclass(frozen=True)
class StaticRole:
    refresher: Refresher
    #: None only with --insecure-no-auth for a role without its own token.
    auth: AuthToken | None


class StaticTenancy:
    def __init__(self, roles: Mapping[str, StaticRole], default: str | None) -> None:
        self.roles = roles
        self.default = default

    @property
    def open_roles(self) -> bool:
        """True if some role needs no auth token (then DNS rebinding must be refused)."""
        return any(r.auth is None for r in self.roles.values())

    def _role(self, name: str | None) -> tuple[str, StaticRole]:
        if name is None:
            if self.default is None:
                raise NotFound(
                    "no default role is configured: use /v1/credentials/<role>",
                    "NoDefaultRole",
                )
            name = self.default
        role = self.roles.get(name)
        if role is None:
            raise NotFound(f"no role named {name!r} is configured", "UnknownRole")
        return name, role

    async def grant(self, role: str | None, authorization: str | None) -> Grant:
        name, entry = self._role(role)
        if entry.auth is not None:
            if authorization is None:
                raise Unauthenticated(
                    MISSING_AUTH_FIX, "MissingAuthorization", log_event="auth_missing", role=name
                )
            if not entry.auth.check(authorization):
                raise Forbidden(
                    f"the Authorization header does not match the auth token of role {name}",
                    log_event="auth_denied",
                    role=name,
                )
        return Grant(entry.refresher, name)

    def readiness(self, role: str | None) -> tuple[bool, dict[str, Any]]:
        """Ready while every role (or the one named) holds valid credentials."""
        if role is not None and role not in self.roles:
            raise NotFound(f"no role named {role!r} is configured", "UnknownRole")
        statuses = [e.refresher.status() for n, e in self.roles.items() if role in (None, n)]
        ready = all(s.ready for s in statuses)
        roles = {
            s.role: {
                "ready": s.ready,
                "seconds_until_expiry": s.seconds_until_expiry,
                "consecutive_failures": s.consecutive_failures,
            }
            for s in statuses
        }
        return ready, {"ready": ready, "roles": roles}
