"""The capability endpoint's tenancy: the path is the credential.

ECS's original container-credentials form, which every AWS SDK ever shipped understands
(some, like Ruby ``aws-sdk-core`` 3.168, understand nothing else): ``GET
http://169.254.170.2`` + ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, with no
``Authorization`` header. As the ECS agent does, each role is served at
``/v2/credentials/<id>`` where ``id`` is 256 random bits: whoever knows a role's id gets
that role, so an id is a secret like the auth token and is handled like one.

* One file per role, ``DIR/<role name>`` (role names are ``[A-Za-z0-9_-]``), holding only
  the id: created 0600 with ``O_EXCL`` if missing (so it survives restarts), read and
  followed with the auth token machinery (``auth_tokens``): the same ownership and mode
  checks, rotation picked up within a second, a deleted file revokes the id. ``DIR`` is
  created 0700 if missing. A file per role keeps each id one ``cat`` away:
  ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/v2/credentials/$(cat DIR/ROLE)``.
* An id is never logged: the daemon logs the file's path instead.
* ``find_role`` compares the presented id with every role's id (``hmac.compare_digest``)
  without stopping at a match, so the answer's timing says nothing about which role, if
  any, matched. An unknown id is a JSON 404, which spends the client's failure budget
  (``outputs.ratelimit``): guessing is rate-limited per client address.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.cache.refresher import Refresher
from sidecar.core.errors import AuthTokenError, NotFound
from sidecar.tenancy.auth_tokens import AuthToken, ensure_token_file
from sidecar.tenancy.grant import Grant

log = logging.getLogger(__name__)

#: Where roles are served; the id follows.
RELATIVE_PREFIX = "/v2/credentials/"
#: How messages name an id file.
ID_FILE = "capability id file"

UNKNOWN_ID_FIX = (
    "no credentials at this path: set AWS_CONTAINER_CREDENTIALS_RELATIVE_URI to "
    f"{RELATIVE_PREFIX}<id>, the id being the content of the role's file in the daemon's "
    "--relative-id-dir"
)


def relative_uri(capability_id: str) -> str:
    """The ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` value for an id."""
    return RELATIVE_PREFIX + capability_id


def find_role(presented: str, ids: Mapping[str, AuthToken]) -> str | None:
    """The role whose id ``presented`` is, or None; compares with every id, in constant time."""
    found = None
    for name, capability in ids.items():
        # No early exit: every id is compared whatever matched before.
        if capability.check(presented) and found is None:
            found = name
    return found


def _ensure_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        if not directory.is_dir():
            raise AuthTokenError(
                f"--relative-id-dir {directory} is not a directory; give a directory path"
            ) from None
    except OSError as exc:
        raise AuthTokenError(
            f"--relative-id-dir {directory} cannot be created ({exc.strerror}); does its "
            "parent exist and is it writable?"
        ) from None
    else:
        log.info(
            "created %s (mode 0700) for the capability ids",
            directory,
            extra={"event": "capability_dir_created", "path": str(directory)},
        )


async def load_ids(directory: Path, roles: Iterable[str]) -> dict[str, AuthToken]:
    """Each role's id from ``directory/<role>``, generated (0600) where missing."""
    _ensure_directory(directory)
    ids = {}
    for role in roles:
        path = directory / role
        if ensure_token_file(path, ID_FILE):
            log.info(
                "generated a new capability id for role %s in %s (mode 0600)",
                role,
                path,
                extra={"event": "capability_id_created", "role": role, "path": str(path)},
            )
        ids[role] = capability = await AuthToken.load(path, ID_FILE)
        if capability.readable_by_others:
            log.warning(
                "capability id file %s is readable by group or others; chmod 600 it",
                path,
                extra={"event": "capability_id_permissions", "path": str(path)},
            )
    if os.stat(directory).st_mode & 0o022:
        log.warning(
            "--relative-id-dir %s is writable by group or others; chmod 700 it",
            directory,
            extra={"event": "capability_dir_permissions", "path": str(directory)},
        )
    return ids


@dataclass(frozen=True)
class CapabilityRole:
    refresher: Refresher
    #: The file holding the role's id (compared in memory, followed by ``watch``).
    capability: AuthToken


class CapabilityTenancy:
    """``grant(id, _)``: the role whose id is in the path; no ``Authorization`` is needed."""

    def __init__(self, roles: Mapping[str, CapabilityRole]) -> None:
        self.roles = roles
        self._ids = {name: role.capability for name, role in roles.items()}

    async def grant(self, role: str | None, authorization: str | None) -> Grant:
        # ``role`` is the path's id. An Authorization header is ignored, as the ECS agent
        # ignores it: the id alone opens the role.
        name = find_role(role, self._ids) if role else None
        if name is None:
            raise NotFound(UNKNOWN_ID_FIX, "UnknownCredentialsId", log_event="capability_unknown")
        return Grant(self.roles[name].refresher, name)

    def readiness(self, role: str | None) -> tuple[bool, dict[str, Any]]:
        """Ready while every role holds valid credentials (an id names no role here)."""
        if role is not None:
            raise NotFound(UNKNOWN_ID_FIX, "UnknownCredentialsId")
        ready = all(r.refresher.ready for r in self.roles.values())
        return ready, {"ready": ready}
