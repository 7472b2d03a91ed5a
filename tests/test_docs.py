"""The README documents every setting and metric the code has."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.config import SETTINGS
from sidecar.core.metrics import Metrics
from tests.peers import REPO

README = (REPO / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    """Each flag and each of its environment variables appears in the README."""
    for setting in SETTINGS:
        assert f"`{setting.flag}`" in README, setting.flag
        for env in setting.envs:
            assert env in README, env


def test_every_metric_is_documented() -> None:
    """Each metric family the daemon exports appears in the README."""
    metrics = Metrics(CollectorRegistry())
    names = {family.name for family in metrics.registry.collect()}
    for name in names:
        documented = name + "_total" if name.endswith(("exchanges", "requests")) else name
        assert documented in README, name


def test_readme_commands() -> None:
    """The README names the two fresh-machine commands."""
    assert "credential-sidecar serve --dev" in README
    assert "bash .ci/run" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in ci and ".venv/bin/python -m pytest" in README
