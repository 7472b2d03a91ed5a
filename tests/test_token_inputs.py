"""Token inputs are bounded and never block: file caps, FIFOs, stuck readers, command groups."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.core import fdlimit
from sidecar.core.bounded_command import run_bounded
from sidecar.core.clock import SystemClock
from sidecar.core.errors import TokenError
from sidecar.core.fdlimit import raise_open_file_limit
from sidecar.core.safe_read import OffLoopReader, read_small_file
from sidecar.devmode.issuer import OidcIssuer
from sidecar.sources.command import CommandTokenSource
from sidecar.sources.env import EnvTokenSource
from sidecar.sources.file import FileTokenSource
from sidecar.sources.github import GithubTokenSource

ISSUER = OidcIssuer("https://oidc.example/ci")
REQUEST_TOKEN = "ghs_request-token-0123456789"


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie nobody reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[list[Path]]:
    """FIFOs nobody writes to; unblocked at teardown so a reader stuck in open() can finish."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue  # no reader is waiting
        os.close(fd)


def _fifo(tmp_path: Path, fifos: list[Path], name: str = "token") -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    fifos.append(path)
    return path


async def test_oversized_token_file_is_refused(tmp_path: Path) -> None:
    """A token file larger than 64 KiB is refused naming the file and the cap."""
    path = tmp_path / "token"
    with path.open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(TokenError, match="is larger than 64 KiB") as caught:
        await FileTokenSource(path, SystemClock()).fetch()
    assert str(path) in str(caught.value)


def test_reading_stops_one_byte_past_the_cap(tmp_path: Path) -> None:
    """A file that grows past the cap after fstat is read to cap + 1 bytes at most."""
    path = tmp_path / "token"
    path.write_bytes(b"a" * 100)
    data, _ = read_small_file(path, TokenError, limit=100)
    assert data == b"a" * 100
    path.write_bytes(b"a" * 101)
    with pytest.raises(TokenError, match="larger than 100 bytes"):
        read_small_file(path, TokenError, limit=100)


async def test_fifo_token_file_is_refused_without_blocking(
    tmp_path: Path, fifos: list[Path]
) -> None:
    """A FIFO as the token file fails at once with a clear error instead of blocking."""
    path = _fifo(tmp_path, fifos)
    with pytest.raises(TokenError, match=r"is a FIFO \(named pipe\), not a regular file"):
        await asyncio.wait_for(FileTokenSource(path, SystemClock()).fetch(), 5)


async def test_directory_as_token_file_is_refused(tmp_path: Path) -> None:
    """A directory is not a token file: refused by type, not by a read error."""
    with pytest.raises(TokenError, match="is a directory, not a regular file"):
        await FileTokenSource(tmp_path, SystemClock()).fetch()


async def test_broken_source_does_not_starve_another(tmp_path: Path, fifos: list[Path]) -> None:
    """Forty roles with FIFO token files leave a healthy role's file source working."""
    broken = [FileTokenSource(_fifo(tmp_path, fifos, f"fifo{i}"), SystemClock()) for i in range(40)]
    for source in broken:
        with pytest.raises(TokenError):
            await asyncio.wait_for(source.fetch(), 2)
    healthy = tmp_path / "healthy"
    healthy.write_text(ISSUER.mint("healthy"))
    fetched = await asyncio.wait_for(FileTokenSource(healthy, SystemClock()).fetch(), 5)
    assert fetched.claims.subject == "healthy"


async def test_stuck_reader_fails_fast_and_spares_other_sources(tmp_path: Path) -> None:
    """A read that never returns times out once, then fails fast; other sources still read."""
    release = threading.Event()
    stuck = OffLoopReader("stuck", timeout=0.05)
    try:
        with pytest.raises(TokenError, match=r"did not finish within 0\.05s"):
            await stuck.run(release.wait, TokenError)
        assert stuck.stuck
        with pytest.raises(TokenError, match="previous read has not returned"):
            await stuck.run(lambda: True, TokenError)
        healthy = tmp_path / "healthy"
        healthy.write_text("ok")
        other = OffLoopReader("other")
        assert await other.run(lambda: healthy.read_text(), TokenError) == "ok"
    finally:
        release.set()


