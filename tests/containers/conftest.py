"""Fixtures for the container tests: a private podman/buildah store and the built image.

Skipped, with the reason, only where this machine cannot run containers at all: the tools
missing and no root to install them, or the kernel refusing a container. With ``CI=true``
every one of those is a failure instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.containers.store import (
    REPO,
    Store,
    in_ci,
    kernel_refuses,
    unavailable_reason,
)

IMAGE = "localhost/credential-sidecar-ci/credential-sidecar:test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "containers" in item.path.parts:
            item.add_marker(pytest.mark.containers)


def _cannot(reason: str, can_install: bool) -> None:
    if in_ci():
        pytest.fail(f"CI=true, yet {reason}", pytrace=False)
    if can_install and os.geteuid() == 0:
        pytest.fail(f"{reason} (running as root, so this machine can)", pytrace=False)
    pytest.skip(f"this machine cannot run containers: {reason}")


@pytest.fixture(scope="session")
def store() -> Iterator[Store]:
    """The private store with the mmdebstrap base image in it; no container (nor buildah
    working container of a failed build) may outlive the session."""
    reason = unavailable_reason()
    if reason:
        _cannot(reason, can_install=True)
    store = Store()
    store.ensure_base()
    refused = kernel_refuses(store)
    if refused:
        _cannot(f"the kernel or runtime refuses a container: {refused}", can_install=False)
    yield store
    left = store.podman("ps", "--all", "--quiet").out.split()
    working = store.buildah("containers", "--quiet").out.split()
    for container in left:
        store.podman("rm", "--force", "--time", "0", container, check=False)
    for container in working:
        store.buildah("rm", container, check=False)
    assert not left and not working, f"left behind: containers {left}, buildah {working}"


@pytest.fixture(scope="session")
def image(store: Store) -> str:
    """The repository's Dockerfile built with buildah from the base (layers cached)."""
    store.build(IMAGE, REPO)
    return IMAGE
