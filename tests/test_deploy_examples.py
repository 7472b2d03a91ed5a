"""The examples in deploy/ parse, and use only flags and variables the daemon knows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.config import SETTINGS
from sidecar.core.metrics import Metrics
from sidecar.devmode.issuer import OidcIssuer
from tests.peers import REPO, EmulatorThread, daemon, emulator_args, run_sidecar
from tests.render_kustomize import render

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
        r"credential-sidecar['\"]? (?:serve|exec|inspect)[^\n]*(?:\n\s+--[^\n]*)*", text
    ):
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", command):
            assert flag in FLAGS or flag == "--network", f"{path}: unknown flag {flag}"
    for variable in re.findall(r"\bSIDECAR_[A-Z_]+", text):
        assert variable in ENVS, f"{path}: unknown variable {variable}"


def test_readme_uses_only_existing_flags_and_variables() -> None:
    """The README's commands use only flags and SIDECAR_* variables that exist."""
    test_flags_and_variables_exist(REPO / "README.md")


#: Per platform: the issuer URL and a `sub` of the shape that platform issues, which the
#: example trust policy next to its recipe must admit (and must refuse for another project).
PLATFORMS = {
    "github-actions": (
        "https://token.actions.githubusercontent.com",
        "repo:example-org/app:ref:refs/heads/main",
    ),
    "gitlab": ("https://gitlab.com", "project_path:example-group/app:ref_type:branch:ref:main"),
    "circleci": (
        "https://oidc.circleci.com/org/11111111-2222-3333-4444-555555555555",
        "org/11111111-2222-3333-4444-555555555555/project/66666666-7777-8888-9999-000000000000"
        "/user/0f1e2d3c/vcs-origin/github.com/example-org/app/vcs-ref/refs/heads/main",
    ),
    "buildkite": (
        "https://agent.buildkite.com",
        "organization:example-org:pipeline:app:ref:refs/heads/main:commit:0abc123:step:deploy",
    ),
    "kubernetes": (
        "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
        "system:serviceaccount:app:app",
    ),
}


def test_every_recipe_has_a_trust_policy() -> None:
    """Each CI recipe and the Kubernetes manifests come with a trust policy example."""
    assert {p.parent.name for p in DEPLOY.glob("*/trust-policy.json")} == set(PLATFORMS)


def _inspect(tmp_path: Path, platform: str, subject: str) -> tuple[int, str]:
    issuer, _ = PLATFORMS[platform]
    token = tmp_path / "token"
    token.write_text(OidcIssuer(issuer).mint(subject=subject, ttl=600))
    policy = DEPLOY / platform / "trust-policy.json"
    result = run_sidecar("inspect", "--token-file", str(token), "--trust-policy", str(policy))
    assert result.returncode in (0, 4), result.stderr
    return result.returncode, result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_trust_policy_admits_its_platforms_token(tmp_path: Path, platform: str) -> None:
    """`inspect` finds the example trust policy's aud and sub conditions met by a token of
    that platform's shape."""
    issuer, subject = PLATFORMS[platform]
    code, out = _inspect(tmp_path, platform, subject)
    provider = issuer.removeprefix("https://")
    assert code == 0, out
    assert re.search(rf"^ok .*{re.escape(provider)}:sub .* matches", out, re.M), out
    assert re.search(rf"^ok .*{re.escape(provider)}:aud .* matches", out, re.M), out


@pytest.mark.integration
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_trust_policy_refuses_another_project(tmp_path: Path, platform: str) -> None:
    """The example trust policy's sub condition refuses the same platform's token for
    another project, and `inspect` reports it."""
    _, subject = PLATFORMS[platform]
    other = subject.replace(":app:", ":other:").replace("/app", "/other").replace("app:ref", "x")
    assert other != subject
    code, out = _inspect(tmp_path, platform, other)
    assert code == 4, out
    assert re.search(r"^error .*:sub .* does not match", out, re.M), out


