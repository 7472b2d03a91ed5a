"""The SDK compatibility matrix (tests/sdk_matrix/matrix.py), every cell run for real.

One network namespace holds everything: the daemon in dev mode (its STS emulator, which
verifies SigV4, is in there too) with its container endpoint, IMDS on loopback and the
capability endpoint on 169.254.170.2:80 (put on the namespace's ``lo`` by ``link-local
up``), and every client. A client that ignores an endpoint setting can reach no real
address. Each cell runs one client one way; the client makes a signed GetCallerIdentity to
the emulator with what it got, and the cell passes only if the answer is the dev role, so a
client that found credentials anywhere else fails. Cells the matrix marks unsupported are
run too and must fail, so the table is corrected when a client learns a way.

Clients not installed here skip (``.ci/sdks.sh`` installs them); under ``CI=true`` they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import netns
from tests.peers import REPO
from tests.sdk_matrix import clients
from tests.sdk_matrix.matrix import CLIENTS, WAYS, Client, Way

DEV_ROLE_SESSION = "arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/"
CELL_TIMEOUT = 90.0  # seconds: a cold `exec` starts a daemon, then the client
PARALLEL = 4  # cells at once; the clients mostly wait on process start-up
# The first test also runs the module's fixture: every cell (about 50 s warm, on 2 cores),
# plus the Go builds when cold.
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Daemon:
    """What the daemon in the namespace offers, as its dev-mode instructions print it."""

    full_uri: str
    token_file: str
    imds_endpoint: str
    sts_url: str
    relative_uri: str = field(repr=False)  # its id is a credential: not in failure output


@dataclass(frozen=True)
class Outcome:
    """What one client did one way."""

    passed: bool
    arn: str | None
    version: str | None
    detail: str  # exit code and output, for the failure message


@dataclass
class MatrixRun:
    cells: dict[tuple[str, str], Outcome | clients.Missing]
    versions: dict[str, str | None]
    namespace: netns.Namespace
    daemon: Daemon
    work: Path


def _start_daemon(namespace: netns.Namespace, work: Path) -> Daemon:
    ids = work / "ids"
    stderr = (work / "daemon.log").open("w")
    server = namespace.popen(
        [
            *(sys.executable, "-m", "sidecar", "serve", "--dev"),
            *("--imds-listen", "127.0.0.1:0"),
            *("--relative-listen", "169.254.170.2:80", "--relative-id-dir", str(ids)),
        ],
        cwd=REPO,
        env=_base_env(work),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    stderr.close()
    assert server.stdout is not None
    printed: dict[str, str] = {}
    for line in server.stdout:  # dev mode prints its instructions once every listener is up
        name, _, value = line.removeprefix("# or, for IMDS clients: ").partition("=")
        printed[name.removeprefix("export ")] = value.strip()
        if name == "export AWS_ENDPOINT_URL_STS":
            break
    else:
        pytest.fail(f"the daemon did not start:\n{(work / 'daemon.log').read_text()}")
    # Nobody reads the rest, but the pipe must not fill up and stall the daemon.
    threading.Thread(target=server.stdout.read, daemon=True).start()
    return Daemon(
        full_uri=printed["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        token_file=printed["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
        imds_endpoint=printed["AWS_EC2_METADATA_SERVICE_ENDPOINT"],
        sts_url=printed["AWS_ENDPOINT_URL_STS"],
        relative_uri="/v2/credentials/" + (ids / "default").read_text(),
    )


def _base_env(work: Path) -> dict[str, str]:
    """No AWS setting from the outside, an empty home and empty AWS files."""
    home = work / "home"
    home.mkdir(exist_ok=True)
    for name in ("config", "credentials"):
        (work / name).touch()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SIDECAR_")) and k.upper() not in ("HTTP_PROXY", "HTTPS_PROXY")
    }
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE=str(work / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "credentials"),
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        NO_PROXY="127.0.0.1,localhost,169.254.170.2",
    )
    return env


def _way_env(way: Way, daemon: Daemon, work: Path) -> dict[str, str]:
    """The environment a process gets for ``way``: that one way in, nothing else."""
    env = _base_env(work)
    env["AWS_ENDPOINT_URL_STS"] = daemon.sts_url
    if way.key == "full_uri_token":
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = daemon.full_uri
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = Path(daemon.token_file).read_text()
    elif way.key == "full_uri_token_file":
        env["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = daemon.full_uri
        env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = daemon.token_file
    elif way.key == "relative_uri":
        env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] = daemon.relative_uri
    elif way.key == "imds":
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = daemon.imds_endpoint
    elif way.key == "credential_process":
        config = work / "process-config"
        config.write_text(
            "[profile matrix]\n"
            f"credential_process = {sys.executable} -m sidecar credentials --format process"
            f" --url {daemon.full_uri} --auth-token-file {daemon.token_file}\n"
        )
        # AWS_SDK_LOAD_CONFIG: the JavaScript v2 and Go v1 SDKs read the config file only then.
        env.update(AWS_CONFIG_FILE=str(config), AWS_PROFILE="matrix", AWS_SDK_LOAD_CONFIG="1")
    elif way.key == "exec":
        pass  # `exec --dev` runs its own daemon and emulator and sets the child's variables
    else:
        raise AssertionError(f"unknown way {way.key}")
    return env


def _run_cell(
    namespace: netns.Namespace,
    argv: list[str],
    way: Way,
    daemon: Daemon,
    work: Path,
    **extra_env: str,
) -> Outcome:
    work.mkdir(parents=True)
    if way.key == "exec":
        argv = [sys.executable, "-m", "sidecar", "exec", "--dev", "--", *argv]
    env = {**_way_env(way, daemon, work), **extra_env}
    try:
        done = namespace.run(argv, env=env, cwd=work, check=False, timeout=CELL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Outcome(False, None, None, f"no answer in {CELL_TIMEOUT} s")
    detail = f"exit {done.returncode}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    answer = _answer(done.stdout)
    arn = answer.get("arn") or answer.get("Arn")
    passed = done.returncode == 0 and isinstance(arn, str) and arn.startswith(DEV_ROLE_SESSION)
    return Outcome(passed, arn, answer.get("version"), detail)


def _answer(stdout: str) -> Mapping[str, str]:
    """The client's JSON answer: the whole output (the CLI) or its last line (ours)."""
    for text in (stdout, (stdout.strip().splitlines() or [""])[-1]):
        try:
            answer = json.loads(text)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return {}


