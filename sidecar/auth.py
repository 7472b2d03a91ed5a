"""The token clients must present in ``Authorization`` to get credentials.

SDKs send the token file's content verbatim (no ``Bearer`` prefix, no trimming), so the
file must not end with a newline; we generate it that way and refuse one that does.
The file is re-read when it changes (rotation), checked at most once a second.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from sidecar.errors import AuthTokenError

_RECHECK_SECONDS = 1.0
log = logging.getLogger(__name__)


def _describe(path: Path, problem: str) -> AuthTokenError:
    return AuthTokenError(f"auth token file {path}: {problem}")


def ensure_token_file(path: Path) -> bool:
    """Create ``path`` with 32 random bytes (URL-safe text), mode 0600, if it is missing.

    Returns True when it created the file. ``O_EXCL`` makes creation race-free: two
    daemons starting at once agree on one token.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise _describe(
            path, f"cannot create it ({exc.strerror}); does the directory exist and is it writable?"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return True


def read_token_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _describe(path, f"cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise _describe(path, "is not UTF-8 text") from None
    if not text:
        raise _describe(path, "is empty; delete it to have a random token generated")
    if text != text.strip():
        raise _describe(
            path,
            "has leading or trailing whitespace (often a final newline). SDKs send the file "
            "verbatim and the request fails; rewrite it with `printf %s TOKEN > FILE`",
        )
    if any(not (0x21 <= ord(ch) <= 0x7E) for ch in text):
        raise _describe(path, "must be printable ASCII without spaces (it becomes an HTTP header)")
    if len(text) < 16:
        raise _describe(path, f"holds a {len(text)}-character token; use at least 16 characters")
    return text


def loose_permissions(path: Path) -> bool:
    """True if group or others may read the file."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


class AuthToken:
    """Holds the expected token; ``check`` compares in constant time."""

    def __init__(self, path: Path, monotonic: Callable[[], float]) -> None:
        self.path = path
        self._monotonic = monotonic
        self._expected = read_token_file(path).encode()
        self._identity = self._stat_identity()
        self._checked_at = monotonic()

    def __repr__(self) -> str:
        return f"AuthToken(path={str(self.path)!r}, token=<SECRET>)"

    def _stat_identity(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        now = self._monotonic()
        if now - self._checked_at < _RECHECK_SECONDS:
            return
        self._checked_at = now
        identity = self._stat_identity()
        if identity is None or identity == self._identity:
            return
        try:
            self._expected = read_token_file(self.path).encode()
        except AuthTokenError as exc:
            # A half-written or broken new file: keep accepting the last good token.
            log.warning(
                "auth token file changed but is unusable, keeping the previous token: %s",
                exc,
                extra={"event": "auth_token_reload_failed"},
            )
            return
        log.info(
            "auth token file changed; now accepting the new token",
            extra={"event": "auth_token_reloaded", "path": str(self.path)},
        )
        self._identity = identity

    def check(self, presented: str | None) -> bool:
        self._maybe_reload()
        if presented is None:
            return False
        try:
            candidate = presented.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(candidate, self._expected)
