"""The image, built and run: non-root, read-only, healthy, and serving another container."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.store import Store

pytestmark = pytest.mark.timeout(600)

TOKEN_DIR = "/run/sidecar"
UID = 10001

CLIENT = """
import json, botocore.session
session = botocore.session.get_session()
identity = session.create_client("sts").get_caller_identity()
print(json.dumps({"arn": identity["Arn"], "via": session.get_credentials().method}))
"""


def inspect(store: Store, what: str) -> dict[str, object]:
    data: list[dict[str, object]] = json.loads(store.podman("inspect", what).out)
    return data[0]


def test_image_is_non_root_with_entrypoint_and_healthcheck(store: Store, image: str) -> None:
    """The image runs as a numeric non-root UID, enters through credential-sidecar, and keeps
    a HEALTHCHECK that uses credential-sidecar itself (docker format keeps it)."""
    image_data = inspect(store, image)
    config, healthcheck = image_data["Config"], image_data["Healthcheck"]
    assert isinstance(config, dict) and isinstance(healthcheck, dict)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["credential-sidecar"]
    assert config["Cmd"] == ["serve"]
    assert healthcheck["Test"] == ["CMD", "credential-sidecar", "health"]
    assert not any(e.startswith(("AWS_ACCESS", "AWS_SECRET")) for e in config["Env"])


def test_final_stage_has_no_build_tools(store: Store, image: str) -> None:
    """Neither pip nor a compiler is in the final image: the venv left them in the build stage."""
    found = store.run_once(
        "--network",
        "none",
        "--read-only",
        "--entrypoint",
        "python3",
        image,
        "-c",
        "import shutil; print([t for t in ('pip', 'pip3', 'gcc', 'cc', 'make') "
        "if shutil.which(t)])",
    )
    assert found.out.strip() == "[]", found


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    """The auth token volume: a host directory only the image's UID may enter."""
    directory = tmp_path / "auth"
    directory.mkdir(mode=0o700)
    os.chown(directory, UID, UID)
    return directory


@pytest.fixture
def sidecar(store: Store, image: str, token_dir: Path) -> Iterator[str]:
    """``serve --dev`` in a container: read-only root, no network but its own loopback, the
    token directory the only writable mount besides a small /tmp for dev mode's files."""
    name = f"credential-sidecar-test-{secrets.token_hex(4)}"
    store.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "none",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs",
        "/tmp:rw,size=16m,mode=1777",
        "--cap-drop",
        "all",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        f"{token_dir}:{TOKEN_DIR}",
        image,
        "serve",
        "--dev",
    )
    try:
        yield name
    finally:
        store.podman("rm", "--force", "--time", "0", name, check=False)


def wait_healthy(store: Store, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while store.podman("healthcheck", "run", name, check=False).code != 0:
        logs = store.podman("logs", name, check=False)
        assert time.monotonic() < deadline, f"never healthy:\n{logs.out}\n{logs.err}"
        time.sleep(0.2)


def test_read_only_container_turns_healthy_and_serves_a_signed_sts_call(
    store: Store, image: str, sidecar: str, token_dir: Path
) -> None:
    """Read-only, non-root, no capabilities: the daemon writes only the auth token, its
    health check turns healthy, and a second container sharing its loopback (as in a pod)
    gets credentials with the token file and signs a GetCallerIdentity the dev-mode STS
    emulator verifies."""
    wait_healthy(store, sidecar)
    state = inspect(store, sidecar)["State"]
    assert isinstance(state, dict)
    assert state["Health"]["Status"] == "healthy"
    assert store.podman("exec", sidecar, "id", "-u").out.strip() == str(UID)
    assert [p.name for p in token_dir.iterdir()] == ["auth-token"]
    assert (token_dir / "auth-token").stat().st_mode & 0o777 == 0o600

    printed = store.podman("logs", sidecar).out
    sts = next(line.split("=", 1)[1] for line in printed.splitlines() if "_URL_STS=" in line)
    result = store.run_once(
        "--network",
        f"container:{sidecar}",
        "--read-only",
        "--no-healthcheck",
        "--volume",
        f"{token_dir}:{TOKEN_DIR}:ro",
        "--env",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/v1/credentials",
        "--env",
        f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={TOKEN_DIR}/auth-token",
        "--env",
        f"AWS_ENDPOINT_URL_STS={sts}",
        "--env",
        "AWS_DEFAULT_REGION=us-east-1",
        "--entrypoint",
        "python3",
        image,
        "-c",
        CLIENT,
    )
    answer = json.loads(result.out.strip().splitlines()[-1])
    assert answer["via"] == "container-role"
    assert answer["arn"].startswith(
        "arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/"
    )
    assert (token_dir / "auth-token").read_text() not in store.podman("logs", sidecar).err


def test_health_fails_while_nothing_serves(store: Store, image: str) -> None:
    """The health check fails (exit 1, not a traceback) when no daemon answers /readyz."""
    result = store.run_once("--network", "none", "--read-only", image, "health", check=False)
    assert result.code == 1, result
    assert "Traceback" not in result.err
