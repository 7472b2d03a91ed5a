"""``credential-sidecar exec -- COMMAND``: serve credentials to one child process.

The daemon runs for exactly as long as the command: on a free loopback port, with a fresh
auth token in a private directory, and the child finds it through the standard
``AWS_CONTAINER_*`` variables. The child gets the role and only the role: everything an SDK
would prefer over container credentials (static keys, a profile, its own web-identity
settings, credential files: see ``aws_files``) is removed or replaced, and so is everything
the daemon itself used to get a web-identity token (the child must not be able to skip the
least-privilege chain by assuming the first hop itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
from collections.abc import Awaitable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from sidecar.cache.refresher import Refresher
from sidecar.config import Config
from sidecar.config.settings import CI_TOKEN_VARIABLES
from sidecar.core.fdlimit import restore_for_child
from sidecar.core.secret import Secret
from sidecar.outputs.aws_files import profile_settings, write_child_files
from sidecar.sources.base import DEFAULT_AUDIENCE, audiences_of
from sidecar.sources.env import EnvSource
from sidecar.tenancy.auth_tokens import read_token_file

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Variables that would make an SDK use something else than our endpoint, or conflict
#: with the ones we set (botocore tries web identity *before* container credentials).
SHADOWING = (
    # static keys, as botocore, Go, Ruby and PHP spell them
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "AMAZON_ACCESS_KEY_ID",
    "AMAZON_SECRET_ACCESS_KEY",
    "AMAZON_SESSION_TOKEN",
    # profiles and credential files (replaced by credential-free ones)
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CREDENTIAL_FILE",
    "BOTO_CONFIG",
    # web identity
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    # container credentials (replaced by ours)
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
#: Where a CI job's web-identity token comes from, or what mints one: never passed on,
#: whatever the daemon used. Any other variable holding a JWT for STS goes too (below).
TOKEN_VARIABLES = (
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",  # GitHub Actions
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "CIRCLE_OIDC_TOKEN",  # CircleCI v1 (the same issuer as v2)
    "CI_JOB_JWT",  # GitLab before id_tokens
    "CI_JOB_JWT_V1",
    "CI_JOB_JWT_V2",
    "SYSTEM_OIDCREQUESTURI",  # Azure Pipelines
    *CI_TOKEN_VARIABLES,
)
#: A variable this large holds no JWT worth decoding.
_MAX_JWT_CHARS = 64 * 1024
#: Handled by exec: before the child runs they stop exec; then they are passed on to it.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
#: What a terminal sends by itself to its whole foreground process group (Ctrl-C, Ctrl-\).
FROM_TERMINAL = (signal.SIGINT, signal.SIGQUIT)


@dataclass(frozen=True)
class ChildEndpoint:
    """How the child reaches the daemon."""

    url: str
    auth_token_file: str | None = None
    #: The token in ``auth_token_file``, for SDKs that read only the plain variable.
    auth_token: Secret | None = None


def loopback_url(url: str) -> str:
    """``url`` with an unspecified host (0.0.0.0, ::) replaced by loopback, which SDKs accept."""
    parts = urlsplit(url)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return url
    if not address.is_unspecified:
        return url
    host = "127.0.0.1" if address.version == 4 else "[::1]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=host + port))


def daemon_token_variables(config: Config) -> frozenset[str]:
    """Every variable the daemon's configuration reads a web-identity token from."""
    named = {role.token.env_var for role in config.roles if isinstance(role.token, EnvSource)}
    return frozenset({*TOKEN_VARIABLES, *named})


def is_sts_token(value: str, audiences: Collection[str]) -> bool:
    """True if ``value`` is a JWT addressed to one of ``audiences`` (decoded, not verified):
    with it, anyone could call AssumeRoleWithWebIdentity themselves."""
    if not value.startswith("eyJ") or len(value) > _MAX_JWT_CHARS or value.count(".") != 2:
        return False
    return bool(set(audiences_of(value) or ()) & set(audiences))


