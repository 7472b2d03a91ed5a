"""The token clients must present in ``Authorization`` to get credentials.

SDKs send the token file's content verbatim (no ``Bearer`` prefix, no trimming), so the
file must not end with a newline; we generate it that way and refuse one that does.

The file holds a secret we *accept*, so it is read like one (``sidecar.core.safe_read``): a
regular file of at most 64 KiB, opened without blocking, owned by this daemon's user or
root and not writable by group or others; in a directory others can write to (``/tmp``)
a symlink is not followed, since anyone could have planted it.

``check`` only compares, in constant time, with the token in memory: the request
handler never touches the file. ``watch`` (a task the daemon owns) stats the file at
most once a second, off the event loop, and re-reads it when it changes (rotation):

* a changed file that fails a check keeps the last good token, and says why;
* a deleted file revokes the token: every request is refused until the file is back.
  Clients (SDKs) re-read the file for every request, so none can use it any more anyway,
  and deleting it is the one way to revoke a leaked token without a restart.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from sidecar.core.clock import Clock
from sidecar.core.errors import AuthTokenError
from sidecar.core.safe_read import (
    MAX_INPUT_BYTES,
    FileIdentity,
    OffLoopReader,
    others_can_write,
    read_small_file,
)

#: How often the file is checked for a change.
RECHECK_SECONDS = 1.0
log = logging.getLogger(__name__)


#: How messages name the file; the capability endpoint's id files are read the same way.
AUTH_TOKEN_FILE = "auth token file"  # noqa: S105 - a label, not a password


def _describe(path: Path, problem: str, what: str = AUTH_TOKEN_FILE) -> AuthTokenError:
    return AuthTokenError(f"{what} {path}: {problem}")


def ensure_token_file(path: Path, what: str = AUTH_TOKEN_FILE) -> bool:
    """Create ``path`` with 32 random bytes (URL-safe text), mode 0600, if it is missing.

    Returns True when it created the file. ``O_EXCL`` makes creation race-free (two
    daemons starting at once agree on one token) and, with ``O_NOFOLLOW``, never writes
    through a symlink someone planted in its place.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise _describe(
            path,
            f"cannot create it ({exc.strerror}); does the directory exist and is it writable?",
            what,
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return True


def read_token_file(path: Path, what: str = AUTH_TOKEN_FILE) -> tuple[str, FileIdentity]:
    """The token in ``path`` and what the file was, after every check (blocking).

    Raises ``AuthTokenError``, or ``FileNotFoundError`` for the caller to decide.
    """
    raw, identity = read_small_file(
        path, lambda problem: _describe(path, problem, what), MAX_INPUT_BYTES, strict=True
    )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _describe(path, "is not UTF-8 text", what) from None
    if not text:
        raise _describe(path, "is empty; delete it to have a random token generated", what)
    if text != text.strip():
        raise _describe(
            path,
            "has leading or trailing whitespace (often a final newline). SDKs send the file "
            "verbatim and the request fails; rewrite it with `printf %s TOKEN > FILE`",
            what,
        )
    if any(not (0x21 <= ord(ch) <= 0x7E) for ch in text):
        raise _describe(
            path, "must be printable ASCII without spaces (it becomes an HTTP header)", what
        )
    if len(text) < 16:
        raise _describe(
            path, f"holds a {len(text)}-character token; use at least 16 characters", what
        )
    return text, identity


def _stat_identity(path: Path) -> FileIdentity:
    # Where a symlink would not be followed when reading, look at the link itself.
    return FileIdentity.of(os.stat(path, follow_symlinks=not others_can_write(path.parent)))


class AuthToken:
    """Holds the expected token in memory; ``check`` compares in constant time."""

    def __init__(
        self,
        path: Path,
        token: str,
        identity: FileIdentity | None = None,
        what: str = AUTH_TOKEN_FILE,
    ) -> None:
        self.path = path
        self.what = what
        self._expected: bytes | None = token.encode()
        self._identity = identity
        self._reader = OffLoopReader(f"{what} {path}")
        self._last_problem: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> AuthToken:
        """Read ``path`` now, blocking (tests, tools); the daemon uses ``load``."""
        try:
            return cls(path, *read_token_file(path))
        except FileNotFoundError:
            raise _describe(path, "does not exist") from None

    @classmethod
    async def load(cls, path: Path, what: str = AUTH_TOKEN_FILE) -> AuthToken:
        """Read ``path`` off the event loop, with every check; ``AuthTokenError`` if unusable."""
        token = cls(path, "", what=what)
        try:
            text, identity = await token._reader.run(
                lambda: read_token_file(path, what), lambda problem: _describe(path, problem, what)
            )
        except FileNotFoundError:
            raise _describe(path, "does not exist", what) from None
        token._expected, token._identity = text.encode(), identity
        return token

    def __repr__(self) -> str:
        return f"AuthToken(path={str(self.path)!r}, token=<SECRET>)"

    @property
    def readable_by_others(self) -> bool:
        """True if group or others may read the file (worth a warning, not a refusal)."""
        return self._identity is not None and bool(self._identity.mode & 0o077)

    def check(self, presented: str | None) -> bool:
        """Whether ``presented`` is the token: memory only, constant time, never the file."""
        expected = self._expected
        if presented is None or expected is None:
            return False
        try:
            candidate = presented.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(candidate, expected)

    async def watch(self, clock: Clock) -> None:
        """Follow changes to the file until cancelled (a task the daemon owns)."""
        while True:
            await clock.sleep(RECHECK_SECONDS)
            await self.poll()

    async def poll(self) -> None:
        """Re-read the file if it changed since the last look (off the event loop)."""

        def fail(problem: str) -> AuthTokenError:
            return _describe(self.path, problem, self.what)

        try:
            identity = await self._reader.run(lambda: _stat_identity(self.path), fail)
        except FileNotFoundError:
            self._revoke()
            return
        except AuthTokenError as exc:
            self._problem(str(exc))
            return
        except OSError as exc:
            self._problem(str(fail(f"cannot be checked ({exc.strerror})")))
            return
        if identity == self._identity:
            return
        try:
            text, identity = await self._reader.run(
                lambda: read_token_file(self.path, self.what), fail
            )
        except FileNotFoundError:
            self._revoke()
            return
        except AuthTokenError as exc:
            # A half-written, broken or planted file: keep accepting the last good token,
            # and do not read it again until it changes again.
            self._identity = identity
            self._problem(str(exc))
            return
        self._expected, self._identity, self._last_problem = text.encode(), identity, None
        log.info(
            "%s changed; now accepting the new token",
            self.what,
            extra={"event": "auth_token_reloaded", "path": str(self.path)},
        )

    def _revoke(self) -> None:
        if self._expected is None:
            return
        self._expected = self._identity = None
        log.warning(
            "%s %s was deleted: refusing every request until it is back",
            self.what,
            self.path,
            extra={"event": "auth_token_deleted", "path": str(self.path)},
        )

    def _problem(self, message: str) -> None:
        if message == self._last_problem:
            return  # said once per problem, not once a second
        self._last_problem = message
        kept = "keeping the previous token" if self._expected else "refusing every request"
        log.warning(
            "%s changed but is unusable, %s: %s",
            self.what,
            kept,
            message,
            extra={"event": "auth_token_reload_failed", "path": str(self.path)},
        )


async def load_auth(path: Path) -> AuthToken:
    """The auth token in ``path`` (generated if missing), read with every check."""
    if ensure_token_file(path):
        log.info(
            "generated a new auth token in %s (mode 0600)",
            path,
            extra={"event": "auth_token_created", "path": str(path)},
        )
    auth = await AuthToken.load(path)
    if auth.readable_by_others:
        log.warning(
            "auth token file %s is readable by group or others; chmod 600 it",
            path,
            extra={"event": "auth_token_permissions", "path": str(path)},
        )
    return auth
