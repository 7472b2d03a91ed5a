"""``credential-sidecar exec -- COMMAND``: serve credentials to one child process.

The daemon runs for exactly as long as the command: on a free loopback port, with a fresh
auth token in a private directory, and the child finds it through the standard
``AWS_CONTAINER_*`` variables. Everything an SDK would prefer over container credentials
(static keys, a profile, its own web-identity settings) is removed from the child's
environment, so the child can only use the refreshed credentials.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping, Sequence

from sidecar.refresher import Refresher

log = logging.getLogger(__name__)

#: Variables that would make an SDK use something else than our endpoint, or conflict
#: with the ones we set (botocore tries web identity *before* container credentials).
SHADOWING = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
)
#: Forwarded to the child; the daemon stops when the child has exited.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def child_environment(
    environ: Mapping[str, str],
    url: str,
    auth_token_file: str | None,
    sts_endpoint: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in SHADOWING}
    env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = url
    env.pop("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", None)
    if auth_token_file:
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = auth_token_file
    if sts_endpoint:  # dev mode: the child's own STS calls go to the emulator
        env["AWS_ENDPOINT_URL_STS"] = sts_endpoint
        env.setdefault("AWS_REGION", "us-east-1")
        env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    return env


async def wait_ready(refresher: Refresher, seconds: float) -> bool:
    """True once the role holds credentials; False after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not refresher.ready:
        left = deadline - loop.time()
        if left <= 0:
            return False
        await refresher.wait_servable(min(left, 0.5))
    return True


async def run_child(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run ``argv`` to completion, forwarding signals; its exit code (128+N if killed)."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, env=dict(env))
    except OSError as exc:
        log.error("cannot run %s: %s", argv[0], exc.strerror or exc, extra={"event": "exec_failed"})
        return 127
    loop = asyncio.get_running_loop()
    for signum in FORWARDED:
        loop.add_signal_handler(signum, proc.send_signal, signum)
    try:
        code = await proc.wait()
    finally:
        for signum in FORWARDED:
            loop.remove_signal_handler(signum)
    return code if code >= 0 else 128 - code
