"""deploy/docker-build/Dockerfile.bridge, for real: a build on a bridge network gets
credentials from the capability endpoint on 169.254.170.2 through its default route, with
the id path handed over as a build secret, and nothing secret ends up in the image.

The setup. On a user's machine the daemon runs in the host's network namespace, next to the
Docker/Podman bridge. Here the host's namespace is the CI machine itself, so the test makes
a network namespace of its own (root, no user namespace: buildah needs real root for its
store) that plays the build host: ``link-local up`` puts 169.254.170.2 on its ``lo``, the
daemon serves ``--relative-listen 169.254.170.2:80`` there, and ``buildah bud`` runs inside
it on netavark's default bridge (``--network podman``). netavark creates the podman0 bridge,
the veth pairs and its iptables chains in that namespace, so the build container's default
route (10.88.0.1) leads to the namespace, where 169.254.170.2 is local. Nothing is added to
the machine's own network; everything goes when the namespace's holder exits (and
``link-local down`` removes the address before that). The dev-mode STS emulator listens on
the namespace's loopback, which no container reaches, so a small relay
(tests/containers/relay.py) serves it on 169.254.170.2 as the step's STS endpoint, on a
port new to each test: the endpoint is a build argument of the credentialed step, so each
build misses buildah's cache for that step (a secret's content is not in the cache key).

The AWS CLI stage is built first on the host network (pip needs the internet; the namespace
has none) and the bridge build reuses it from buildah's layer cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.containers.store import Store
from tests.containers.test_docker_build import CANARY_STAGE, DEV_ARN, ImageScan
from tests.peers import REPO, clean_aws_env

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="the bridge-network build needs root: buildah's netavark bridge, and the "
        "network namespace that plays the build host, are made with real CAP_NET_ADMIN",
    ),
]

RECIPE = REPO / "deploy" / "docker-build" / "Dockerfile.bridge"
CAPABILITY = "169.254.170.2"


@dataclass
class BuildHost:
    """The namespace that plays the build host, and what its daemon printed."""

    inside: list[str]  # the nsenter prefix that runs a command in it
    relative_uri: str = field(repr=False)  # the id is a credential: not in failure output
    auth_token_file: Path
    sts_url: str  # the relay's, as the build step sees it

    def run(self, *argv: str, stdin: str = "") -> str:
        done = subprocess.run(
            [*self.inside, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
        return done.stdout

    def served(self) -> dict[str, str]:
        """The credentials the capability endpoint serves (the id read from stdin)."""
        fetch = (
            "import sys, urllib.request as u; "
            f"print(u.urlopen('http://{CAPABILITY}' + sys.stdin.read(), timeout=5).read().decode())"
        )
        out: dict[str, str] = json.loads(
            self.run(sys.executable, "-c", fetch, stdin=self.relative_uri)
        )
        return out


def _wait_line(process: subprocess.Popen[str], prefix: str, log: Path) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    pytest.fail(f"{process.args!r} stopped before printing {prefix!r}:\n{log.read_text()}")


@pytest.fixture
def build_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildHost]:
    """A network namespace with 169.254.170.2 on lo, the daemon's capability endpoint on it
    (dev mode), and the STS relay; all gone at the end."""
    work = tmp_path_factory.mktemp("bridge-host")
    relay_port = 20000 + secrets.randbelow(40000)  # the namespace is new: any port is free
    holder = subprocess.Popen(
        ["unshare", "--net", "--", "sh", "-c", "echo ready && exec cat >/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started: list[subprocess.Popen[str]] = []
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "ready\n", "unshare --net failed"
        inside = ["nsenter", f"--target={holder.pid}", "--net", "--"]
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        sidecar = [sys.executable, "-m", "sidecar"]
        subprocess.run(
            [*inside, *sidecar, "link-local", "up", "--address", CAPABILITY],
            check=True,
            timeout=30,
            cwd=REPO,
            capture_output=True,
        )
        log = work / "daemon.log"
        with log.open("w") as stderr:
            server = subprocess.Popen(
                [
                    *inside,
                    *(*sidecar, "serve", "--dev", "--log-format", "json"),
                    *("--listen", "127.0.0.1:0", "--auth-token-file", str(work / "auth-token")),
                    *("--relative-listen", f"{CAPABILITY}:80"),
                    *("--relative-id-dir", str(work / "ids")),
                ],
                cwd=REPO,
                env=clean_aws_env(),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        started.append(server)
        sts_url = _wait_line(server, "export AWS_ENDPOINT_URL_STS=", log)
        # Nobody reads the rest, but the pipe must not fill up and stall the daemon.
        assert server.stdout is not None
        threading.Thread(target=server.stdout.read, daemon=True).start()
        relay = subprocess.Popen(
            [
                *(*inside, sys.executable, "-m", "tests.containers.relay"),
                *(CAPABILITY, str(relay_port), sts_url),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(relay)
        _wait_line(relay, "ready", log)
        yield BuildHost(
            inside=inside,
            relative_uri="/v2/credentials/" + (work / "ids" / "default").read_text(),
            auth_token_file=work / "auth-token",
            sts_url=f"http://{CAPABILITY}:{relay_port}",
        )
    finally:
        for process in started:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if holder.poll() is None:
            down = subprocess.run(
                [*inside, *sidecar, "link-local", "down", "--address", CAPABILITY],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert down.returncode == 0, down.stderr
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(10)
        holder.stdout.close()


def _build_aws_cli_stage(store: Store) -> None:
    """The recipe's first stage on the host network (pip needs the internet), so the
    bridge build finds it in the layer cache (the same step as the first recipe's)."""
    tag = f"localhost/credential-sidecar-ci/aws-cli:{secrets.token_hex(4)}"
    store.build(tag, RECIPE.parent, "--target", "aws-cli", dockerfile=RECIPE)
    store.podman("untag", tag)


def _secret_file(path: Path, value: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(value)
    return path


def test_bridge_build_step_signs_an_sts_call_and_leaves_no_secret_in_the_image(
    store: Store, build_host: BuildHost, tmp_path: Path
) -> None:
    """buildah bud --network podman (netavark's bridge) --secret id=aws-relative-uri: the
    recipe's RUN step, given only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI from the secret,
    reaches 169.254.170.2 through the bridge gateway and makes a signed GetCallerIdentity
    the emulator verifies (the build fails otherwise); then neither the id, the access key
    id, secret, session token nor the daemon's auth token is in any layer, the config or
    the history, while a --build-arg value put into ENV and a layer is found in all three."""
    _build_aws_cli_stage(store)
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(RECIPE, context / "Dockerfile")
    with (context / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(CANARY_STAGE)
    canary = f"canary-{secrets.token_hex(16)}"
    uri_file = _secret_file(tmp_path / "relative-uri", build_host.relative_uri)
    tag = f"localhost/credential-sidecar-ci/docker-build-bridge:{secrets.token_hex(4)}"
    try:
        built = store.build(
            tag,
            context,
            *("--secret", f"id=aws-relative-uri,src={uri_file}"),
            *("--build-arg", f"AWS_ENDPOINT_URL_STS={build_host.sts_url}"),
            *("--build-arg", f"SCAN_CANARY={canary}"),
            network="podman",
            inside=build_host.inside,
        )
        assert DEV_ARN in built.out, built.out[-3000:]

        served = build_host.served()
        scan = ImageScan(store, tag, tmp_path)
        secret_values = {
            "capability id": build_host.relative_uri.rsplit("/", 1)[1],
            "auth token": build_host.auth_token_file.read_text(),
            "access key id": served["AccessKeyId"],
            "secret access key": served["SecretAccessKey"],
            "session token": served["Token"],
        }
        scan.assert_clean(secret_values, canary)
    finally:
        store.podman("rmi", "--force", tag, check=False)


def test_bridge_build_fails_with_an_unknown_id(
    store: Store, build_host: BuildHost, tmp_path: Path
) -> None:
    """With an id the daemon does not know, the endpoint answers 404, the STS call fails,
    and so does the build: the recipe never builds silently without its artifacts."""
    _build_aws_cli_stage(store)
    wrong = _secret_file(tmp_path / "wrong-uri", f"/v2/credentials/{secrets.token_hex(32)}")
    tag = f"localhost/credential-sidecar-ci/docker-build-bridge:{secrets.token_hex(4)}"
    try:
        result = store.build(
            tag,
            RECIPE.parent,
            *("--secret", f"id=aws-relative-uri,src={wrong}"),
            *("--build-arg", f"AWS_ENDPOINT_URL_STS={build_host.sts_url}"),
            dockerfile=RECIPE,
            network="podman",
            inside=build_host.inside,
            check=False,
        )
        assert result.code != 0
        assert DEV_ARN not in result.out
    finally:
        store.podman("rmi", "--force", tag, check=False)


def test_the_machine_network_is_left_alone(build_host: BuildHost) -> None:
    """169.254.170.2 is on the namespace's lo, not on the machine's own interfaces."""
    own = subprocess.run(
        ["ip", "-br", "address"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert CAPABILITY not in own
    inside = build_host.run("ip", "-br", "address")
    assert CAPABILITY in inside
