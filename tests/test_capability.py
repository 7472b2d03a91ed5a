"""The capability endpoint in-process: ids, the 404 for unknown ids, rate limit, rebinding."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web_request import BaseRequest

from sidecar.config import load_config
from sidecar.core.errors import ConfigError
from sidecar.outputs.capability import create_capability_router
from sidecar.outputs.http import LogThrottle
from sidecar.outputs.ratelimit import FailureLimiter
from sidecar.tenancy.auth_tokens import AuthToken
from sidecar.tenancy.capability import (
    CapabilityRole,
    CapabilityTenancy,
    find_role,
    load_ids,
    relative_uri,
)
from tests.fakes import FakeClock, FakeRole, client_of, fake_role, settle

ROLES = ("default", "deploy")


@dataclass
class Harness:
    client: TestClient[BaseRequest, None]
    roles: dict[str, FakeRole]
    ids: dict[str, AuthToken]
    tasks: list[asyncio.Task[None]]

    def uri(self, role: str) -> str:
        return relative_uri(self.ids[role].path.read_text())


async def start(tmp_path: Path, limiter_burst: int | None = None) -> Harness:
    roles = {name: fake_role(name=name) for name in ROLES}
    clock: FakeClock = roles["default"].clock
    ids = await load_ids(tmp_path / "ids", ROLES)
    tenancy = CapabilityTenancy({n: CapabilityRole(roles[n].refresher, ids[n]) for n in ROLES})
    limiter = (
        FailureLimiter(1.0, limiter_burst, clock.monotonic) if limiter_burst is not None else None
    )
    app = create_capability_router(
        tenancy,
        roles["default"].metrics,
        0.2,
        LogThrottle(monotonic=clock.monotonic),
        audit=True,
        limiter=limiter,
    )
    client = client_of(app)
    await client.start_server()
    tasks = [asyncio.create_task(r.refresher.run()) for r in roles.values()]
    await settle()
    return Harness(client, roles, ids, tasks)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start(tmp_path)
    yield h
    for task in h.tasks:
        task.cancel()
    await h.client.close()


async def test_each_id_gets_its_own_role_without_authorization(served: Harness) -> None:
    """/v2/credentials/<id> answers the credentials of the id's role; no auth header needed."""
    for name in ROLES:
        response = await served.client.get(served.uri(name))
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        body = json.loads(await response.read())
        snap = served.roles[name].refresher.servable()
        assert snap is not None
        assert body["AccessKeyId"] == snap.credentials.access_key_id
        assert body["Token"] == snap.credentials.session_token


async def test_an_authorization_header_is_ignored(served: Harness) -> None:
    """Like the ECS agent, the id alone opens the role, whatever Authorization says."""
    response = await served.client.get(served.uri("deploy"), headers={"Authorization": "junk"})
    assert response.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v2/credentials/not-an-id",
        "/v2/credentials/" + "A" * 43,
        "/v2/credentials/%E2%82%AC",
    ],
)
async def test_unknown_id_is_a_json_404(served: Harness, path: str) -> None:
    """An unknown id: 404, JSON with both spellings, no credential in it."""
    response = await served.client.get(path)
    assert response.status == 404
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(await response.read())
    assert body["code"] == body["Code"] == "UnknownCredentialsId"
    assert body["message"] == body["Message"]
    assert "ASIA" not in json.dumps(body)


async def test_other_paths_are_json_404s(served: Harness) -> None:
    """Only /v2/credentials/<id> is served: /v1/credentials and /metrics are not here."""
    for path in ("/v1/credentials", "/metrics", "/v2/credentials/"):
        response = await served.client.get(path)
        assert response.status == 404, path
        assert response.headers["Content-Type"] == "application/json"


async def test_a_right_id_with_a_suffix_is_unknown(served: Harness) -> None:
    """The whole id must match: a real id with a character more or less is a 404."""
    uri = served.uri("default")
    for path in (uri + "x", uri[:-1]):
        assert (await served.client.get(path)).status == 404


class CountingToken(AuthToken):
    """An AuthToken that records every comparison made with it."""

    checked: list[str]

    def check(self, presented: str | None) -> bool:
        self.checked.append(str(self.path))
        return super().check(presented)


def test_find_role_compares_with_every_id(tmp_path: Path) -> None:
    """The lookup never stops at a match: every id is compared, whichever role matched."""
    checked: list[str] = []
    ids = {}
    for name in ("a", "b", "c"):
        token = CountingToken(tmp_path / name, f"{name}-capability-id-0123456789")
        token.checked = checked
        ids[name] = token
    assert find_role("a-capability-id-0123456789", ids) == "a"
    assert len(checked) == 3
    checked.clear()
    assert find_role("nobody-0123456789abcdef", ids) is None
    assert len(checked) == 3
    assert find_role("c-capability-id-0123456789", ids) == "c"