def child_environment(
    environ: Mapping[str, str],
    endpoint: ChildEndpoint,
    aws_files: Mapping[str, str],
    token_variables: Collection[str] = TOKEN_VARIABLES,
    sts_endpoint: str | None = None,
    default_region: str | None = None,
    sts_audiences: Collection[str] = (DEFAULT_AUDIENCE,),
) -> dict[str, str]:
    """The child's environment: ``environ`` without anything that could give it other
    credentials or a web-identity token (the daemon's, or any JWT for ``sts_audiences``),
    pointed at ``endpoint`` and at the credential-free ``aws_files``. Dev mode adds its STS
    endpoint and, if the user has no region anywhere, ``default_region``."""
    env = {
        k: v
        for k, v in environ.items()
        if k not in SHADOWING
        and k not in token_variables
        and not k.startswith("SIDECAR_")
        and not is_sts_token(v, sts_audiences)
    }
    env.update(aws_files)
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = loopback_url(endpoint.url)
    if endpoint.auth_token_file:
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = endpoint.auth_token_file
    if endpoint.auth_token:
        # Older SDKs (botocore < 1.34.41, AWS CLI v2 and Go SDKs as Debian 12 ships them,
        # Java v1) read only this one. It is the child's own credential to the daemon.
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = endpoint.auth_token.reveal()
    if sts_endpoint:  # dev mode: the child's own STS calls go to the emulator
        env["AWS_ENDPOINT_URL_STS"] = sts_endpoint
    if default_region:
        env.setdefault("AWS_REGION", environ.get("AWS_DEFAULT_REGION") or default_region)
        env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    return env


def prepare_environment(
    environ: Mapping[str, str],
    url: str,
    auth_token_file: str | None,
    config: Config,
    private: Path,
    dev_sts_url: str | None = None,
    dev_region: str | None = None,
) -> dict[str, str]:
    """Write the child's credential-free AWS files into ``private``; its environment.

    Raises ``AuthTokenError`` if the auth token file cannot be read back.
    """
    token_file = auth_token_file
    token = Secret(read_token_file(Path(token_file))[0]) if token_file else None
    settings = profile_settings(environ)
    region_known = "region" in settings or any(
        environ.get(name) for name in ("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    return child_environment(
        environ,
        ChildEndpoint(url, token_file, token),
        write_child_files(private, settings),
        daemon_token_variables(config),
        sts_endpoint=dev_sts_url,
        default_region=None if region_known else dev_region,
        sts_audiences={role.token.audience for role in config.roles},
    )


async def wait_ready(refresher: Refresher, seconds: float) -> bool:
    """True once the role holds credentials; False after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not refresher.ready:
        left = deadline - loop.time()
        if left <= 0:
            return False
        await refresher.wait_updated(min(left, 0.5))
    return True


def in_terminal_foreground() -> bool:
    """True if this process group is its controlling terminal's foreground group, which
    receives the terminal's SIGINT and SIGQUIT."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False  # no controlling terminal
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class ExecSignals:
    """exec's SIGTERM, SIGINT, SIGHUP and SIGQUIT handling, installed before anything waits.

    Before the child runs, the first of them stops exec: it cleans up (its private
    directory, the daemon) and exits 128+N. While the child runs, each reaches it exactly
    once. The child stays in exec's process group, so it can read the terminal; when that
    group is the terminal's foreground group, the terminal has already sent Ctrl-C (SIGINT)
    and Ctrl-\\ (SIGQUIT) to the child, and exec does not send them again: tools such as
    Terraform take a second interrupt as a forced abort. SIGTERM and SIGHUP, and SIGINT or
    SIGQUIT sent some other way (``kill``, no terminal), are passed on.
    """

    def __init__(self) -> None:
        #: The signal that stopped exec before the child ran.
        self.received: int | None = None
        self._stop = asyncio.Event()
        self._child: asyncio.subprocess.Process | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[ExecSignals]:
        loop = asyncio.get_running_loop()
        for signum in HANDLED:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield self
        finally:
            for signum in HANDLED:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        child = self._child
        if child is None:
            if self.received is None:
                self.received = signum
            self._stop.set()
        elif signum in FROM_TERMINAL and in_terminal_foreground():
            pass  # the terminal delivered it to the child already
        else:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    async def until_signal(self, awaitable: Awaitable[T]) -> T | None:
        """``awaitable``'s result, or None (and it is cancelled) if a signal stops exec first."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stop):
                task.cancel()
            await asyncio.wait({work, stop})
        return None if work.cancelled() else work.result()

    async def run_child(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        """Run ``argv`` to completion, passing signals on; its exit code (128+N if killed)."""
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=dict(env))
        except OSError as exc:
            log.error(
                "cannot run %s: %s", argv[0], exc.strerror or exc, extra={"event": "exec_failed"}
            )
            return 127
        restore_for_child(proc.pid)
        self._child = proc
        if self.received is not None:  # arrived while the child was being started
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.received)
        try:
            code = await proc.wait()
        finally:
            self._child = None
        return code if code >= 0 else 128 - code
