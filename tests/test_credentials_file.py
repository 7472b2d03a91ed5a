"""The shared-credentials file sink: atomic 0600 replacement, other profiles kept byte for
byte, the clear modes, refusals of planted or unsafe paths, and a reader that never sees
a partial file."""

from __future__ import annotations

import configparser
import errno
import os
import stat
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sidecar.core.credentials import Credentials
from sidecar.core.errors import CredentialsFileError, SidecarError
from sidecar.outputs.credentials_file import (
    MAX_FILE_BYTES,
    CredentialsFile,
    replace_section,
    write_all,
)
from tests.test_exports import botocore_credentials

CREDS = Credentials(
    access_key_id="ASIAEXAMPLEEXAMPLE12",
    secret_access_key="hunter2/secret+key",
    session_token="hunter2-session-token==",
    expiration=datetime.now(UTC) + timedelta(hours=1),
    role_arn="arn:aws:iam::123456789012:role/deploy",
    assumed_role_arn="arn:aws:sts::123456789012:assumed-role/deploy/ci",
)
OTHERS_BEFORE = """\
# Written by hand; keep this comment.
[default]
aws_access_key_id = AKIADEFAULTEXAMPLE
aws_secret_access_key = default-secret ; not a comment to configparser
"""
OTHERS_AFTER = """\
# The next profile is for the build box.
[build]   ; inline remark
region = eu-west-1
   continued value line
"""
OURS = """\
[sidecar]
aws_access_key_id = ASIAEXAMPLEEXAMPLE12
aws_secret_access_key = hunter2/secret+key
aws_session_token = hunter2-session-token==
"""


def numbered(i: int) -> Credentials:
    return replace(
        CREDS,
        access_key_id=f"ASIA{i:016d}",
        secret_access_key=f"secret-{i}",
        session_token=f"token-{i}-" + "x" * 900,
    )


