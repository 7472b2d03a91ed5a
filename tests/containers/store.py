"""A private podman/buildah store for the container tests, and the base image in it.

Never the machine's default store: ``CONTAINERS_STORAGE_CONF`` and ``CONTAINERS_CONF`` point
at files written here, under a cache directory later runs on the same machine reuse (the
base image and buildah's layer cache make a warm run take seconds). What works on Debian 12
as root without a registry: runc (crun fails on cgroup v1 hybrid), ulimits under the hard
limits (podman's root defaults are refused), netavark named explicitly, native overlay
storage (vfs where the cache sits on overlayfs), a base made with mmdebstrap and imported.
No test uses a bridge network in the machine's own namespace (``none``, ``container:`` or
``host`` only), so no iptables chain or podman0 bridge is created there; the bridge-network
build runs buildah inside a network namespace of its own (``inside``), where netavark's
bridge, addresses and firewall rules go away with the namespace.

``python -m tests.containers.store`` prepares the store and the base image (``.ci/containers.sh``
calls it, so its time is not counted inside a test).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
TOOLS = ("podman", "buildah", "mmdebstrap", "runc")
INSTALL_HINT = "run .ci/containers.sh (as root: it installs them with apt-get)"

#: The base image CI builds on: Debian 12 with python3 (3.11) and its venv module.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
#: Only the host's CA bundle: this machine's egress presents its own CA to pip in a build.
CA_BUNDLE = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "credential-sidecar-ci"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Unavailable(Exception):
    """The machine cannot run containers; the message says why and what to do."""


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def _limits() -> str:
    """``default_ulimits`` under the hard limits: podman's root defaults (1048576) fail here,
    and so did nproc at the hard limit seen by this process (runc's may be lower)."""
    values = []
    for name, limit, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 65536),
        ("nproc", resource.RLIMIT_NPROC, 8192),
    ):
        hard = resource.getrlimit(limit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        values.append(f'"{name}={value}:{value}"')
    return ", ".join(values)


def _filesystem(path: Path) -> str:
    out = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False
    )
    return out.stdout.strip()


