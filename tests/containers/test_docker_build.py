"""deploy/docker-build, for real: a build step gets credentials from the daemon on the host
through a secret mount and host networking, and no credential ends up in the image."""

from __future__ import annotations

import json
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.containers.store import Store
from tests.peers import REPO, DaemonProcess, daemon, http_get

pytestmark = pytest.mark.timeout(600)

RECIPE = REPO / "deploy" / "docker-build" / "Dockerfile"
DEV_ARN = "arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/"

#: Appended to a copy of the recipe: a value passed the wrong way (--build-arg into ENV and
#: a layer), which the scan must find, or the scan proves nothing.
CANARY_STAGE = """
ARG SCAN_CANARY
ENV SCAN_CANARY=${SCAN_CANARY}
RUN echo "${SCAN_CANARY}" > /scan-canary
"""


@dataclass(frozen=True)
class Found:
    """Where a needle was seen in the image: layer tarballs, the config, the history."""

    layers: bool
    config: bool
    history: bool

    @property
    def anywhere(self) -> bool:
        return self.layers or self.config or self.history


class ImageScan:
    """Every byte of an image as ``podman save`` writes it (uncompressed layer tarballs,
    config, manifest), plus ``podman history`` and ``podman inspect``."""

    def __init__(self, store: Store, image: str, workdir: Path) -> None:
        archive = workdir / "image.tar"
        store.podman("save", "--format", "docker-archive", "--output", str(archive), image)
        self.layers: list[bytes] = []
        self.config = b""
        with tarfile.open(archive) as tar:
            manifest = json.loads(self._read(tar, "manifest.json"))[0]
            self.config = self._read(tar, manifest["Config"])
            self.layers = [self._read(tar, name) for name in manifest["Layers"]]
            # Whatever else the archive holds counts as config: nothing may hide there.
            known = {"manifest.json", manifest["Config"], *manifest["Layers"]}
            for member in tar.getmembers():
                if member.isfile() and member.name not in known:
                    self.config += self._read(tar, member.name)
        archive.unlink()
        self.config += store.podman("inspect", image).out.encode()
        self.history = store.podman("history", "--no-trunc", "--format", "json", image).out.encode()

    @staticmethod
    def _read(tar: tarfile.TarFile, name: str) -> bytes:
        member = tar.extractfile(name)
        assert member is not None, name
        return member.read()

    def find(self, needle: str) -> Found:
        raw = needle.encode()
        return Found(
            layers=any(raw in layer for layer in self.layers),
            config=raw in self.config,
            history=raw in self.history,
        )

    def assert_clean(self, secrets: dict[str, str], canary: str) -> None:
        """No secret anywhere in the image, while the build-arg canary is found everywhere a
        build arg goes (so the scan is proven to see), and the step's output is there."""
        leaks = {name: self.find(value) for name, value in secrets.items()}
        assert not any(found.anywhere for found in leaks.values()), leaks
        assert self.find(canary) == Found(layers=True, config=True, history=True)
        assert self.find(DEV_ARN).layers  # the step's output, built-by.txt, made it in


def dev_sts_endpoint(process: DaemonProcess) -> str:
    """The AWS_ENDPOINT_URL_STS line ``serve --dev`` prints."""
    deadline = time.monotonic() + 20
    while True:
        for line in process.stdout_lines:
            if "AWS_ENDPOINT_URL_STS=" in line:
                return line.strip().split("=", 1)[1]
        assert time.monotonic() < deadline, process.output
        time.sleep(0.05)


@pytest.fixture
def host_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """The daemon on the build host, in dev mode, on a free loopback port."""
    token = tmp_path / "auth-token"
    with daemon(["--dev", "--listen", "127.0.0.1:0", "--auth-token-file", str(token)]) as process:
        process.wait_event("exchanged")
        yield process


def test_build_step_signs_an_sts_call_and_leaves_no_credential_in_the_image(
    store: Store, host_daemon: DaemonProcess, tmp_path: Path
) -> None:
    """buildah bud --network host --secret id=aws-auth-token: the recipe's RUN step gets
    credentials from the host's daemon and makes a signed GetCallerIdentity the emulator
    verifies (the build fails otherwise); then neither the auth token nor the access key id,
    secret or session token served is in any layer, the config or the history, while a
    --build-arg value put into ENV and a layer is found in all three by the same scan."""
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(RECIPE, context / "Dockerfile")
    with (context / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(CANARY_STAGE)
    canary = f"canary-{secrets.token_hex(16)}"
    tag = f"localhost/credential-sidecar-ci/docker-build:{secrets.token_hex(4)}"
    token_file = tmp_path / "auth-token"
    try:
        built = store.build(
            tag,
            context,
            "--secret",
            f"id=aws-auth-token,src={token_file}",
            "--build-arg",
            f"AWS_CONTAINER_CREDENTIALS_FULL_URI={host_daemon.url}",
            "--build-arg",
            f"AWS_ENDPOINT_URL_STS={dev_sts_endpoint(host_daemon)}",
            "--build-arg",
            f"SCAN_CANARY={canary}",
        )
        assert DEV_ARN in built.out, built.out[-3000:]

        # What the daemon served during the build (dev credentials last an hour: the same).
        status, _, body = http_get(host_daemon.url, token_file.read_text())
        assert status == 200
        served = json.loads(body)
        scan = ImageScan(store, tag, tmp_path)
        secrets_served = {
            "auth token": token_file.read_text(),
            "access key id": served["AccessKeyId"],
            "secret access key": served["SecretAccessKey"],
            "session token": served["Token"],
        }
        scan.assert_clean(secrets_served, canary)
    finally:
        store.podman("rmi", "--force", tag, check=False)


def test_build_fails_when_the_step_gets_no_credentials(
    store: Store, host_daemon: DaemonProcess, tmp_path: Path
) -> None:
    """With a wrong auth token the daemon refuses the step, the STS call fails, and so does
    the build: a recipe that silently built without its artifacts would be worse."""
    wrong = tmp_path / "wrong-token"
    wrong.write_text(secrets.token_urlsafe(32))
    tag = f"localhost/credential-sidecar-ci/docker-build:{secrets.token_hex(4)}"
    try:
        result = store.build(
            tag,
            RECIPE.parent,
            "--secret",
            f"id=aws-auth-token,src={wrong}",
            "--build-arg",
            f"AWS_CONTAINER_CREDENTIALS_FULL_URI={host_daemon.url}",
            "--build-arg",
            f"AWS_ENDPOINT_URL_STS={dev_sts_endpoint(host_daemon)}",
            check=False,
        )
        assert result.code != 0
        assert DEV_ARN not in result.out
    finally:
        store.podman("rmi", "--force", tag, check=False)
