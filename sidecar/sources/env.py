"""A token in an environment variable (GitLab, CircleCI, Bitbucket): read once at startup,
never renewed, so it warns ahead of ``exp`` and fails clearly after it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from sidecar.core.clock import Clock
from sidecar.core.errors import Disposition, TokenExpiredError
from sidecar.sources.base import DEFAULT_AUDIENCE, WebIdentityToken, read_token

log = logging.getLogger(__name__)

#: Environment tokens: warn this long before they expire.
ENV_TOKEN_WARNING = 600


@dataclass(frozen=True)
class EnvSource:
    """``--token-env``: the name of the variable holding the token."""

    kind: ClassVar[str] = "env"
    env_var: str
    audience: str = DEFAULT_AUDIENCE


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