class Store:
    """podman and buildah, each call with this store's configuration only."""

    def __init__(self, root: Path | None = None) -> None:
        self.cache = root or cache_dir()
        self.cache.mkdir(parents=True, exist_ok=True)
        # Native overlay on ext4/xfs; vfs (slower) where the kernel refuses overlay on overlay.
        self.driver = "vfs" if _filesystem(self.cache) == "overlayfs" else "overlay"
        self.root = self.cache / f"store-{self.driver}"
        self.root.mkdir(exist_ok=True)
        self.storage_conf = self.root / "storage.conf"
        self.containers_conf = self.root / "containers.conf"
        self.registries_conf = self.root / "registries.conf"
        self._write_configs()

    def _write_configs(self) -> None:
        r = self.root
        self.storage_conf.write_text(
            "[storage]\n"
            f'driver = "{self.driver}"\n'
            f'graphroot = "{r / "graph"}"\n'
            f'runroot = "{r / "run"}"\n'
        )
        (r / "networks").mkdir(exist_ok=True)
        self.containers_conf.write_text(
            "[containers]\n"
            f"default_ulimits = [{_limits()}]\n"
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{r / "tmp"}"\n'
            f'volume_path = "{r / "volumes"}"\n'
            "[network]\n"
            'network_backend = "netavark"\n'
            f'network_config_dir = "{r / "networks"}"\n'
        )
        # No registry is searched: every image here is localhost/... and built locally.
        self.registries_conf.write_text("unqualified-search-registries = []\n")

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_CONF=str(self.containers_conf),
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            BUILDAH_FORMAT="docker",
        )
        return env

    def run(
        self,
        tool: str,
        *args: str,
        timeout: float = 120,
        check: bool = True,
        inside: Sequence[str] = (),
    ) -> Result:
        """``tool args`` (podman or buildah) on this store; raises with its output if it fails.
        ``inside``: a command prefix to run it under (``nsenter --net=...``)."""
        proc = subprocess.run(
            [*inside, tool, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return result

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> Result:
        return self.run("podman", *args, timeout=timeout, check=check)

    def buildah(
        self, *args: str, timeout: float = 300, check: bool = True, inside: Sequence[str] = ()
    ) -> Result:
        return self.run("buildah", *args, timeout=timeout, check=check, inside=inside)

    def run_once(self, *args: str, timeout: float = 60, check: bool = True) -> Result:
        """``podman run ARGS`` to completion: detached, then polled. podman 4.3's own
        foreground wait sits out a 20 s conmon timeout on these machines after every exit."""
        started = self.podman("run", "--detach", *args, check=check)
        if started.code != 0:
            return started
        container = started.out.strip()
        deadline = time.monotonic() + timeout
        try:
            while True:
                state = self.podman(
                    "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container
                ).out.split()
                if state[0] in ("exited", "stopped"):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"podman run {' '.join(args)}: still {state[0]}")
                time.sleep(0.1)
            logs = self.podman("logs", container)
        finally:
            self.podman("rm", "--force", "--time", "0", container, check=False)
        result = Result(int(state[1]), logs.out, logs.err)
        if check and result.code != 0:
            raise AssertionError(
                f"podman run {' '.join(args)} exited {result.code}:\n{result.out}\n{result.err}"
            )
        return result

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One preparer at a time (CI's script and a test run may overlap)."""
        with (self.cache / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- the base image ------------------------------------------------------------------

    def base_key(self) -> str:
        sources = DEBIAN_SOURCES.read_bytes() if DEBIAN_SOURCES.exists() else b""
        spec = "\n".join([BASE_SUITE, *BASE_PACKAGES]).encode() + sources
        return hashlib.sha256(spec).hexdigest()[:12]

    @property
    def base_image(self) -> str:
        return f"localhost/credential-sidecar-ci/{BASE_SUITE}-python3:{self.base_key()}"

    def base_tarball(self) -> Path:
        """mmdebstrap's tarball, made once per package list and Debian sources (~30 s)."""
        tarball = self.cache / f"{BASE_SUITE}-python3-{self.base_key()}.tar"
        if tarball.exists():
            return tarball
        partial = tarball.with_suffix(".partial")
        command = [
            "mmdebstrap",
            "--quiet",
            "--variant=apt",
            f"--include={','.join(BASE_PACKAGES)}",
            "--format=tar",
            BASE_SUITE,
            str(partial),
        ]
        if DEBIAN_SOURCES.exists():
            command.append(str(DEBIAN_SOURCES))
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AssertionError(f"mmdebstrap failed:\n{proc.stderr[-4000:]}")
        with tarfile.open(partial) as tar:  # a truncated tarball must not be cached
            assert any(n.endswith("usr/bin/python3") for n in tar.getnames())
        partial.rename(tarball)
        return tarball

    def ensure_base(self) -> str:
        """The base image in this store (imported from the cached tarball if missing)."""
        with self.locked():
            if self.podman("image", "exists", self.base_image, check=False).code != 0:
                self.podman("import", str(self.base_tarball()), self.base_image, timeout=300)
        return self.base_image

    def build(
        self,
        tag: str,
        context: Path,
        *extra: str,
        dockerfile: Path | None = None,
        layers: bool = True,
        timeout: float = 600,
        check: bool = True,
        network: str = "host",
        inside: Sequence[str] = (),
    ) -> Result:
        """``buildah bud`` from the base image: docker format (keeps HEALTHCHECK), no pull,
        host network unless told (no bridge, no iptables chains), the host's CA bundle as a
        secret; ``inside`` a command prefix (a bridge network's namespace)."""
        args = [
            "bud",
            "--format",
            "docker",
            "--pull=never",
            "--network",
            network,
            f"--layers={'true' if layers else 'false'}",
            "--force-rm",  # a failed build leaves no working container behind
            "--build-arg",
            f"BASE={self.ensure_base()}",
            "--tag",
            tag,
            "--file",
            str(dockerfile or context / "Dockerfile"),
        ]
        if CA_BUNDLE.is_file():
            args += ["--secret", f"id=ca-bundle,src={CA_BUNDLE}"]
        return self.buildah(
            *args, *extra, str(context), timeout=timeout, check=check, inside=inside
        )


def unavailable_reason() -> str | None:
    """Why this machine cannot run the container tests, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed: {INSTALL_HINT}"
    return None


def kernel_refuses(store: Store) -> str | None:
    """Run ``true`` in a container (no network); the runtime's error if the kernel refuses."""
    result = store.run_once("--network", "none", store.ensure_base(), "true", check=False)
    return None if result.code == 0 else (result.err.strip() or f"exit {result.code}")


def prepare() -> int:
    """Warm the cache: the base tarball, the store and the base image in it."""
    reason = unavailable_reason()
    if reason:
        print(f"containers: {reason}", file=sys.stderr)
        return 1
    started = time.monotonic()
    store = Store()
    image = store.ensure_base()
    # Old build-cache layers (each code change leaves one set) go after three days.
    store.podman("image", "prune", "--force", "--filter", "until=72h")
    refused = kernel_refuses(store)
    if refused:
        print(f"containers: cannot run a container here: {refused}", file=sys.stderr)
        return 1
    print(f"containers: {image} ready in {store.root} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(prepare())
