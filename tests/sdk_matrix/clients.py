"""Where the matrix's clients are installed and the command line that runs each one.

``.ci/sdks.sh`` installs them: Debian packages (AWS CLI v2, Go with the AWS SDKs for Go v1
and v2, Ruby aws-sdk-core), old botocore releases in venvs cached under
``${XDG_CACHE_HOME:-~/.cache}/credential-sidecar-ci/sdk``, the JavaScript SDKs from
tests/js/package-lock.json. The Go programs are built here in GOPATH mode against the
packaged sources (no module proxy needed) and cached by a hash of what went into them.
Every client prints one JSON line (``{"ok", "arn", "version"}`` or ``{"ok", "error"}``);
the AWS CLI prints its GetCallerIdentity answer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.peers import REPO
from tests.sdk_matrix.matrix import Client

HERE = Path(__file__).resolve().parent
JS_DIR = REPO / "tests" / "js"
GOPATH = Path("/usr/share/gocode")
GO_SDK_SOURCES = {
    "v1": GOPATH / "src/github.com/aws/aws-sdk-go",
    "v2": GOPATH / "src/github.com/aws/aws-sdk-go-v2",
}
# What says the packaged SDK's version (v2: one Go module per part): part of the build's key.
GO_SDK_VERSION_FILES = {
    "v1": ("aws/version.go",),
    "v2": (
        "aws/go_module_metadata.go",
        "config/go_module_metadata.go",
        "service/sts/go_module_metadata.go",
    ),
}
# The AWS CLI v2 as Debian packages it; a `pip install awscli` on PATH must not shadow it.
DEBIAN_AWS_CLI = Path("/usr/bin/aws")
# The CLI ignores AWS_ENDPOINT_URL_STS (v2.9) or may: the endpoint goes on its command line,
# expanded by a shell in the client's own environment (under `exec` that is exec's).
CLI_CALL = 'exec "$0" sts get-caller-identity --output json --endpoint-url "$AWS_ENDPOINT_URL_STS"'


def cache_dir() -> Path:
    """Where installed SDKs and built programs are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "credential-sidecar-ci" / "sdk"


@dataclass(frozen=True)
class Missing:
    """A client that is not installed here, and how to install it."""

    reason: str


def command(client: Client) -> list[str] | Missing:
    """The argv that runs ``client`` once, or why it cannot run here."""
    runner = client.runner
    if runner == "botocore":
        python = (
            Path(sys.executable)
            if not client.argument
            else cache_dir() / f"botocore-{client.argument}" / "bin" / "python"
        )
        if not python.exists():
            return Missing(f"no venv with botocore {client.argument} at {python.parent.parent}")
        return [str(python), str(HERE / "botocore_client.py")]
    if runner == "cli-v1":
        return ["sh", "-c", CLI_CALL, str(Path(sys.executable).parent / "aws")]
    if runner == "cli-v2":
        if not DEBIAN_AWS_CLI.exists():
            return Missing("the Debian awscli package is not installed")
        return ["sh", "-c", CLI_CALL, str(DEBIAN_AWS_CLI)]
    if runner in ("js-v2", "js-v3"):
        node = shutil.which("node")
        package = "aws-sdk" if runner == "js-v2" else "@aws-sdk/credential-providers"
        if node is None or not (JS_DIR / "node_modules" / package).is_dir():
            return Missing(f"node or {package} (npm ci in tests/js) is not installed")
        script = JS_DIR / f"matrix-{runner.removeprefix('js-')}.mjs"
        return [node, str(script), *([client.argument] if client.argument else [])]
    if runner == "go":
        return go_program(client.argument)
    if runner == "ruby":
        ruby = shutil.which("ruby")
        if (
            ruby is None
            or subprocess.run(
                [ruby, "-e", "require 'aws-sdk-core'"], capture_output=True, check=False
            ).returncode
        ):
            return Missing("ruby with aws-sdk-core (Debian ruby-aws-sdk-core) is not installed")
        return [ruby, str(HERE / "ruby_client.rb")]
    raise AssertionError(f"unknown runner {runner}")


def go_program(major: str) -> list[str] | Missing:
    """The Go SDK ``major`` (v1/v2) program, built once per source/toolchain/SDK version."""
    go = shutil.which("go")
    sdk = GO_SDK_SOURCES[major]
    if go is None or not sdk.is_dir():
        return Missing(f"go or the Debian AWS SDK for Go {major} sources ({sdk}) not installed")
    source = HERE / "go" / major / "main.go"
    toolchain = subprocess.run([go, "version"], capture_output=True, text=True, check=True)
    sdk_version = (sdk / ("aws/version.go" if major == "v1" else "go.mod")).read_bytes()
    sdk_version += (
        (sdk / "service/sts/go_module_metadata.go").read_bytes() if major == "v2" else b""
    )
    key = hashlib.sha256(source.read_bytes() + toolchain.stdout.encode() + sdk_version)
    binary = cache_dir() / "go" / f"sdk-go-{major}-{key.hexdigest()[:16]}"
    if binary.exists():
        return [str(binary)]
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    env = {
        **os.environ,
        "GO111MODULE": "off",  # GOPATH mode: the packaged sources, no module proxy
        "GOPATH": str(GOPATH),
        "GOCACHE": str(cache_dir() / "go" / "build-cache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",  # pure Go: no C compiler needed
    }
    built = subprocess.run(
        [go, "build", "-o", str(partial), "."],
        cwd=source.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if built.returncode != 0:
        raise AssertionError(f"go build of the SDK for Go {major} program failed:\n{built.stderr}")
    partial.rename(binary)
    return [str(binary)]
