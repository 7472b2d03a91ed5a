"""The redesign's contracts: one registry of token kinds, errors that carry their answer,
and dependencies that point one way through the packages."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from sidecar.core.clock import SystemClock
from sidecar.core.errors import Forbidden, NotFound, Refusal, SidecarError, Unavailable
from sidecar.outputs.http import answer
from sidecar.sources.command import CommandSource
from sidecar.sources.env import EnvSource
from sidecar.sources.file import FileSource
from sidecar.sources.presented import PresentedSource
from sidecar.sources.registry import (
    KIND_NAMES,
    KINDS,
    SourceContext,
    TokenSourceConfig,
    build_source,
    kind_of,
)

PACKAGE = Path(__file__).resolve().parent.parent / "sidecar"
#: Each layer may import only the layers after it (and config, which imports only
#: sources and core).
ORDER = ["outputs", "tenancy", "cache", "exchange", "sources", "core"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sidecar."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("sidecar.")}
    return found


@pytest.mark.parametrize("layer", ORDER)
def test_dependencies_point_one_way(layer: str) -> None:
    """No package imports one above it in the data flow (outputs -> ... -> core)."""
    above = set(ORDER[: ORDER.index(layer)]) | {"daemon", "node_agent", "cli", "devmode"}
    for path in (PACKAGE / layer).glob("*.py"):
        wrong = _imports(path) & above
        assert not wrong, f"{path.name} imports {wrong}"


def test_config_depends_only_on_sources_and_core() -> None:
    """Configuration parses into typed sources; it never reaches into what uses it."""
    allowed = {"config", "sources", "core", "exchange", "tenancy"}
    for path in (PACKAGE / "config").glob("*.py"):
        assert _imports(path) <= allowed | {"__init__"}, path.name
    # exchange/tenancy only for the two pure helpers the node-agent settings share
    for path in (PACKAGE / "config").glob("*.py"):
        assert not _imports(path) & {"cache", "outputs"}, path.name


def test_every_kind_is_registered_and_buildable(tmp_path: Path) -> None:
    """Each typed source config has one registry entry that builds its source; the node
    agent's presented token is not offered to --token-source."""
    context = SourceContext(SystemClock(), None, {"TOKEN": "x"})
    configs: list[TokenSourceConfig] = [
        FileSource(tmp_path / "t"),
        EnvSource("TOKEN"),
        CommandSource(("true",)),
        PresentedSource(),
    ]
    for config in configs:
        assert type(config) in KINDS
        assert build_source(config, context) is not None
        assert kind_of(config).fetch_time(config) >= 0
    assert KIND_NAMES == ("file", "github", "env", "command")
    assert "request" not in KIND_NAMES


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NotFound("no such role", "UnknownRole"), 404, "UnknownRole"),
        (Forbidden("wrong token"), 403, "AccessDenied"),
        (Unavailable("not yet"), 503, "CredentialsUnavailable"),
        (SidecarError("bug"), 500, "InternalError"),
    ],
)
def test_errors_carry_their_answer(error: SidecarError, status: int, code: str) -> None:
    """A handler answers any error by its own status and JSON code, in both spellings."""
    response = answer(error)
    assert response.status == status
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body["code"] == body["Code"] == code
    assert body["message"] == body["Message"] == str(error)
    if isinstance(error, Unavailable):
        assert response.headers["Retry-After"] == "1"
    assert not isinstance(error, Refusal) or error.reason
