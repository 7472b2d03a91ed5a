"""A token file, re-read on every fetch (a Kubernetes projected token is rewritten by the
kubelet at 80% of its lifetime through a ``..data`` symlink swap).

A regular file only, opened without blocking, bounded, read off the event loop
(``sidecar.core.safe_read``); it can also be watched cheaply for a change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from sidecar.core.clock import Clock
from sidecar.core.errors import TokenError
from sidecar.core.safe_read import FileIdentity, OffLoopReader, read_small_file
from sidecar.sources.base import DEFAULT_AUDIENCE, MAX_TOKEN_BYTES, WebIdentityToken, read_token


@dataclass(frozen=True)
class FileSource:
    """``--token-file``: the path of a file holding the token."""

    kind: ClassVar[str] = "file"
    path: Path
    audience: str = DEFAULT_AUDIENCE


def _fingerprint(raw: bytes, identity: FileIdentity) -> Hashable:
    """A token file as the watch compares it: what the file is and what it holds."""
    return (identity, hashlib.sha256(raw).digest())


class FileTokenSource:
    """A token file re-read on every fetch: a regular file, bounded, read off the loop."""

    def __init__(self, path: Path, clock: Clock, audience: str | None = None) -> None:
        self.path = path
        self._clock = clock
        self._audience = audience
        self._reader = OffLoopReader(f"token file {path}")
        # Looks run while fetches may too: each has its own reader, so neither sees the
        # other's read as a stuck one.
        self._watch_reader = OffLoopReader(f"token file {path} (watch)")
        self._last_read: Hashable | None = None

    def __repr__(self) -> str:
        return f"FileTokenSource({str(self.path)!r})"

    async def fingerprint(self) -> Hashable:
        """The file's identity and a digest of its content, or why it cannot be read (with
        its identity where it has one): read like ``fetch`` reads, bounded and off the loop.
        """
        origin = f"token file {self.path}"

        def fail(problem: str) -> TokenError:
            return TokenError(f"{origin} {problem}")

        def look() -> Hashable:
            try:
                raw, identity = read_small_file(self.path, fail, MAX_TOKEN_BYTES)
            except FileNotFoundError:
                return ("missing",)
            except TokenError as exc:
                try:
                    return ("unusable", str(exc), FileIdentity.of(os.stat(self.path)))
                except OSError:
                    return ("unusable", str(exc))
            return _fingerprint(raw, identity)

        return await self._watch_reader.run(look, fail)

    async def fetch(self) -> WebIdentityToken:
        origin = f"token file {self.path}"

        def fail(problem: str) -> TokenError:
            return TokenError(f"{origin} {problem}")

        def read() -> bytes:
            raw, identity = read_small_file(self.path, fail, MAX_TOKEN_BYTES)
            # What this attempt sent: STS refusing it is only news once the file differs.
            self._last_read = _fingerprint(raw, identity)
            return raw

        self._last_read = None
        try:
            raw = await self._reader.run(read, fail)
        except FileNotFoundError:
            raise TokenError(f"{origin} does not exist (is the volume mounted?)") from None
        return read_token(raw, origin, self._clock.now(), self._audience)

    def last_read(self) -> Hashable | None:
        return self._last_read
