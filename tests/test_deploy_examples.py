"""The examples in deploy/ parse, and use only flags and variables the daemon knows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sidecar.config import SETTINGS
from tests.peers import REPO

DEPLOY = REPO / "deploy"
FLAGS = {s.flag for s in SETTINGS} | {"--wait", "--trust-policy", "--version", "--help"}
ENVS = {e for s in SETTINGS for e in s.envs if e.startswith("SIDECAR_")}
EXAMPLES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "path",
    [p for p in EXAMPLES if p.suffix in (".yml", ".yaml")],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_yaml_parses(path: Path) -> None:
    """Every YAML example is valid YAML."""
    assert yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_flags_and_variables_exist(path: Path) -> None:
    """No example uses a credential-sidecar flag or SIDECAR_* variable that does not exist."""
    text = path.read_text()
    for command in re.findall(
        r"credential-sidecar (?:serve|exec|inspect)[^\n]*(?:\n\s+--[^\n]*)*", text
    ):
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", command):
            assert flag in FLAGS or flag == "--network", f"{path}: unknown flag {flag}"
    for variable in re.findall(r"\bSIDECAR_[A-Z_]+", text):
        assert variable in ENVS, f"{path}: unknown variable {variable}"
