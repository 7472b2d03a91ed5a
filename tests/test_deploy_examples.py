"""The examples in deploy/ parse, and use only flags and variables the daemon knows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.config import SETTINGS
from sidecar.config.node_agent import NODE_SETTINGS
from sidecar.core.metrics import Metrics
from sidecar.devmode.issuer import OidcIssuer
from sidecar.tenancy.associations import parse_associations
from tests import netns
from tests.peers import (
    REPO,
    DaemonProcess,
    EmulatorThread,
    clean_aws_env,
    daemon,
    emulator_args,
    http_get,
    run_sidecar,
)
from tests.render_kustomize import render

DEPLOY = REPO / "deploy"
FLAGS = {s.flag for s in SETTINGS} | {"--wait", "--trust-policy", "--version", "--help"}
NODE_FLAGS = {s.flag for s in NODE_SETTINGS} | {"--help"}
#: Per subcommand: the flags it takes.
COMMAND_FLAGS = {
    "serve": FLAGS,
    "exec": FLAGS,
    "inspect": FLAGS,
    "node-agent": NODE_FLAGS,
    "link-local": {"--address", "--interface", "--help"},
    "dev-pod-token": {"--issuer", "--namespace", "--service-account", "--ttl", "--help"},
}
ENVS = {e for s in (*SETTINGS, *NODE_SETTINGS) for e in s.envs if e.startswith("SIDECAR_")}
EXAMPLES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "path",
    [p for p in EXAMPLES if p.suffix in (".yml", ".yaml")],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_yaml_parses(path: Path) -> None:
    """Every YAML example is valid YAML (a manifest may hold several documents)."""
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(documents)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_flags_and_variables_exist(path: Path) -> None:
    """No example uses a credential-sidecar flag or SIDECAR_* variable that does not exist."""
    text = path.read_text()
    commands = "|".join(COMMAND_FLAGS)
    for match in re.finditer(
        rf"credential-sidecar['\"]? ({commands})\b[^\n]*(?:\n\s+--[^\n]*)*", text
    ):
        known = COMMAND_FLAGS[match.group(1)]
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", match.group(0)):
            assert flag in known or flag == "--network", f"{path}: unknown flag {flag}"
    for variable in re.findall(r"\bSIDECAR_[A-Z_]+", text):
        assert variable in ENVS, f"{path}: unknown variable {variable}"


def test_readme_uses_only_existing_flags_and_variables() -> None:
    """The README's and the node agent guide's commands use only flags and SIDECAR_*
    variables that exist."""
    test_flags_and_variables_exist(REPO / "README.md")
    test_flags_and_variables_exist(REPO / "docs" / "node-agent.md")


def test_the_flag_check_sees_node_agent_flags(tmp_path: Path) -> None:
    """The example check knows node-agent's own flags and refuses serve's flags there."""
    good = tmp_path / "good.md"
    good.write_text("credential-sidecar node-agent --issuer https://x --max-identities 5\n")
    test_flags_and_variables_exist(good)
    bad = tmp_path / "bad.md"
    bad.write_text("credential-sidecar node-agent --role-arn arn:aws:iam::1:role/x\n")
    with pytest.raises(AssertionError, match="unknown flag --role-arn"):
        test_flags_and_variables_exist(bad)


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
    families = list(Metrics(CollectorRegistry()).registry.collect())
    exported = {f.name + "_total" if f.type == "counter" else f.name for f in families}
    rules = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bcredential_sidecar_\w+", e)}
    assert used <= exported, used - exported
    assert used >= {
        "credential_sidecar_credentials_expiry_seconds",
        "credential_sidecar_consecutive_failures",
        "credential_sidecar_sts_exchanges_total",
        "credential_sidecar_ready",
        "credential_sidecar_pod_token_refusals_total",
        "credential_sidecar_sts_rate_limited_total",
    }
    assert any('result="failure"' in e for e in exprs)
    assert any("credential-sidecar-node-agent" in e for e in exprs)
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


# --- The node agent ---------------------------------------------------------------------

NODE_AGENT = DEPLOY / "kubernetes" / "node-agent"
AGENT_ADDRESS = "169.254.170.23"


def _node_agent(layout: Path = NODE_AGENT) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The DaemonSet's pod spec, and every object of the layout."""
    objects = render(layout)
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec, objects


