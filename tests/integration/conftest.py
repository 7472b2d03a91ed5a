"""Integration peers: the JavaScript SDK install; every test here is marked integration."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.peers import REPO

JS_DIR = REPO / "tests" / "js"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The AWS SDK for JavaScript v3, installed with npm from tests/js/package-lock.json."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are required in CI for the JavaScript SDK tests")
        pytest.skip("node/npm not installed: JavaScript SDK tests need them")
    if not (JS_DIR / "node_modules" / "@aws-sdk" / "credential-providers").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return JS_DIR / "fetch-credentials.mjs"
