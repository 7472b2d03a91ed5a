"""The README documents every setting and metric the code has; docs/node-agent.md every
node-agent flag and metric."""

from __future__ import annotations

import re
import tomllib

from prometheus_client import CollectorRegistry

from sidecar.config import SETTINGS
from sidecar.config.node_agent import NODE_SETTINGS
from sidecar.core.metrics import Metrics
from sidecar.tenancy.associations import parse_associations
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


NODE_AGENT_DOC = (REPO / "docs" / "node-agent.md").read_text()


def test_every_node_agent_flag_is_documented() -> None:
    """Each node-agent flag, its environment variable and its default appear in the node
    agent's guide."""
    rows = [line for line in NODE_AGENT_DOC.splitlines() if line.startswith("| `--")]
    for setting in NODE_SETTINGS:
        row = next((r for r in rows if r.startswith(f"| `{setting.flag}`")), None)
        assert row is not None, setting.flag
        assert setting.envs[0] in row, setting.envs[0]
        if setting.default is not None:
            assert f"`{setting.default}`" in row, (setting.flag, setting.default)


def test_every_node_agent_metric_is_in_its_guide() -> None:
    """Each metric family only the node agent updates appears in the node agent's guide."""
    metrics = Metrics(CollectorRegistry())
    node_only = {
        metrics.identities,
        metrics.identity_lookups,
        metrics.identity_evictions,
        metrics.pod_token_refusals,
        metrics.associations,
        metrics.sts_rate_limited,
        metrics.sts_rate_limit_wait,
    }
    for metric in node_only:
        (family,) = metric.collect()
        documented = family.name + "_total" if family.type == "counter" else family.name
        assert f"`{documented}`" in NODE_AGENT_DOC, documented


def test_node_agent_guide_associations_parse() -> None:
    """The associations example in the node agent's guide is accepted by the agent."""
    (block,) = re.findall(r"^```toml\n(.*?)^```", NODE_AGENT_DOC, flags=re.S | re.M)
    associations = parse_associations(tomllib.loads(block), "sts.amazonaws.com", "guide")
    assert associations.find("payments", "api") is not None
    assert associations.find("builds", "ci") is not None
