"""The SDK compatibility matrix: one source of truth for the test and the README table.

Rows are clients (an SDK at a version, or one credential provider of it), columns are the
ways a process can get credentials from the daemon. A cell is either expected to pass (the
client makes a signed STS call with what it got and is the dev role) or carries the reason
the client cannot do it, read from the client's own source. ``tests/integration/
test_sdk_matrix.py`` runs every cell, including the unsupported ones (which must still fail,
so a newer client that starts working is noticed); ``tests/test_sdk_matrix_readme.py``
checks that the README shows ``render_table()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Way:
    """A way in: how the process under test is pointed at the daemon."""

    key: str
    title: str  # the README column header


WAYS = (
    Way("full_uri_token", "FULL_URI + token variable"),
    Way("full_uri_token_file", "FULL_URI + token file"),
    Way("exec", "`exec`"),
    Way("relative_uri", "capability endpoint (RELATIVE_URI)"),
    Way("imds", "IMDS (endpoint variable)"),
    Way("credential_process", "`credential_process`"),
)
WAY_KEYS = tuple(way.key for way in WAYS)


@dataclass(frozen=True)
class Client:
    """One row: how to run it (``runner`` + ``argument``, see clients.py) and what it lacks.

    ``version`` is the exact version the test requires to be installed, or ``None`` for a
    floating one (the project venv's latest).
    """

    key: str
    title: str  # the README row header
    runner: str  # botocore | cli-v1 | cli-v2 | js-v2 | js-v3 | go | ruby
    argument: str = ""
    version: str | None = None
    unsupported: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def reason(self, way: str) -> str | None:
        """Why this client cannot use ``way``, or ``None`` if it can."""
        return self.unsupported.get(way)


def _no(**reasons: str) -> Mapping[str, str]:
    unknown = set(reasons) - set(WAY_KEYS)
    assert not unknown, f"unknown ways {unknown}"
    return MappingProxyType(reasons)


# Reasons, each read from the client's source (the path names where):
# - token file: botocore added AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE in 1.32.0 (commit
#   54a09c7, "Feature eks credentials") and re-reads it on every refresh since 1.34.41
#   (42903c4); 1.29's and the Debian CLI v2's bundled botocore (awscli/botocore/
#   credentials.py) have only ENV_VAR_AUTH_TOKEN; Go v1 aws/defaults/defaults.go and Go v2
#   config/env_config.go read only AWS_CONTAINER_AUTHORIZATION_TOKEN.
# - Ruby 3.168 credential_provider_chain.rb: the container provider only `if
#   ENV['AWS_CONTAINER_CREDENTIALS_RELATIVE_URI']`; instance_profile_credentials.rb connects
#   to `@port = options[:port] || 80`, whatever the endpoint URL says.
# - JavaScript v3 fromHttp reads only the container variables; fromProcess only a profile.
_NO_TOKEN_FILE = "reads only `AWS_CONTAINER_AUTHORIZATION_TOKEN`, not `_FILE`"
_NO_FULL_URI = "reads only `RELATIVE_URI`, never `FULL_URI`"
_NOT_CONTAINER = "`fromProcess` runs only a `credential_process`"

CLIENTS = (
    Client("botocore", "botocore, latest (the project venv's)", "botocore"),
    Client(
        "botocore-1.34.41",
        "botocore 1.34.41",
        "botocore",
        "1.34.41",
        version="1.34.41",
    ),
    Client(
        "botocore-1.29",
        "botocore 1.29.165",
        "botocore",
        "1.29.165",
        version="1.29.165",
        unsupported=_no(full_uri_token_file=_NO_TOKEN_FILE + " (`_FILE` came in botocore 1.32.0)"),
    ),
    Client("cli-v1", "AWS CLI v1, latest (PyPI, the project venv's)", "cli-v1"),
    Client(
        "cli-v2-debian",
        "AWS CLI v2 2.9.19 (Debian 12 `awscli`)",
        "cli-v2",
        version="2.9.19",
        unsupported=_no(full_uri_token_file="its bundled botocore " + _NO_TOKEN_FILE),
    ),
    Client("js-v2", "JavaScript v2 `aws-sdk` 2.1693.0", "js-v2", version="2.1693.0"),
    Client(
        "js-v3-chain",
        "JavaScript v3 3.1169.0 `fromNodeProviderChain`",
        "js-v3",
        "chain",
        version="3.1169.0",
    ),
    Client(
        "js-v3-http",
        "JavaScript v3 3.1169.0 `fromHttp`",
        "js-v3",
        "http",
        version="3.1169.0",
        unsupported=_no(
            imds="`fromHttp` reads only the container endpoint variables",
            credential_process="`fromHttp` reads only the container endpoint variables",
        ),
    ),
    Client(
        "js-v3-process",
        "JavaScript v3 3.1169.0 `fromProcess`",
        "js-v3",
        "process",
        version="3.1169.0",
        unsupported=_no(
            full_uri_token=_NOT_CONTAINER,
            full_uri_token_file=_NOT_CONTAINER,
            exec=_NOT_CONTAINER,
            relative_uri=_NOT_CONTAINER,
            imds=_NOT_CONTAINER,
        ),
    ),
    Client(
        "go-v1",
        "Go v1 1.44.133 (Debian 12)",
        "go",
        "v1",
        version="1.44.133",
        unsupported=_no(full_uri_token_file=_NO_TOKEN_FILE),
    ),
    Client(
        "go-v2",
        "Go v2 1.17.1 (Debian 12)",
        "go",
        "v2",
        version="1.17.1",
        unsupported=_no(full_uri_token_file=_NO_TOKEN_FILE),
    ),
    Client(
        "ruby",
        "Ruby `aws-sdk-core` 3.168.1 (Debian 12)",
        "ruby",
        version="3.168.1",
        unsupported=_no(
            full_uri_token=_NO_FULL_URI,
            full_uri_token_file=_NO_FULL_URI,
            exec=_NO_FULL_URI + " (`exec` sets `FULL_URI`)",
            imds="ignores the port in `AWS_EC2_METADATA_SERVICE_ENDPOINT` (uses 80)",
        ),
    ),
)


def render_table() -> str:
    """The README's table: a row per client, a column per way, pass or no with the reason."""
    header = ["Client", *(way.title for way in WAYS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for client in CLIENTS:
        cells = [client.title]
        for way in WAYS:
            reason = client.reason(way.key)
            cells.append("pass" if reason is None else f"no: {reason}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