def _cli_version(argv: list[str]) -> str | None:
    """``aws --version`` says ``aws-cli/2.9.19 Python/...``."""
    shown = subprocess.run([argv[-1], "--version"], capture_output=True, text=True, check=False)
    first = (shown.stdout or shown.stderr).split(" ", 1)[0]
    return first.removeprefix("aws-cli/") if first.startswith("aws-cli/") else None


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixRun]:
    """Every cell of the matrix, run once in one namespace, some at a time."""
    commands = {client.key: clients.command(client) for client in CLIENTS}
    work = tmp_path_factory.mktemp("sdk-matrix")
    with netns.namespaces() as net:
        namespace = net.namespace("matrix")
        namespace.run([sys.executable, "-m", "sidecar", "link-local", "up"], cwd=REPO)
        daemon = _start_daemon(namespace, work)
        cells: dict[tuple[str, str], Outcome | clients.Missing] = {}
        with ThreadPoolExecutor(PARALLEL) as pool:
            futures = {}
            for client in CLIENTS:
                argv = commands[client.key]
                for way in WAYS:
                    if isinstance(argv, clients.Missing):
                        cells[client.key, way.key] = argv
                        continue
                    cell_dir = work / "cells" / f"{client.key}-{way.key}"
                    futures[client.key, way.key] = pool.submit(
                        _run_cell, namespace, argv, way, daemon, cell_dir
                    )
            cells.update({cell: future.result() for cell, future in futures.items()})
        versions: dict[str, str | None] = {}
        for client in CLIENTS:
            argv = commands[client.key]
            if isinstance(argv, clients.Missing):
                continue
            if client.runner.startswith("cli-"):
                versions[client.key] = _cli_version(argv)
            else:
                reported = (cells[client.key, way.key] for way in WAYS)
                versions[client.key] = next(
                    (o.version for o in reported if isinstance(o, Outcome) and o.version), None
                )
        yield MatrixRun(cells, versions, namespace, daemon, work)


def _missing(client: Client, missing: clients.Missing) -> None:
    message = f"{client.title}: {missing.reason} (.ci/sdks.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.parametrize(
    ("client", "way"),
    [(client, way) for client in CLIENTS for way in WAYS],
    ids=[f"{client.key}:{way.key}" for client in CLIENTS for way in WAYS],
)
def test_cell(matrix_run: MatrixRun, client: Client, way: Way) -> None:
    """The client gets the dev role's credentials this way and signs an STS call with them
    if the matrix says it can, and fails if the matrix says it cannot."""
    outcome = matrix_run.cells[client.key, way.key]
    if isinstance(outcome, clients.Missing):
        _missing(client, outcome)
        return
    reason = client.reason(way.key)
    if reason is None:
        assert outcome.passed, f"{client.title} via {way.title}:\n{outcome.detail}"
    else:
        assert not outcome.passed, (
            f"{client.title} now works via {way.title} although the matrix says "
            f"{reason!r}: update tests/sdk_matrix/matrix.py and the README"
        )


@pytest.mark.parametrize("client", [c for c in CLIENTS if c.version], ids=lambda c: c.key)
def test_installed_version(matrix_run: MatrixRun, client: Client) -> None:
    """The installed client is the version the matrix (and so the README) names."""
    if client.key not in matrix_run.versions:
        missing = matrix_run.cells[client.key, WAYS[0].key]
        assert isinstance(missing, clients.Missing)
        _missing(client, missing)
    assert matrix_run.versions[client.key] == client.version


def test_credentials_from_elsewhere_fail_the_cell(matrix_run: MatrixRun) -> None:
    """The pass criterion has teeth: a client that signs with credentials from another
    source (here static keys in its environment, which botocore prefers to the endpoint)
    does not pass, although the daemon was offered to it."""
    argv = clients.command(CLIENTS[0])
    assert not isinstance(argv, clients.Missing)
    outcome = _run_cell(
        matrix_run.namespace,
        argv,
        WAYS[0],
        matrix_run.daemon,
        matrix_run.work / "cells" / "control-static-keys",
        AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE",
        AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    assert not outcome.passed, outcome.detail
    assert outcome.arn is None or not outcome.arn.startswith(DEV_ROLE_SESSION)
