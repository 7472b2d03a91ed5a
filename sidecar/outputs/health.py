"""``credential-sidecar health``: is the daemon on this address ready? For HEALTHCHECK.

Standard library only, so an image needs no curl or wget for its health check.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from sidecar.config.settings import parse_listen
from sidecar.outputs.execute import loopback_url

#: A probe that waits longer than the container runtime's timeout is useless.
PROBE_TIMEOUT = 2.0


def readyz_url(listen: str) -> str:
    """``HOST:PORT`` as ``--listen`` takes it -> the daemon's ``/readyz`` URL (on loopback
    when it listens on every address)."""
    host, port = parse_listen(listen)
    shown = f"[{host}]" if ":" in host else host
    return loopback_url(f"http://{shown}:{port}/readyz")


def probe_ready(listen: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if ``/readyz`` answers 200, else what went wrong (never a traceback)."""
    try:
        url = readyz_url(listen)
    except ValueError as exc:
        return f"--listen {listen!r}: {exc} (such as 127.0.0.1:9911)"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url} answered {status}"