def test_alert_rules_use_only_exported_metrics() -> None:
    """The Prometheus rules name only metrics the daemon exports, and cover expiry,
    refresh failures and readiness."""
    families = {f.name for f in Metrics(CollectorRegistry()).registry.collect()}
    exported = {n + "_total" if n.endswith(("exchanges", "requests")) else n for n in families}
    rules = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bcredential_sidecar_\w+", e)}
    assert used <= exported, used - exported
    assert used >= {
        "credential_sidecar_credentials_expiry_seconds",
        "credential_sidecar_consecutive_failures",
        "credential_sidecar_sts_exchanges_total",
        "credential_sidecar_ready",
    }
    assert any('result="failure"' in e for e in exprs)
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_scrape_config_finds_the_monitored_overlays_port() -> None:
    """The scrape job keeps the container port the monitored overlay names."""
    scrape = yaml.safe_load(
        (DEPLOY / "kubernetes" / "prometheus" / "scrape-config.yaml").read_text()
    )
    job = scrape["scrape_configs"][0]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    objects = render(DEPLOY / "kubernetes" / "overlays" / "monitored")
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    assert [p["name"] for p in sidecar["ports"]] == [keep["regex"]]
    assert {"name": "SIDECAR_LISTEN", "value": "0.0.0.0:9911"} in sidecar["env"]


def _sidecar_container(overlay: str) -> dict[str, Any]:
    objects = render(DEPLOY / "kubernetes" / "overlays" / overlay)
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    found: dict[str, Any] = next(c for c in containers if c["name"] == "credential-sidecar")
    return found


def _probe(name: str, port: int) -> list[str]:
    """The manifest's exec probe, run with this Python against the daemon on ``port``."""
    command: list[str] = _sidecar_container("native-sidecar")[name]["exec"]["command"]
    assert command[0] == "python" and ":9911/" in command[-1], command
    return [sys.executable, *command[1:-1], command[-1].replace(":9911/", f":{port}/")]


def _passes(probe: list[str]) -> bool:
    return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0


@pytest.mark.integration
def test_probes_pass_once_credentials_are_held(emulator: EmulatorThread, tmp_path: Path) -> None:
    """The pod's startup, readiness and liveness probes pass against a daemon holding
    credentials, with nothing but the Python the image already has."""
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("system:serviceaccount:app:app"))
    with daemon(emulator_args(emulator, token, tmp_path / "auth-token")) as process:
        process.wait_event("exchanged")
        port = urlsplit(process.url).port or 0
        for name in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert _passes(_probe(name, port)), name


@pytest.mark.integration
def test_probes_hold_the_app_back_without_credentials(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """While STS does not answer, the startup and readiness probes fail (so the app does not
    start) and the liveness probe passes (so the kubelet does not restart the daemon)."""
    emulator.add_fault(hang=True)
    token = tmp_path / "token"
    token.write_text(emulator.issuer.mint("system:serviceaccount:app:app"))
    with daemon(emulator_args(emulator, token, tmp_path / "auth-token")) as process:
        port = urlsplit(process.url).port or 0
        assert not _passes(_probe("startupProbe", port))
        assert not _passes(_probe("readinessProbe", port))
        assert _passes(_probe("livenessProbe", port))


def test_native_sidecar_pod_shape() -> None:
    """The native-sidecar pod: a restartable init container gated by a startup probe, a
    projected STS-audience token, an in-memory auth-token volume, strict security contexts,
    and an app that gets the endpoint and the token file."""
    objects = render(DEPLOY / "kubernetes" / "overlays" / "native-sidecar")
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    sidecar, app = pod["initContainers"][0], pod["containers"][0]
    assert sidecar["restartPolicy"] == "Always" and "startupProbe" in sidecar
    volumes = {v["name"]: v for v in pod["volumes"]}
    projected = volumes["aws-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert projected["audience"] == "sts.amazonaws.com" and projected["expirationSeconds"]
    assert volumes["sidecar-auth"]["emptyDir"]["medium"] == "Memory"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in (sidecar, app):
        context = container["securityContext"]
        assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["limits"]["memory"]
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == "http://127.0.0.1:9911/v1/credentials"
    assert env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == "/run/sidecar/auth-token"


def test_classic_variant_waits_for_readiness() -> None:
    """Without native sidecars the daemon is a regular container and the app's command
    first waits for /readyz."""
    objects = render(DEPLOY / "kubernetes" / "overlays" / "classic")
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    app, sidecar = pod["containers"]
    assert sidecar["name"] == "credential-sidecar" and "restartPolicy" not in sidecar
    assert app["command"][:2] == ["sh", "-c"] and "/readyz" in app["command"][2]


def test_recipes_pin_the_version_they_install() -> None:
    """A recipe never installs whatever version of credential-sidecar an index serves today:
    it pins this one (or installs the checkout it ships in)."""
    installs = [
        (path, line)
        for path in EXAMPLES
        for line in path.read_text().splitlines()
        if re.search(r"pip\"? install\b.*credential-sidecar", line)
    ]
    assert installs
    for path, line in installs:
        assert f"credential-sidecar=={__version__}" in line, f"{path}: {line.strip()}"