def test_stuck_reader_does_not_hold_up_process_exit() -> None:
    """A process whose off-loop read never returns still exits when its loop finishes."""
    script = (
        "import asyncio, threading\n"
        "from sidecar.core.safe_read import OffLoopReader\n"
        "async def main():\n"
        "    try:\n"
        "        await OffLoopReader('x', timeout=0.1).run(threading.Event().wait, RuntimeError)\n"
        "    except RuntimeError as exc:\n"
        "        print(exc)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "did not finish" in result.stdout


async def test_oversized_command_output_is_refused() -> None:
    """A token command printing 10 MB is stopped at 64 KiB with a clear error."""
    argv = (sys.executable, "-c", "import sys; sys.stdout.write('a' * 10_000_000)")
    with pytest.raises(TokenError, match="printed more than 65536 bytes"):
        await CommandTokenSource(argv, 10, SystemClock()).fetch()


async def test_command_stderr_flood_keeps_only_the_end() -> None:
    """Of a failing command's error output only the end is kept for the message."""
    script = "import sys; sys.stderr.write('x' * 5_000_000 + 'THE END'); sys.exit(2)"
    with pytest.raises(TokenError, match=r"exited with status 2: x+THE END$") as caught:
        await CommandTokenSource((sys.executable, "-c", script), 10, SystemClock()).fetch()
    assert len(str(caught.value)) < 1000


async def test_command_error_output_is_shown_without_tokens() -> None:
    """A failing helper that printed a bearer token (curl -v, set -x): the error keeps the
    shape of its output, never the token."""
    bearer = ISSUER.mint("x")
    script = (
        f"import sys; sys.stderr.write('> Authorization: Bearer {bearer}\\n"
        "< HTTP/1.1 401 Unauthorized'); sys.exit(22)"
    )
    with pytest.raises(TokenError) as caught:
        await CommandTokenSource((sys.executable, "-c", script), 10, SystemClock()).fetch()
    message = str(caught.value)
    assert "Authorization: Bearer <redacted>" in message
    assert "401 Unauthorized" in message
    assert bearer not in message and bearer.split(".")[1] not in message


async def test_command_timeout_kills_its_background_processes(tmp_path: Path) -> None:
    """A command whose background helper holds its output: the whole group dies, no fd leaks."""
    token = tmp_path / "token"
    token.write_text(ISSUER.mint("x"))
    pid_file = tmp_path / "helper.pid"
    script = f"sleep 300 & echo $! > {pid_file}; cat {token}"
    before = _open_fds()
    with pytest.raises(TokenError, match="output pipe was still open") as caught:
        await CommandTokenSource(("sh", "-c", script), 0.5, SystemClock()).fetch()
    assert "a background process it started kept it open" in str(caught.value)
    helper = int(pid_file.read_text())
    assert _wait_dead(helper), f"background helper {helper} survived"
    assert _open_fds() == before


async def test_cancelled_command_leaves_nothing_behind(tmp_path: Path) -> None:
    """Cancelling a fetch (shutdown) kills the command and everything it started."""
    pid_file = tmp_path / "pids"
    script = f"sleep 300 & echo $$ $! > {pid_file}; sleep 300"
    before = _open_fds()
    fetch = asyncio.create_task(CommandTokenSource(("sh", "-c", script), 60, SystemClock()).fetch())
    for _ in range(500):
        if pid_file.exists() and pid_file.read_text().count(" ") == 1:
            break
        await asyncio.sleep(0.01)
    pids = [int(p) for p in pid_file.read_text().split()]
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    for pid in pids:
        assert _wait_dead(pid), f"process {pid} survived the cancelled fetch"
    assert _open_fds() == before


async def test_oversized_env_token_is_refused() -> None:
    """A variable holding 100 KiB is refused by size, not parsed."""
    source = EnvTokenSource("BIG", {"BIG": "a" * 100_000}, SystemClock())
    with pytest.raises(TokenError, match="more than 64 KiB"):
        await source.fetch()


@pytest.fixture
async def huge_github() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """A token endpoint that streams 300 MiB without a Content-Length."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * 1024 * 1024
        for _ in range(300):
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_get("/token", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield str(server.make_url("/token")), session
    await server.close()


async def test_oversized_github_response_is_refused(
    huge_github: tuple[str, aiohttp.ClientSession],
) -> None:
    """A 300 MiB token response is abandoned once past 64 KiB."""
    url, session = huge_github
    source = GithubTokenSource(url, REQUEST_TOKEN, "sts.amazonaws.com", SystemClock(), session)
    with pytest.raises(TokenError, match="more than 64 KiB"):
        await source.fetch()


async def test_token_command_gets_back_the_open_file_limit() -> None:
    """A token command does not inherit the daemon's raised soft open-file limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    started_with = min(512, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (started_with, hard))
    try:
        _, raised = raise_open_file_limit()
        assert raised > started_with
        # The command looks after a moment: its limit is given back right after it starts.
        result = await run_bounded(
            ["sh", "-c", "sleep 0.3; ulimit -Sn"],
            10,
            TokenError,
            stdout_limit=1024,
            stderr_kept=1024,
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        fdlimit.forget()
    assert result.stdout.strip() == str(started_with).encode()


async def test_helper_outliving_a_successful_command_is_killed(tmp_path: Path) -> None:
    """A command that succeeds but leaves a helper behind (its output redirected away):
    the helper, still in the command's group, is killed after the run."""
    token = tmp_path / "token"
    token.write_text(ISSUER.mint("x"))
    pid_file = tmp_path / "helper.pid"
    script = f"sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}; cat {token}"
    fetched = await CommandTokenSource(("sh", "-c", script), 10, SystemClock()).fetch()
    assert fetched.claims.subject == "x"
    helper = int(pid_file.read_text())
    assert _wait_dead(helper), f"background helper {helper} survived"