async def test_ids_are_random_0600_and_reused_across_restarts(tmp_path: Path) -> None:
    """Each role's id file is created 0600 in a 0700 directory, holds >= 128 random bits,
    and a second start (a restart) reads the same ids rather than making new ones."""
    directory = tmp_path / "ids"
    first = await load_ids(directory, ROLES)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    texts = {}
    for name in ROLES:
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        texts[name] = path.read_text()
        assert len(texts[name]) >= 43  # token_urlsafe(32): 256 bits
        assert first[name].check(texts[name])
    assert texts["default"] != texts["deploy"]
    again = await load_ids(directory, ROLES)
    for name in ROLES:
        assert (directory / name).read_text() == texts[name]
        assert again[name].check(texts[name])


async def test_a_bad_id_file_is_a_clear_error(tmp_path: Path) -> None:
    """An id file ending in a newline is refused, named as a capability id file."""
    directory = tmp_path / "ids"
    directory.mkdir(mode=0o700)
    (directory / "default").write_text("x" * 43 + "\n")
    with pytest.raises(Exception, match=r"capability id file .*default: has leading or trailing"):
        await load_ids(directory, ["default"])


async def test_guessing_is_rate_limited_per_client(tmp_path: Path) -> None:
    """Unknown ids spend the client's failure budget: after the burst, 429 with Retry-After;
    the right id is still served to that client."""
    h = await start(tmp_path, limiter_burst=3)
    try:
        statuses = [(await h.client.get(f"/v2/credentials/guess{i}")).status for i in range(5)]
        assert statuses == [404, 404, 404, 429, 429]
        response = await h.client.get("/v2/credentials/guess-again")
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert json.loads(await response.read())["Code"] == "TooManyRequests"
        assert (await h.client.get(h.uri("default"))).status == 200
    finally:
        for task in h.tasks:
            task.cancel()
        await h.client.close()


async def test_ids_never_reach_the_log(served: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Neither a guessed id (a refusal) nor a real one (an audited answer) is logged."""
    caplog.set_level(logging.DEBUG)
    guess = "guessed-id-0123456789abcdef"
    assert (await served.client.get(f"/v2/credentials/{guess}")).status == 404
    assert (await served.client.get(served.uri("default"))).status == 200
    real = served.ids["default"].path.read_text()
    # The test server's own access log (the daemon's listeners have none) is not ours.
    ours = [r for r in caplog.records if r.name.startswith("sidecar")]
    assert ours
    for record in ours:
        text = json.dumps(vars(record), default=str)
        assert guess not in text
        assert real not in text
    assert any(getattr(r, "event", None) == "served" for r in caplog.records)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "attacker.example"}, 403),
        ({"Host": "attacker.example:80"}, 403),
        ({"Origin": "http://attacker.example"}, 403),
        ({"Host": "169.254.170.2"}, 200),
        ({"Host": "169.254.170.2:80"}, 200),
        ({"Host": "169.254.170.2:8080"}, 403),
    ],
)
async def test_dns_rebinding_is_refused(
    served: Harness, headers: dict[str, str], status: int
) -> None:
    """No client auth, so a web page's requests (another Host, an Origin) are refused; the
    literal 169.254.170.2 (a DNAT rule to this listener) is accepted."""
    response = await served.client.get(served.uri("default"), headers=headers)
    assert response.status == status


async def test_a_deleted_id_file_revokes_the_id(served: Harness) -> None:
    """Deleting a role's id file revokes that id at the next look (rotation machinery)."""
    uri = served.uri("deploy")
    served.ids["deploy"].path.unlink()
    await served.ids["deploy"].poll()
    assert (await served.client.get(uri)).status == 404
    assert (await served.client.get(served.uri("default"))).status == 200


BASE = {
    "role_arn": "arn:aws:iam::123456789012:role/ci",
    "token_file": __file__,
    "insecure_no_auth": "1",
}


def test_relative_listen_needs_an_id_directory() -> None:
    """--relative-listen without --relative-id-dir is a configuration error naming the fix."""
    with pytest.raises(ConfigError, match="--relative-listen needs --relative-id-dir DIR"):
        load_config({**BASE, "relative_listen": "127.0.0.1:0"}, {})


def test_relative_listen_binds_only_local_addresses(tmp_path: Path) -> None:
    """No client auth: 0.0.0.0 or a routable address needs the loud override."""
    flags = {**BASE, "relative_listen": "0.0.0.0:80", "relative_id_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="exposes the capability endpoint"):
        load_config(flags, {})
    config = load_config(
        {**flags, "insecure_allow_unauthenticated_network_listener": "1"}, {}
    ).server
    assert (config.relative_host, config.relative_port) == ("0.0.0.0", 80)  # noqa: S104
    local = load_config({**flags, "relative_listen": "169.254.170.2:80"}, {}).server
    assert local.relative_id_dir == tmp_path


def test_relative_listen_must_be_an_address(tmp_path: Path) -> None:
    """A malformed --relative-listen is named with the expected form."""
    flags = {**BASE, "relative_listen": "somewhere", "relative_id_dir": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"--relative-listen=.* is not a listen address"):
        load_config(flags, {})
