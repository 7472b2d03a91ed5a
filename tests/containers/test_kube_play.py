"""``podman kube play`` runs the classic sidecar overlay (deploy/kubernetes/overlays/classic,
rendered with tests/render_kustomize.py): the pod comes up and its app container gets
credentials from the sidecar over the pod's loopback, then signs an STS call with them.

podman 4.3 (Debian 12) cannot run the manifest exactly as written, so the test changes
only what it must, each for a reason checked on this machine:

- the ``aws-token`` volume is a projected service-account token: podman refuses it
  ("HostPath, ConfigMap, EmptyDir, and PersistentVolumeClaim are currently the only
  supported VolumeSource"), and no cluster issues tokens here. It becomes an ``emptyDir``
  and the sidecar runs ``serve --dev`` (its own issuer and STS emulator), with an
  ``emptyDir`` on ``/tmp`` for dev mode's private directory (the root filesystem stays
  read-only);
- images: CI's (the repository's image; the recipe's AWS CLI stage for the app, which runs
  ``sleep`` so the test can run the CLI in it with the emulator's address), pulled never;
- ``ports`` go: with ``--network none`` podman 4.3 refuses any port ("PortMappings can only
  be used with Bridge or slirp4netns networking"), even one without ``hostPort``;
- ``--network none``: the pod gets its own network namespace with loopback only, which is
  all the sidecar pattern uses, and the machine gets no bridge or firewall chain.

podman turns the liveness probe into a health check whose command it splits on spaces
(``CMD-SHELL python -c import urllib.request as u; ...``), which fails whatever the
container does, and runs no health check without systemd; so the test runs the
manifest's probe commands itself with ``podman exec``, arguments intact.

The native-sidecar overlay (the base) cannot run under podman 4.3: it refuses an init
container with probes ("cannot create an init container that has either of lifecycle,
livenessProbe, readinessProbe, or startupProbe set"), and its kube play manual says init
containers are created with init type ``once``: run to completion before the pod's
containers start, which a server never reaches. The last test plays it and
skips with podman's own answer. podman also makes every ``emptyDir`` an anonymous volume
in its store, so ``medium: Memory`` does not keep the auth token off disk there.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.containers.store import Store
from tests.containers.test_docker_build import DEV_ARN
from tests.peers import REPO
from tests.render_kustomize import render

pytestmark = pytest.mark.timeout(300)

CLASSIC = REPO / "deploy" / "kubernetes" / "overlays" / "classic"
AWS_CLI_RECIPE = REPO / "deploy" / "docker-build" / "Dockerfile.bridge"
STS_LINE = "export AWS_ENDPOINT_URL_STS="


def _deployment(directory: Path) -> dict[str, Any]:
    return next(o for o in render(directory) if o["kind"] == "Deployment")


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Init containers and containers, by name."""
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def dev_variant(directory: Path, sidecar_image: str, app_image: str) -> dict[str, Any]:
    """The overlay's Deployment with only the changes the module docstring lists."""
    deployment = copy.deepcopy(_deployment(directory))
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "projected" in volumes["aws-token"], "the overlay changed: revisit this variant"
    volumes["aws-token"].pop("projected")
    volumes["aws-token"]["emptyDir"] = {"medium": "Memory", "sizeLimit": "1Mi"}
    spec["volumes"].append({"name": "sidecar-tmp", "emptyDir": {"medium": "Memory"}})
    containers = _containers(deployment)
    for container in containers.values():
        container["imagePullPolicy"] = "Never"
        container.pop("ports", None)
    sidecar, app = containers["credential-sidecar"], containers["app"]
    sidecar["image"] = sidecar_image
    sidecar["args"] = [*sidecar["args"][:1], "--dev", *sidecar["args"][1:]]
    sidecar["volumeMounts"].append({"name": "sidecar-tmp", "mountPath": "/tmp"})
    app["image"] = app_image
    app["command"] = ["/usr/bin/sleep", "infinity"]
    return deployment


@pytest.fixture
def app_image(store: Store) -> Iterator[str]:
    """The AWS CLI stage of the bridge recipe (the same cached layer as both recipes)."""
    tag = f"localhost/credential-sidecar-ci/aws-cli:{secrets.token_hex(4)}"
    store.build(tag, AWS_CLI_RECIPE.parent, "--target", "aws-cli", dockerfile=AWS_CLI_RECIPE)
    yield tag
    store.podman("untag", tag, check=False)


