"""A token printed by a program run per fetch: no shell, its own process group killed as a
whole, output bounded, error output redacted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sidecar.core.bounded_command import run_bounded
from sidecar.core.clock import Clock
from sidecar.core.errors import TokenError
from sidecar.core.secret import redact
from sidecar.sources.base import DEFAULT_AUDIENCE, MAX_TOKEN_BYTES, WebIdentityToken, read_token

#: How much of a token command's error output is kept for the error message.
COMMAND_STDERR_KEPT = 4096


@dataclass(frozen=True)
class CommandSource:
    """``--token-command``: the program and its arguments, and how long it may run."""

    kind: ClassVar[str] = "command"
    argv: tuple[str, ...]
    timeout: float = 10.0
    audience: str = DEFAULT_AUDIENCE


class CommandTokenSource:
    """Runs ``argv`` (no shell, own process group, bounded output) per fetch; stdout: the token."""

    def __init__(
        self, argv: tuple[str, ...], timeout: float, clock: Clock, audience: str | None = None
    ) -> None:
        self.argv = argv
        self._timeout = timeout
        self._clock = clock
        self._audience = audience

    def __repr__(self) -> str:
        return f"CommandTokenSource({self.argv[0]!r})"

    async def fetch(self) -> WebIdentityToken:
        origin = f"token command {self.argv[0]}"

        def fail(problem: str) -> TokenError:
            return TokenError(f"{origin} {problem}")

        try:
            result = await run_bounded(
                self.argv, self._timeout, fail, MAX_TOKEN_BYTES, COMMAND_STDERR_KEPT
            )
        except OSError as exc:
            raise TokenError(f"{origin} cannot be started: {exc.strerror or exc}") from None
        if result.returncode != 0:
            # A helper run with -v or set -x may print its own bearer token: never ours to log.
            detail = redact(result.stderr_tail.decode(errors="replace").strip())[-300:]
            status = (
                f"was killed by signal {-result.returncode}"
                if result.returncode < 0
                else f"exited with status {result.returncode}"
            )
            raise TokenError(f"{origin} {status}: {detail or '(no error output)'}")
        return read_token(result.stdout, origin, self._clock.now(), self._audience)