def _example_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The example pod's spec and its app container."""
    docs = list(yaml.safe_load_all((NODE_AGENT / "examples" / "pod.yaml").read_text()))
    pod: dict[str, Any] = next(d for d in docs if d["kind"] == "Pod")
    app: dict[str, Any] = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
    return pod, app


def _flag_values(args: list[str]) -> dict[str, list[str]]:
    """``--flag value`` and ``--flag=value`` pairs of a container's args, by flag."""
    values: dict[str, list[str]] = {}
    i = 0
    while i < len(args):
        flag, _, value = args[i].partition("=")
        switch = flag in {s.flag for s in NODE_SETTINGS if s.is_switch}
        if not value and not switch:
            i += 1
            value = args[i]
        values.setdefault(flag, []).append(value)
        i += 1
    return values


def test_node_agent_daemonset_shape() -> None:
    """The DaemonSet: host network with cluster DNS, node-critical on every node, rolling
    updates, no API token; an init container adding the link-local addresses with NET_ADMIN
    alone; the agent with NET_BIND_SERVICE alone, a read-only root, seccomp, resources, and
    probes on 169.254.170.23:80."""
    spec, objects = _node_agent()
    daemonset = next(o for o in objects if o["kind"] == "DaemonSet")
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec["automountServiceAccountToken"] is False
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert not [o for o in objects if "Role" in o["kind"]], "the agent needs no API access"
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (init,) = spec["initContainers"]
    assert init["args"] == [
        "link-local",
        "up",
        "--address",
        AGENT_ADDRESS,
        "--address",
        "fd00:ec2::23",
    ]
    (agent,) = spec["containers"]
    assert agent["args"][0] == "node-agent"
    for container, capability in ((init, "NET_ADMIN"), (agent, "NET_BIND_SERVICE")):
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"], "add": [capability]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert agent[probe]["httpGet"] == {"host": AGENT_ADDRESS, "port": 80, "path": path}


def test_node_agent_reads_the_associations_config_map() -> None:
    """--associations names the file the ConfigMap volume puts there (a directory mount, so
    the kubelet updates it), and the ConfigMap holds associations the agent accepts."""
    spec, objects = _node_agent()
    (agent,) = spec["containers"]
    flags = _flag_values(agent["args"][1:])
    (path,) = flags["--associations"]
    (mount,) = [m for m in agent["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert "subPath" not in mount and mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = next(
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]
    )
    key = path.removeprefix(mount["mountPath"] + "/")
    parsed = parse_associations(tomllib.loads(config_map["data"][key]), "sts.amazonaws.com", key)
    pod, _ = _example_pod()
    association = parsed.find(pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"])
    assert association is not None, "the example pod's service account has no association"


def test_node_agent_args_are_node_agent_flags() -> None:
    """The agent's args are node-agent flags (each layout), and none is left to its
    placeholder-free default where the cluster must be named."""
    for layout in (NODE_AGENT, NODE_AGENT / "monitored"):
        spec, _ = _node_agent(layout)
        flags = _flag_values(spec["containers"][0]["args"][1:])
        assert set(flags) <= NODE_FLAGS, set(flags) - NODE_FLAGS
        assert {"--issuer", "--associations", "--region"} <= set(flags)


def test_example_pod_uses_the_node_agent() -> None:
    """The example pod sends its projected STS-audience token to the agent's address, and
    waits for the agent before the app starts."""
    pod, app = _example_pod()
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] == f"http://{AGENT_ADDRESS}/v1/credentials"
    token_file = env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]
    assert token_file == "/var/run/secrets/credential-sidecar/token"
    (mount,) = [m for m in app["volumeMounts"] if token_file.startswith(m["mountPath"] + "/")]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    (source,) = volume["projected"]["sources"]
    projected = source["serviceAccountToken"]
    assert projected["audience"] == "sts.amazonaws.com"
    assert projected["expirationSeconds"] == 3600
    assert token_file == f"{mount['mountPath']}/{projected['path']}"
    assert pod["spec"]["automountServiceAccountToken"] is False
    (wait,) = pod["spec"]["initContainers"]
    assert f"http://{AGENT_ADDRESS}/readyz" in wait["command"][2]