def test_first_write_creates_a_0600_file_botocore_reads(tmp_path: Path) -> None:
    """With no file yet, the profile is written 0600 and botocore reads it by name."""
    path = tmp_path / "credentials"
    CredentialsFile(path, "sidecar").write(CREDS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == OURS
    got = botocore_credentials("sidecar", AWS_SHARED_CREDENTIALS_FILE=str(path))
    assert (got["access_key"], got["secret_key"], got["token"]) == (
        CREDS.access_key_id,
        CREDS.secret_access_key,
        CREDS.session_token,
    )


def test_each_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """Every write is a new inode renamed into place (never an edit), mode 0600 even where
    the old file was 0644, and nothing else is left in the directory."""
    path = tmp_path / "credentials"
    path.write_text(OTHERS_BEFORE)
    path.chmod(0o644)
    sink = CredentialsFile(path, "sidecar")
    for i in range(3):
        before = path.stat().st_ino
        sink.write(numbered(i))
        # The old inode is still in use when the new file is created: they must differ.
        assert path.stat().st_ino != before
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials"]


def test_the_temporary_file_is_0600_from_creation_whatever_the_umask(tmp_path: Path) -> None:
    """The secret is never in a file others could open: the new file is 0600 when the
    first byte is written, even with umask 000 (not chmod-ed afterwards)."""
    modes: list[int] = []

    def writer(fd: int, data: bytes) -> None:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        write_all(fd, data)

    old = os.umask(0)
    try:
        CredentialsFile(tmp_path / "credentials", writer=writer).write(CREDS)
    finally:
        os.umask(old)
    assert modes == [0o600]


def test_other_profiles_and_comments_are_kept_byte_for_byte(tmp_path: Path) -> None:
    """Everything outside our section (comments, inline remarks, continuation lines,
    odd spacing) is exactly as it was, on first write, on rewrite and after clear."""
    path = tmp_path / "credentials"
    old_section = "[sidecar]\naws_access_key_id = OLD\n\n"
    path.write_text(OTHERS_BEFORE + "\n" + old_section + OTHERS_AFTER)
    sink = CredentialsFile(path, "sidecar")
    sink.write(CREDS)
    assert path.read_text() == OTHERS_BEFORE + "\n" + OURS + "\n" + OTHERS_AFTER
    sink.write(numbered(7))
    assert path.read_text().startswith(OTHERS_BEFORE + "\n[sidecar]\naws_access_key_id = ASIA")
    assert path.read_text().endswith("\n\n" + OTHERS_AFTER)
    sink.clear("remove")
    assert path.read_text() == OTHERS_BEFORE + "\n" + OTHERS_AFTER
    default = botocore_credentials("default", AWS_SHARED_CREDENTIALS_FILE=str(path))
    assert default["secret_key"] == "default-secret ; not a comment to configparser"


def test_a_new_profile_is_appended_after_a_blank_line(tmp_path: Path) -> None:
    """A file without our profile (and without a final newline) gets it at the end."""
    path = tmp_path / "credentials"
    path.write_text(OTHERS_BEFORE.rstrip("\n"))
    CredentialsFile(path, "sidecar").write(CREDS)
    assert path.read_text() == OTHERS_BEFORE + "\n" + OURS


def test_replace_section_keeps_the_comments_that_introduce_the_next_section() -> None:
    """Blank and comment lines at the end of our section belong to what follows."""
    text = "[sidecar]\nold = 1\n\n# about build\n[build]\nx = 1\n"
    assert replace_section(text, "sidecar", "[sidecar]\nnew = 2\n") == (
        "[sidecar]\nnew = 2\n\n# about build\n[build]\nx = 1\n"
    )
    assert replace_section(text, "sidecar", "") == "# about build\n[build]\nx = 1\n"
    assert replace_section(text, "absent", "") == text


class WriterFailure(OSError):
    pass


def test_a_failure_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    """A write that fails halfway (a full disk) changes nothing: same inode, same bytes,
    no temporary left; the error names the path and the state, never a secret."""
    path = tmp_path / "credentials"
    path.write_text(OTHERS_BEFORE)
    before = path.stat()

    def half_then_full_disk(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise WriterFailure(errno.ENOSPC, os.strerror(errno.ENOSPC))

    sink = CredentialsFile(path, "sidecar", writer=half_then_full_disk)
    with pytest.raises(CredentialsFileError) as caught:
        sink.write(CREDS)
    message = str(caught.value)
    assert str(path) in message and "previous file is unchanged" in message
    assert "No space left" in message and "hunter2" not in message
    assert path.read_text() == OTHERS_BEFORE
    assert path.stat().st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials"]


def test_clear_remove_drops_only_our_profile(tmp_path: Path) -> None:
    """remove: our section goes, the other profiles stay."""
    path = tmp_path / "credentials"
    path.write_text(OTHERS_BEFORE)
    sink = CredentialsFile(path, "sidecar")
    sink.write(CREDS)
    sink.clear("remove")
    assert path.read_text() == OTHERS_BEFORE


def test_clear_remove_deletes_a_file_that_held_only_our_profile(tmp_path: Path) -> None:
    """remove: a file with nothing but our profile is deleted."""
    path = tmp_path / "credentials"
    sink = CredentialsFile(path, "sidecar")
    sink.write(CREDS)
    sink.clear("remove")
    assert not path.exists()


def test_clear_empty_keeps_an_empty_file(tmp_path: Path) -> None:
    """empty: the file stays (a tool finds no credentials rather than no file), 0600."""
    path = tmp_path / "credentials"
    sink = CredentialsFile(path, "sidecar")
    sink.write(CREDS)
    sink.clear("empty")
    assert path.read_bytes() == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_clear_keep_leaves_the_last_credentials(tmp_path: Path) -> None:
    """keep: nothing changes (the credentials expire by themselves)."""
    path = tmp_path / "credentials"
    sink = CredentialsFile(path, "sidecar")
    sink.write(CREDS)
    inode = path.stat().st_ino
    sink.clear("keep")
    assert path.read_text() == OURS and path.stat().st_ino == inode


def test_clear_leaves_a_file_without_our_profile_alone(tmp_path: Path) -> None:
    """clear touches neither a missing file nor one without our section (same inode)."""
    path = tmp_path / "credentials"
    CredentialsFile(path, "sidecar").clear("remove")
    assert not path.exists()
    path.write_text(OTHERS_BEFORE)
    inode = path.stat().st_ino
    CredentialsFile(path, "sidecar").clear("remove")
    assert path.stat().st_ino == inode


def test_an_unknown_clear_mode_is_refused(tmp_path: Path) -> None:
    """A mode outside remove/empty/keep is an error listing the valid ones."""
    with pytest.raises(CredentialsFileError, match="remove, empty, keep"):
        CredentialsFile(tmp_path / "credentials").clear("wipe")  # type: ignore[arg-type]


def test_a_symlink_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A symlink at the path is not written through nor replaced."""
    target = tmp_path / "target"
    target.write_text(OTHERS_BEFORE)
    link = tmp_path / "credentials"
    link.symlink_to(target)
    with pytest.raises(CredentialsFileError, match=r"symbolic link.*real path"):
        CredentialsFile(link).write(CREDS)
    assert link.is_symlink() and target.read_text() == OTHERS_BEFORE


def test_a_fifo_or_directory_is_refused(tmp_path: Path) -> None:
    """Only a regular file is read (a FIFO is not waited on) or replaced."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CredentialsFileError, match="FIFO"):
        CredentialsFile(fifo).write(CREDS)
    directory = tmp_path / "dir"
    directory.mkdir()
    with pytest.raises(CredentialsFileError, match="a directory, not a regular file"):
        CredentialsFile(directory).write(CREDS)


def test_a_directory_others_can_write_to_is_refused_unless_sticky(tmp_path: Path) -> None:
    """In a group/world-writable directory anyone could swap the file: refused, with the
    fix; with the sticky bit (like /tmp) others cannot, so it is allowed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CredentialsFileError, match=r"without the sticky bit.*chmod go-w"):
        CredentialsFile(shared / "credentials").write(CREDS)
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)
    CredentialsFile(shared / "credentials", "sidecar").write(CREDS)
    assert (shared / "credentials").read_text() == OURS


def test_a_missing_directory_says_how_to_create_it(tmp_path: Path) -> None:
    """The error names the directory and the mkdir that fixes it."""
    missing = tmp_path / "no" / "such"
    with pytest.raises(CredentialsFileError, match=f"mkdir -m 700 {missing}"):
        CredentialsFile(missing / "credentials").write(CREDS)


def test_an_unreadable_existing_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    """A file configparser cannot read is not "repaired"; the error gives the line number,
    never the line (it may be a secret)."""
    path = tmp_path / "credentials"
    path.write_text("aws_secret_access_key = hunter2-before-any-section\n")
    with pytest.raises(CredentialsFileError, match="MissingSectionHeaderError at line 1") as c:
        CredentialsFile(path, "sidecar").write(CREDS)
    assert "hunter2" not in str(c.value)
    assert path.read_text() == "aws_secret_access_key = hunter2-before-any-section\n"


def test_a_layout_the_section_finder_misreads_is_refused(tmp_path: Path) -> None:
    """An indented header the line finder does not see (configparser does) makes the
    result differ from the intent: nothing is written."""
    path = tmp_path / "credentials"
    text = "[build]\n  [sidecar]\naws_access_key_id = OLD\n"
    path.write_text(text)
    with pytest.raises(CredentialsFileError):
        CredentialsFile(path, "sidecar").write(CREDS)
    assert path.read_text() == text


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    """The old file is read with a bound: a file over the limit is an error, not a load."""
    path = tmp_path / "credentials"
    path.write_text("[big]\n" + "k = v\n" * (MAX_FILE_BYTES // 6 + 1))
    with pytest.raises(CredentialsFileError, match="larger than 256 KiB"):
        CredentialsFile(path).write(CREDS)


def test_bad_profile_names_are_refused(tmp_path: Path) -> None:
    """A name that could forge a header, or configparser's DEFAULT, is refused early."""
    with pytest.raises(SidecarError, match="letters, digits"):
        CredentialsFile(tmp_path / "credentials", "x]\n[y")
    with pytest.raises(CredentialsFileError, match="defaults section"):
        CredentialsFile(tmp_path / "credentials", "DEFAULT")


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving a file to another user needs root"
)


@needs_root
def test_as_root_the_owner_and_group_are_kept(tmp_path: Path) -> None:
    """Running as root, the replaced file keeps the old file's owner and group (the user
    whose file it is can still read it), and a first file gets its directory's."""
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 4242, 4343)
    path = home / "credentials"
    sink = CredentialsFile(path, "sidecar")
    sink.write(CREDS)
    assert (path.stat().st_uid, path.stat().st_gid) == (4242, 4343)
    os.chown(path, 4444, 4545)
    sink.write(numbered(1))
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4444, 4545, 0o600)


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten many times always finds a whole,
    valid file: the other profile, and one consistent set of our values."""
    path = tmp_path / "credentials"
    path.write_text(OTHERS_BEFORE)
    sink = CredentialsFile(path, "sidecar")
    sink.write(numbered(0))
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            text = path.read_text()
            parser = configparser.RawConfigParser()
            try:
                parser.read_string(text)
                ours = parser["sidecar"]
                key = ours["aws_access_key_id"]
                i = int(key.removeprefix("ASIA"))
                if (ours["aws_secret_access_key"], ours["aws_session_token"]) != (
                    f"secret-{i}",
                    f"token-{i}-" + "x" * 900,
                ) or parser["default"]["aws_access_key_id"] != "AKIADEFAULTEXAMPLE":
                    problems.append(f"inconsistent read at {i}")
                seen.append(key)
            except (configparser.Error, KeyError, ValueError) as exc:
                problems.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 150):
            sink.write(numbered(i))
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert len(set(seen)) > 1  # the reader really overlapped the writes


async def test_the_async_api_runs_off_the_event_loop(tmp_path: Path) -> None:
    """write_async and clear_async do the blocking work in a thread: the loop thread never
    runs the writer."""
    loop_thread = threading.get_ident()
    writer_threads: list[int] = []

    def writer(fd: int, data: bytes) -> None:
        writer_threads.append(threading.get_ident())
        write_all(fd, data)

    path = tmp_path / "credentials"
    path.write_text(OTHERS_BEFORE)
    sink = CredentialsFile(path, "sidecar", writer=writer)
    await sink.write_async(CREDS)
    assert path.read_text() == OTHERS_BEFORE + "\n" + OURS
    await sink.clear_async("remove")
    assert path.read_text() == OTHERS_BEFORE
    assert len(writer_threads) == 2 and loop_thread not in writer_threads