@pytest.fixture
def played(store: Store, image: str, app_image: str, tmp_path: Path) -> Iterator[str]:
    """The variant played (pod name returned), and torn down with ``kube down``."""
    manifest = tmp_path / "classic.yaml"
    manifest.write_text(yaml.safe_dump(dev_variant(CLASSIC, image, app_image), sort_keys=False))
    try:
        store.podman("kube", "play", "--network", "none", str(manifest))
        pods = store.podman("pod", "ps", "--format", "{{.Name}}").out.split()
        pod = next(name for name in pods if name.startswith("app-pod"))
        yield pod
    finally:
        store.podman("kube", "down", str(manifest), check=False)


def _sts_endpoint(store: Store, container: str) -> str:
    """The STS emulator's address, from the line dev mode prints once it serves."""
    deadline = time.monotonic() + 30
    while True:
        logs = store.podman("logs", container).out
        for line in logs.splitlines():
            if line.startswith(STS_LINE):
                return line.removeprefix(STS_LINE)
        assert time.monotonic() < deadline, f"{container} did not start serving:\n{logs}"
        time.sleep(0.1)


def test_classic_overlay_pod_serves_the_app_credentials_it_signs_sts_with(
    store: Store, played: str
) -> None:
    """Both containers of the played pod run; in the app container, with only the
    manifest's environment (FULL_URI on 127.0.0.1:9911, the auth token file from the
    shared in-memory emptyDir) plus the emulator's address, the AWS CLI gets the dev role's
    credentials from the sidecar and makes a signed GetCallerIdentity the emulator verifies;
    the sidecar's readiness and liveness exec probes, run as written, pass; both run as
    uid 10001."""
    sidecar, app = f"{played}-credential-sidecar", f"{played}-app"
    for container in (sidecar, app):
        state = store.podman("inspect", "--format", "{{.State.Status}}", container).out
        assert state.strip() == "running", f"{container}: {state}"

    sts = _sts_endpoint(store, sidecar)
    region = next(
        e["value"]
        for e in _containers(_deployment(CLASSIC))["app"]["env"]
        if e["name"] == "AWS_REGION"
    )
    called = store.podman(
        "exec",
        *("--env", f"AWS_ENDPOINT_URL_STS={sts}", "--env", f"AWS_DEFAULT_REGION={region}"),
        app,
        *("/opt/aws/bin/aws", "sts", "get-caller-identity", "--query", "Arn", "--output", "text"),
    )
    assert called.out.startswith(DEV_ARN), called.out

    probes = _containers(_deployment(CLASSIC))["credential-sidecar"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        store.podman("exec", sidecar, *probes[probe]["exec"]["command"])
    for container in (sidecar, app):
        assert store.podman("exec", container, "id", "-u").out.strip() == "10001"


NATIVE = REPO / "deploy" / "kubernetes" / "overlays" / "native-sidecar"


def test_native_sidecar_overlay_under_podman(
    store: Store, image: str, app_image: str, tmp_path: Path
) -> None:
    """The native-sidecar overlay with the same dev-mode changes: where podman runs it, the
    app container gets credentials from the init-container sidecar; podman 4.3 refuses it,
    and the test skips with podman's words (the module docstring has the details)."""
    deployment = dev_variant(NATIVE, image, app_image)
    spec = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "credential-sidecar")
    assert sidecar.get("restartPolicy") == "Always", "the overlay changed: revisit this test"
    manifest = tmp_path / "native.yaml"
    manifest.write_text(yaml.safe_dump(deployment, sort_keys=False))
    try:
        played = store.podman(
            "kube", "play", "--network", "none", str(manifest), timeout=60, check=False
        )
        if played.code != 0:
            version = store.podman("--version").out.strip()
            pytest.skip(
                f"{version} cannot run the native-sidecar overlay: {played.err.strip()} "
                "(and it runs init containers to completion before the app's, which a "
                "server never reaches); the classic overlay runs instead"
            )
        pod = f"{deployment['metadata']['name']}-pod-0"
        sts = _sts_endpoint(store, f"{pod}-credential-sidecar")
        called = store.podman(
            "exec",
            *("--env", f"AWS_ENDPOINT_URL_STS={sts}", "--env", "AWS_DEFAULT_REGION=us-east-1"),
            f"{pod}-app",
            *("/opt/aws/bin/aws", "sts", "get-caller-identity", "--query", "Arn"),
            *("--output", "text"),
        )
        assert called.out.startswith(DEV_ARN), called.out
    finally:
        store.podman("kube", "down", str(manifest), check=False)
        pod = f"{deployment['metadata']['name']}-pod-0"  # a refused play leaves it created
        store.podman("pod", "rm", "--force", "--time", "0", pod, check=False)
