"""What ``serve`` does not need stays unimported until it is used (start-up time and
memory: docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys

#: Modules ``serve`` never uses: dev mode, the node agent, ``inspect``, and PyJWT with the
#: ``cryptography`` it imports (``serve`` checks no signature).
NOT_FOR_SERVE = (
    "jwt",
    "cryptography",
    "sidecar.devmode",
    "sidecar.node_agent",
    "sidecar.exchange.inspection",
    "sidecar.tenancy.jwks",
    "sidecar.tenancy.pod_tokens",
)


def test_the_cli_imports_no_dev_mode_node_agent_or_inspect() -> None:
    """Importing the CLI and the daemon and reading a token's claims (what every ``serve``
    does) loads none of the modules only dev mode, the node agent or ``inspect`` use."""
    probe = (
        "import sys, sidecar.cli, sidecar.daemon\n"
        "from sidecar.sources.base import audiences_of, inspect_token\n"
        "audiences_of('e30.e30.c2ln')\n"
        f"print(' '.join(m for m in sys.modules if m.startswith({NOT_FOR_SERVE!r})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
