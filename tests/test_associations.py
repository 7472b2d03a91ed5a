"""The associations file: parsing (every problem at once), and reloading it (a broken new
version keeps the associations in force)."""

from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from pathlib import Path

import pytest

from sidecar.config.settings import SESSION_NAME
from sidecar.core.errors import ConfigError
from sidecar.tenancy.associations import (
    MAX_ASSOCIATIONS_BYTES,
    load_associations,
    parse_associations,
    session_name_for,
)
from sidecar.tenancy.associations_file import POLL_INTERVAL, AssociationsFile
from tests.fakes import FakeClock, settle

AUDIENCE = "sts.amazonaws.com"
API = """
[[associations]]
namespace = "payments"
service_account = "api"
role_arn = "arn:aws:iam::111122223333:role/payments-api"
"""
CI = """
[[associations]]
namespace = "builds"
service_account = "ci"
role_arn = "arn:aws:iam::111122223333:role/builds-ci"
duration = 1800
session_name = "ci-session"
"""


def parse(text: str) -> object:
    return parse_associations(tomllib.loads(text), AUDIENCE, "associations.toml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.problems


def test_each_service_account_gets_its_role() -> None:
    """Associations are found by namespace and service account, with the role's options,
    the presented token's audience and a session name saying who it was."""
    found = parse_associations(tomllib.loads(API + CI), "my-audience", "test")
    assert len(found) == 2
    api = found.find("payments", "api")
    assert api is not None
    assert api.subject == "system:serviceaccount:payments:api"
    assert api.role.role_arn == "arn:aws:iam::111122223333:role/payments-api"
    assert api.role.token.audience == "my-audience"
    assert api.role.default_session_name == "payments.api"
    ci = found.find("builds", "ci")
    assert ci is not None and ci.role.duration == 1800
    assert ci.role.hops[0].session_name == "ci-session"
    assert found.find("payments", "ci") is None
    assert found.find("builds", "api") is None


def test_an_empty_file_has_no_associations() -> None:
    """A file with no [[associations]] is valid and associates nobody."""
    assert len(parse_associations({}, AUDIENCE, "test")) == 0


def test_every_problem_is_reported_at_once() -> None:
    """One error lists every problem in the file, each naming its association."""
    found = problems(
        """
        version = 2
        [[associations]]
        namespace = "Payments"
        service_account = "api"
        role_arn = "arn:aws:iam::111122223333:role/x"
        [[associations]]
        namespace = "ok"
        service_account = "ok"
        role_arn = "not-an-arn"
        colour = "blue"
        [[associations]]
        namespace = "ok"
        service_account = "norole"
        [[associations]]
        namespace = "ok"
        service_account = "long"
        role_arn = "arn:aws:iam::111122223333:role/x"
        duration = 99999999
        """
    )
    text = "\n".join(found)
    assert len(found) == 6, text
    assert "unknown key 'version'" in text
    assert "association 1: namespace = 'Payments' must be a Kubernetes name" in text
    assert "association 2 (ok/ok).role_arn='not-an-arn' is not an IAM role ARN" in text
    assert "association 2: unknown key 'colour'" in text
    assert "association 3 (ok/norole) needs role_arn (or hops)" in text
    assert "association 4 (ok/long).duration" in text


def test_a_bad_namespace_and_a_bad_service_account_are_both_reported() -> None:
    """Both names of one association are checked: fixing one must not reveal the other."""
    found = problems(
        """
        [[associations]]
        namespace = "Bad_NS"
        service_account = ""
        role_arn = "arn:aws:iam::111122223333:role/x"
        """
    )
    assert len(found) == 2, found
    assert "namespace = 'Bad_NS'" in found[0]
    assert "service_account = ''" in found[1]


@pytest.mark.parametrize(
    "name",
    ["UPPER", "under_score", "-leading", "trailing-", "a" * 254, "with space", "a:b"],
)
def test_names_must_be_kubernetes_names(name: str) -> None:
    """Namespaces and service accounts that Kubernetes would not accept are refused."""
    found = problems(
        f"""
        [[associations]]
        namespace = "ok"
        service_account = "{name}"
        role_arn = "arn:aws:iam::111122223333:role/x"
        """
    )
    assert len(found) == 1 and "service_account" in found[0]


def test_a_name_that_is_not_a_string_is_refused() -> None:
    """A number where a name belongs is a clear error, not a crash."""
    found = problems(
        """
        [[associations]]
        namespace = 42
        service_account = "api"
        role_arn = "arn:aws:iam::111122223333:role/x"
        """
    )
    assert found == [
        "associations.toml: association 1: namespace = '42' must be a Kubernetes name "
        "(lower-case letters, digits, '-' and '.')"
    ]


def test_a_service_account_is_associated_once() -> None:
    """Two associations of one service account are refused, naming it."""
    found = problems(API + API.replace("payments-api", "other"))
    assert len(found) == 1
    assert "association 2: payments/api is associated twice" in found[0]


def test_the_same_name_in_two_namespaces_is_two_service_accounts() -> None:
    """api in payments and api in builds are different service accounts."""
    found = parse(API + API.replace('"payments"', '"builds"'))
    assert len(found) == 2  # type: ignore[arg-type]


def test_a_chain_of_hops() -> None:
    """``hops`` chains roles: the last hop is the role served; later hops may take the
    options AssumeRoleWithWebIdentity refuses."""
    found = parse_associations(
        tomllib.loads(
            """
            [[associations]]
            namespace = "payments"
            service_account = "api"
            [[associations.hops]]
            role_arn = "arn:aws:iam::111122223333:role/hub"
            [[associations.hops]]
            role_arn = "arn:aws:iam::444455556666:role/target"
            external_id = "x-123"
            duration = 900
            """
        ),
        AUDIENCE,
        "test",
    )
    association = found.find("payments", "api")
    assert association is not None
    assert [hop.role_arn for hop in association.role.hops] == [
        "arn:aws:iam::111122223333:role/hub",
        "arn:aws:iam::444455556666:role/target",
    ]
    assert association.role.role_arn == "arn:aws:iam::444455556666:role/target"
    assert association.role.duration == 900


def test_chain_problems() -> None:
    """role_arn beside hops, empty hops, and a web-identity-only option on the first hop
    are each refused."""
    found = problems(
        """
        [[associations]]
        namespace = "a"
        service_account = "both"
        role_arn = "arn:aws:iam::111122223333:role/x"
        [[associations.hops]]
        role_arn = "arn:aws:iam::111122223333:role/y"
        [[associations]]
        namespace = "a"
        service_account = "empty"
        hops = []
        [[associations]]
        namespace = "a"
        service_account = "first"
        [[associations.hops]]
        role_arn = "arn:aws:iam::111122223333:role/y"
        external_id = "nope"
        """
    )
    text = "\n".join(found)
    assert len(found) == 3, text
    assert "(a/both): give either role_arn or hops, not both" in text
    assert "(a/empty).hops must be a non-empty array of tables" in text
    assert "(a/first).hops[0].external_id: AssumeRoleWithWebIdentity does not accept" in text


def test_allowed_accounts_bound_every_hop() -> None:
    """allowed_accounts is kept; a hop outside it, a malformed account id, or a value
    that is not a list of strings is refused."""
    ok = parse(API + 'allowed_accounts = ["111122223333"]\n')
    association = ok.find("payments", "api")  # type: ignore[attr-defined]
    assert association.role.allowed_accounts == ("111122223333",)
    outside = problems(API + 'allowed_accounts = ["999999999999"]\n')
    assert len(outside) == 1
    assert "account 111122223333, which is not in allowed_accounts (999999999999)" in outside[0]
    malformed = problems(API + 'allowed_accounts = ["1234", "111122223333"]\n')
    assert malformed == [
        "associations.toml: association 1 (payments/api).allowed_accounts: '1234' is not a "
        "12-digit AWS account id"
    ]
    not_a_list = problems(API + 'allowed_accounts = "111122223333"\n')
    assert "allowed_accounts must be a list of strings" in not_a_list[0]


def test_associations_must_be_an_array_of_tables() -> None:
    """``associations = "x"`` or a non-table entry is a clear error."""
    assert "must be an array of tables" in problems('associations = "x"')[0]
    assert "association 1 must be a table" in problems("associations = [1]")[0]


def test_load_refuses_missing_invalid_and_oversized_files(tmp_path: Path) -> None:
    """A missing file, a file that is not TOML and one above the size bound are each a
    ConfigError naming the file and the problem."""
    path = tmp_path / "associations.toml"
    with pytest.raises(ConfigError, match="does not exist: give --associations"):
        load_associations(path, AUDIENCE)
    path.write_text("[[associations]\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_associations(path, AUDIENCE)
    path.write_bytes(b"#" * (MAX_ASSOCIATIONS_BYTES + 1))
    with pytest.raises(ConfigError, match=str(path)):
        load_associations(path, AUDIENCE)


class Watched:
    """An AssociationsFile on a temporary path, counting its change notifications."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        path.write_text(text)
        self.changes = 0
        self.file = AssociationsFile(path, AUDIENCE, self._changed)

    def _changed(self) -> None:
        self.changes += 1

    def write(self, text: str) -> None:
        self.path.write_text(text)
        # A new mtime even on a coarse file system clock.
        stat = self.path.stat()
        os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_reload_picks_up_a_change(tmp_path: Path) -> None:
    """reload() takes a changed file and notifies once; an unchanged file is no change."""
    w = Watched(tmp_path / "a.toml", API)
    assert w.file.reload() is False and w.changes == 0
    w.write(API + CI)
    assert w.file.reload() is True
    assert w.changes == 1 and len(w.file.current) == 2


def test_a_broken_new_version_keeps_the_associations_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken file is refused as a whole (the old associations stay) and logged once
    with its problems, not once per poll; fixing it applies the fix."""
    w = Watched(tmp_path / "a.toml", API + CI)
    before = w.file.current
    w.write(API + 'role_arn = "oops"\n')  # a duplicate key: not even TOML
    with caplog.at_level(logging.ERROR):
        assert w.file.reload() is False
        assert w.file.reload() is False
    assert w.file.current is before and w.changes == 0
    rejected = [r for r in caplog.records if getattr(r, "event", "") == "associations_rejected"]
    assert len(rejected) == 1
    w.write(API)
    assert w.file.reload() is True
    assert len(w.file.current) == 1 and w.changes == 1
    w.path.unlink()
    assert w.file.reload() is False
    assert len(w.file.current) == 1


def test_a_broken_file_at_start_is_a_configuration_error(tmp_path: Path) -> None:
    """At start there is nothing to keep: a broken file is a ConfigError."""
    path = tmp_path / "a.toml"
    path.write_text(API + API)
    with pytest.raises(ConfigError, match="associated twice"):
        AssociationsFile(path, AUDIENCE, lambda: None)


async def test_watch_reloads_within_the_poll_interval(tmp_path: Path) -> None:
    """The watch notices a changed file within one poll interval of the fake clock."""
    w = Watched(tmp_path / "a.toml", API)
    clock = FakeClock()
    watcher = asyncio.create_task(w.file.watch(clock))
    await settle()
    w.write(API + CI)
    await clock.advance(POLL_INTERVAL)
    assert w.changes == 1 and len(w.file.current) == 2
    await clock.advance(POLL_INTERVAL * 3)
    assert w.changes == 1
    watcher.cancel()
    await settle()
    assert watcher.cancelled()


def test_long_names_get_distinct_session_names() -> None:
    """Two service accounts whose namespace.name passes 64 characters keep distinct session
    names (cut, plus a digest of the whole), within STS's rules."""
    long_namespace = "n" * 40
    names = {session_name_for(long_namespace, "a" * 30 + end) for end in ("x", "y")}
    assert len(names) == 2
    assert all(len(name) <= 64 and SESSION_NAME.match(name) for name in names)
    assert session_name_for("payments", "api") == "payments.api"
