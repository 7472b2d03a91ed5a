"""``serve --dev``: a local OIDC issuer and STS emulator, wired up as the daemon's upstream.

Everything lives in a private temporary directory (0700) removed on exit. The issuer and
the emulator share one loopback HTTP listener: the emulator at ``/``, the issuer's
discovery document and JWKS under ``/oidc``. The token file is rewritten kubelet-style
at 80% of the token's lifetime, so dev mode also exercises token rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from sidecar.config import DevSupply
from sidecar.core.errors import ConfigError
from sidecar.devmode.issuer import OidcIssuer
from sidecar.devmode.sts_emulator import StsEmulator
from sidecar.devmode.token_writer import ProjectedTokenWriter

log = logging.getLogger(__name__)

DEV_ROLE_ARN = "arn:aws:iam::123456789012:role/credential-sidecar-dev"
DEV_SUBJECT = "system:serviceaccount:dev:credential-sidecar"
DEV_TOKEN_TTL = 3600.0
DEV_REGION = "us-east-1"


@dataclass(frozen=True)
class DevEnvironment:
    directory: Path
    sts_url: str
    issuer: OidcIssuer
    emulator: StsEmulator
    token_file: Path

    def supply(self) -> DevSupply:
        """What dev mode offers the configuration; ``load_config`` decides where it applies."""
        return DevSupply(
            role_arn=DEV_ROLE_ARN,
            token_file=self.token_file,
            sts_endpoint=self.sts_url,
            region=DEV_REGION,
            directory=self.directory,
        )


def _issuer_routes(issuer: OidcIssuer) -> list[web.RouteDef]:
    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(issuer.discovery())

    async def keys(_: web.Request) -> web.Response:
        return web.json_response(issuer.jwks())

    return [
        web.get("/oidc/.well-known/openid-configuration", discovery),
        web.get("/oidc/keys", keys),
    ]


async def _rotate(writer: ProjectedTokenWriter, issuer: OidcIssuer, ttl: float) -> None:
    while True:
        await asyncio.sleep(ttl * 0.8)
        writer.write(issuer.mint(DEV_SUBJECT, ttl=ttl))
        log.info("dev issuer rotated the token file", extra={"event": "dev_token_rotated"})


@contextlib.asynccontextmanager
async def serve_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    extra_routes: Callable[[OidcIssuer], web.RouteDef] | None = None,
) -> AsyncIterator[tuple[str, OidcIssuer, StsEmulator]]:
    """An issuer and an emulator that trusts it, on one listener: (base URL, issuer, STS);
    ``extra_routes`` adds a route built on the issuer (the node agent's dev minting)."""
    sock = socket.create_server((host, port))
    base = f"http://{host}:{sock.getsockname()[1]}"
    issuer = OidcIssuer(f"{base}/oidc")
    emulator = StsEmulator()
    emulator.trust_issuer(issuer.url, issuer.public_key)
    app = web.Application()
    app.add_routes(emulator.routes() + _issuer_routes(issuer))
    if extra_routes is not None:
        app.add_routes([extra_routes(issuer)])
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield base, issuer, emulator
    finally:
        await runner.cleanup()


def private_directory(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """Dev mode's 0700 directory, or a ``ConfigError`` saying how to give it one (a
    read-only container has no writable /tmp)."""
    try:
        return tempfile.TemporaryDirectory(prefix=prefix)
    except OSError as exc:
        raise ConfigError(
            [
                f"dev mode needs a writable temporary directory ({exc.strerror or exc}): set "
                "TMPDIR to one, or mount a tmpfs at /tmp (podman/docker run --tmpfs /tmp)"
            ]
        ) from None


@contextlib.asynccontextmanager
async def dev_environment(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[DevEnvironment]:
    with private_directory("credential-sidecar-dev-") as tmp:
        directory = Path(tmp)
        async with serve_emulator(host, port) as (base, issuer, emulator):
            writer = ProjectedTokenWriter(directory / "serviceaccount")
            writer.write(issuer.mint(DEV_SUBJECT, ttl=DEV_TOKEN_TTL))
            rotation = asyncio.create_task(_rotate(writer, issuer, DEV_TOKEN_TTL))
            log.info(
                "dev mode: OIDC issuer %s and STS emulator %s",
                issuer.url,
                base,
                extra={"event": "dev_started", "sts_endpoint": base, "dir": tmp},
            )
            try:
                yield DevEnvironment(directory, base, issuer, emulator, writer.path)
            finally:
                rotation.cancel()
                await asyncio.wait([rotation])
