"""Real peers for tests: the STS emulator in a background thread, daemon processes.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.devmode.environment import serve_emulator
from sidecar.devmode.issuer import OidcIssuer
from sidecar.devmode.sts_emulator import StsEmulator
from tests import netns

REPO = Path(__file__).resolve().parent.parent


class EmulatorThread:
    """The dev-mode issuer + STS emulator, served from a thread with its own event loop.

    Tests change its behaviour over HTTP (``add_fault``), as a user would.
    """

    url: str
    issuer: OidcIssuer
    emulator: StsEmulator

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="sts-emulator", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve_emulator() as (url, issuer, emulator):
            self.url, self.issuer, self.emulator = url, issuer, emulator
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("STS emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - loopback URL we built
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return json.loads(response.read())

    def add_fault(self, **spec: Any) -> None:
        self._call("POST", "/_emulator/faults", spec)

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")

    def calls(self, action: str = "AssumeRoleWithWebIdentity") -> int:
        return int(self._call("GET", "/_emulator/stats")["calls"].get(action, 0))

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("GET", "/_emulator/stats")
        return stats

    def last_subject(self) -> str | None:
        subject = self.stats()["last_subject"]
        return None if subject is None else str(subject)

    def last_params(self, action: str) -> dict[str, str]:
        return dict(self.stats()["last_params"].get(action, {}))


ROLE_ARN = "arn:aws:iam::123456789012:role/ci"


def emulator_args(
    emulator: EmulatorThread, token_file: Path, auth_file: Path, *extra: str
) -> list[str]:
    """``serve`` arguments for one role exchanged with the emulator, on a free port."""
    return [
        "--role-arn",
        ROLE_ARN,
        "--token-file",
        str(token_file),
        "--sts-endpoint",
        emulator.url,
        "--auth-token-file",
        str(auth_file),
        "--listen",
        "127.0.0.1:0",
        *extra,
    ]


def clean_aws_env(**extra: str) -> dict[str, str]:
    """The current environment minus anything that could point an SDK elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "SIDECAR_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY")
    }
    env.update(
        {
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    env.update(extra)
    return env


def run_sidecar(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m sidecar ARGS`` to completion, output captured, in a clean AWS env."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env if env is not None else clean_aws_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def serve_dev_in(namespace: netns.Namespace, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """``serve --dev`` with ``flags`` inside ``namespace``, once every listener is up (dev
    mode then prints its instructions): the process and its STS emulator's URL. Fails the
    test with the daemon's stderr if it never gets there."""
    server = namespace.popen(
        [sys.executable, "-m", "sidecar", "serve", "--dev", *flags],
        cwd=REPO,
        env=clean_aws_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("export AWS_ENDPOINT_URL_STS="):
            return server, line.split("=", 1)[1].strip()
    server.kill()
    pytest.fail(f"the daemon did not start:\n{server.communicate(timeout=10)[1]}")


def run_node(script: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the JavaScript SDK client script; its one-line JSON report."""
    result = subprocess.run(
        ["node", str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


class DaemonProcess:
    """``python -m sidecar serve`` as a real child process with JSON logs on stderr."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "sidecar", "serve", "--log-format", "json", *args]
        self.env = env if env is not None else clean_aws_env()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.url = ""
        self._readers: list[threading.Thread] = []

    def start(self, wait_for: str | None = "started", timeout: float = 20) -> DaemonProcess:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if wait_for:
            started = self.wait_event(wait_for, timeout)
            self.url = str(started.get("url", ""))
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            with contextlib.suppress(ValueError):
                self._events.put(json.loads(line))

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)

    def wait_event(self, name: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    break
                continue
            if event.get("event") == name:
                return event
        raise AssertionError(f"no {name!r} event; daemon output:\n{self.output}")

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every logged event called ``name`` so far (wait_event consumes; this does not)."""
        found = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    @property
    def output(self) -> str:
        return "".join(self.stdout_lines) + "".join(self.lines)

    def auth_token(self) -> str:
        """The token in the daemon's --auth-token-file (the daemon may have generated it)."""
        return Path(self.args[self.args.index("--auth-token-file") + 1]).read_text()

    @property
    def base(self) -> str:
        return self.url.rsplit("/v1/", 1)[0]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        """Send ``signum``; return (exit code, seconds it took to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        elapsed = time.monotonic() - started
        self._drain()
        return code, elapsed

    def wait(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._drain()
        return code

    def _drain(self) -> None:
        """After exit: read what is left of the output, then close the pipes."""
        for reader in self._readers:
            reader.join(5)
        assert self.proc is not None
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._drain()


@contextlib.contextmanager
def daemon(
    args: Sequence[str], env: dict[str, str] | None = None, wait_for: str | None = "started"
) -> Iterator[DaemonProcess]:
    process = DaemonProcess(args, env)
    try:
        yield process.start(wait_for)
    finally:
        process.kill()


def http_get(
    url: str, token: str | None = None, timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    """A GET with an optional Authorization header: (status, headers, body), no raising."""
    request = urllib.request.Request(url)  # noqa: S310 - loopback
    if token is not None:
        request.add_header("Authorization", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
