"""What every tenancy model answers: which refresher a request may read, or why not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.cache.refresher import Refresher


@dataclass(frozen=True)
class Grant:
    """A request's right to one identity's credentials."""

    refresher: Refresher
    #: The role (sidecar) or association's role name (node agent): a metrics label.
    role: str
    #: Who asked, for the audit log (a service account), if the tenancy knows.
    subject: str | None = None


class Tenancy(Protocol):
    async def grant(self, role: str | None, authorization: str | None) -> Grant:
        """The identity a request for ``role`` (None: the default) with this
        ``Authorization`` header may have; raises a ``Refusal`` (404/401/403/503)."""
        ...

    def readiness(self, role: str | None) -> tuple[bool, dict[str, Any]]:
        """Ready or not, and the details ``/readyz`` shows; raises ``NotFound``."""
        ...
