"""A TCP relay: ``python -m tests.containers.relay LISTEN_HOST LISTEN_PORT TARGET_URL``.

The bridge-network build reaches the dev-mode STS emulator through it: the emulator listens
on its namespace's loopback, which a build container cannot reach, so the relay listens on
an address the container's default route leads to and forwards to it. Prints ``ready`` once
listening; runs until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from urllib.parse import urlsplit


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.close()


async def main(host: str, port: int, target: str) -> None:
    to = urlsplit(target)
    assert to.hostname and to.port, target

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(to.hostname, to.port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(relay, host, port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