def test_scrape_config_finds_the_node_agents_metrics_port() -> None:
    """The node-agent scrape job keeps the port the monitored node agent serves metrics on,
    on the node's IP (the link-local addresses cannot be reached from Prometheus's node),
    and the pods' addresses stay the defaults (no /metrics there)."""
    scrape = yaml.safe_load(
        (DEPLOY / "kubernetes" / "prometheus" / "scrape-config.yaml").read_text()
    )
    job = next(j for j in scrape["scrape_configs"] if j["job_name"].endswith("node-agent"))
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    spec, _ = _node_agent(NODE_AGENT / "monitored")
    (agent,) = spec["containers"]
    port = next(p for p in agent["ports"] if p["name"] == keep["regex"])
    flags = _flag_values(agent["args"][1:])
    assert flags["--metrics-listen"] == [f"$(NODE_IP):{port['containerPort']}"]
    assert "--listen" not in flags
    (node_ip,) = [e for e in agent["env"] if e["name"] == "NODE_IP"]
    assert node_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


@pytest.mark.integration
def test_node_agent_manifest_serves_the_example_pod(
    emulator: EmulatorThread, tmp_path: Path
) -> None:
    """The DaemonSet's own args and ConfigMap, pointed at the dev issuer and STS emulator
    on loopback, serve the example pod's service account its associated role at the path
    the pod's URL names, and the probes' paths answer 200."""
    spec, objects = _node_agent()
    (agent,) = spec["containers"]
    flags = _flag_values(agent["args"][1:])
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    associations = tmp_path / "associations.toml"
    associations.write_text(config_map["data"]["associations.toml"])
    args = [a for a in agent["args"] if not a.startswith("--issuer") and a != flags["--issuer"][0]]
    args = [str(associations) if a == flags["--associations"][0] else a for a in args]
    process = DaemonProcess([])
    process.args = [
        sys.executable,
        "-m",
        "sidecar",
        *args,
        "--issuer",
        emulator.issuer.url,
        "--sts-endpoint",
        emulator.url,
        "--listen",
        "127.0.0.1:0",
    ]
    try:
        (url,) = process.start(wait_for=None).wait_event("started")["urls"]
        base = url.rsplit("/v1/", 1)[0]
        pod, app = _example_pod()
        subject = (
            f"system:serviceaccount:{pod['metadata']['namespace']}:"
            f"{pod['spec']['serviceAccountName']}"
        )
        env = {e["name"]: e["value"] for e in app["env"]}
        path = urlsplit(env["AWS_CONTAINER_CREDENTIALS_FULL_URI"]).path
        status, _, body = http_get(base + path, emulator.issuer.mint(subject=subject, ttl=3600))
        assert status == 200, body
        expected = parse_associations(
            tomllib.loads(associations.read_text()), "sts.amazonaws.com", "x"
        ).find(pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"])
        assert expected is not None
        assert json.loads(body)["RoleArn"] == expected.role.role_arn
        assert emulator.last_subject() == subject
        for probe in ("livenessProbe", "readinessProbe"):
            status, _, body = http_get(base + agent[probe]["httpGet"]["path"])
            assert status == 200, (probe, body)
    finally:
        process.kill()


# The cluster's issuer and STS, inside the node's namespace (the agent reaches them there):
# prints their URLs and a token for the service account in argv[1], then serves.
_NODE_SERVICES = """
import asyncio, json, sys
from sidecar.devmode.environment import serve_emulator
async def main():
    async with serve_emulator() as (url, issuer, _):
        token = issuer.mint(subject=sys.argv[1], ttl=3600)
        print(json.dumps({"sts": url, "issuer": issuer.url, "token": token}), flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""
# The kubelet's httpGet probe: exits 0 on a 2xx answer.
_PROBE = """
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}{sys.argv[3]}", timeout=5)
"""
# The pod: its SDK (botocore's container provider, with the pod's variables) gets
# credentials; the raw answer (over IPv4 and IPv6) names the role served.
_POD = """
import json, os, sys, urllib.request
from botocore.credentials import ContainerProvider
credentials = ContainerProvider().load().get_frozen_credentials()
assert credentials.access_key.startswith("ASIA"), credentials.access_key
token = open(os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read()
for url in (os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"], sys.argv[1]):
    request = urllib.request.Request(url, headers={"Authorization": token})
    with urllib.request.urlopen(request, timeout=10) as answer:
        print(json.loads(answer.read())["RoleArn"])
"""


@pytest.mark.integration
def test_node_agent_daemonset_runs_in_a_node_namespace(tmp_path: Path) -> None:
    """The DaemonSet as written, on a simulated node (a network namespace): the init
    container's command adds the link-local addresses, the agent's args (issuer and STS
    pointed at local stand-ins) serve port 80 on both as uid 0, the kubelet's probes pass,
    and the example pod, in its own namespace behind a veth, gets its role through the
    SDK with exactly the pod's variables, over IPv4 and IPv6."""
    spec, objects = _node_agent()
    (init,), (agent,) = spec["initContainers"], spec["containers"]
    flags = _flag_values(agent["args"][1:])
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    associations = tmp_path / "associations.toml"
    associations.write_text(config_map["data"]["associations.toml"])
    pod, app = _example_pod()
    namespace, account = pod["metadata"]["namespace"], pod["spec"]["serviceAccountName"]
    expected = parse_associations(tomllib.loads(associations.read_text()), "x", "x").find(
        namespace, account
    )
    assert expected is not None
    env = clean_aws_env()
    with netns.namespaces() as net:
        node, pod_ns = net.namespace("node"), net.namespace("pod")
        link = net.veth(node, pod_ns)
        services = node.popen(
            [sys.executable, "-c", _NODE_SERVICES, f"system:serviceaccount:{namespace}:{account}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert services.stdout is not None
        stand_ins = json.loads(services.stdout.readline())
        node.run([sys.executable, "-m", "sidecar", *init["args"]], env=env, cwd=REPO)
        args = [
            {
                flags["--issuer"][0]: stand_ins["issuer"],
                flags["--associations"][0]: str(associations),
            }.get(a, a)
            for a in agent["args"]
        ]
        process = node.popen(
            [sys.executable, "-m", "sidecar", *args, "--sts-endpoint", stand_ins["sts"]],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert process.stderr is not None
        for line in process.stderr:
            if json.loads(line).get("event") == "started":
                break
        else:
            pytest.fail("the node agent did not start")
        for probe in ("livenessProbe", "readinessProbe"):
            get = agent[probe]["httpGet"]
            node.run([sys.executable, "-c", _PROBE, get["host"], str(get["port"]), get["path"]])
        pod_ns.route("default", via=link.a_ipv4.ip)
        pod_ns.route("fd00:ec2::23/128", via=link.a_ipv6.ip)
        token = tmp_path / "token"
        token.write_text(stand_ins["token"])
        pod_env = {e["name"]: e["value"] for e in app["env"]}
        pod_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = str(token)
        served = pod_ns.run(
            [sys.executable, "-c", _POD, "http://[fd00:ec2::23]/v1/credentials"],
            env={**env, **pod_env},
        )
        assert served.stdout.split() == [expected.role.role_arn] * 2
