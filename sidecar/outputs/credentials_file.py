"""A shared-credentials file kept current: for tools that can only read a file.

``CredentialsFile(path, profile).write(creds)`` puts ``creds`` in the ``[profile]``
section of ``path``; the daemon calls it after every refresh, and ``clear(mode)`` at
shutdown. A tool that reads the file once keeps what it read: it does not see later
refreshes (the SDKs' shared-credentials providers do not re-read the file either).

Every write replaces the file, never edits it: a temporary file in the same directory,
created 0600 with ``O_EXCL`` (never through a planted name, never briefly readable by
others), written, ``fsync``-ed, renamed over ``path``, then the directory ``fsync``-ed.
A reader sees the old file or the new one, never a part; a crash or a full disk leaves
the old file. Running as root, the new file gets the old one's owner and group (or, for
a first file, its directory's), so the user whose file it is can still read it.

Other profiles are kept as they were, comments included. configparser (what botocore
reads the file with) cannot write a file back with its comments, so a small line-based
section finder replaces only our section's lines, and configparser then *checks* the
result: every other section must read back exactly as before and ours exactly as
written, otherwise nothing is written. A file configparser cannot read is refused
rather than "repaired".

Refused, with the fix in the message: ``path`` being a symbolic link (rename would
replace the link, and in a shared directory it may have been planted), a directory or
other non-regular file, a directory that group or others can write to without the
sticky bit (anyone could swap the file between our writes), a file over 256 KiB.
Messages name the path and never hold a value from the file.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from sidecar.config.checks import check_profile
from sidecar.config.model import CLEAR_MODES, ClearMode
from sidecar.core.credentials import Credentials
from sidecar.core.errors import CredentialsFileError
from sidecar.core.safe_read import read_small_file, size_text
from sidecar.outputs.exports import render

#: A credentials file with many profiles is a few KB.
MAX_FILE_BYTES: Final = 256 * 1024
#: Writes ``data`` to an open descriptor (injectable so tests can fail mid-write).
WriteAll = Callable[[int, bytes], None]


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _header(line: str) -> str | None:
    """The section name if ``line`` is a section header the way configparser reads one."""
    if line[:1].isspace():
        return None  # indented: a continuation line (the final check catches the rest)
    match = configparser.RawConfigParser.SECTCRE.match(line.strip())
    return match.group("header") if match else None


def _is_filler(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith(("#", ";"))


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``[name]`` replaced by ``body`` (``""`` removes it), or with
    ``body`` appended if there is no such section. Other lines are kept as they are; the
    blank and comment lines at the end of the section stay, since they usually introduce
    the next one."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _header(line) == name), None)
    if start is None:
        if not body:
            return text
        if text and not text.endswith("\n"):
            text += "\n"
        if text.strip():
            text += "\n"
        return text + body
    end = next((i for i in range(start + 1, len(lines)) if _header(lines[i]) is not None), None)
    end = len(lines) if end is None else end
    while end - 1 > start and _is_filler(lines[end - 1]):
        end -= 1
    before, after = start, end
    if not body:
        while after < len(lines) and not lines[after].strip():
            after += 1  # do not leave the blank lines that separated the section
        if after == len(lines):
            while before > 0 and not lines[before - 1].strip():
                before -= 1  # nor the blank line put before it when it was appended
    return "".join([*lines[:before], body, *lines[after:]])


class CredentialsFile:
    """Keeps ``[profile]`` of the shared-credentials file at ``path`` current."""

    def __init__(
        self, path: Path, profile: str = "default", *, writer: WriteAll = write_all
    ) -> None:
        self.path = path
        self.profile = check_profile(profile)
        if self.profile == configparser.DEFAULTSECT:
            raise CredentialsFileError(
                f"profile name {profile!r} is configparser's defaults section, which "
                "applies to every profile; choose another name"
            )
        self._writer = writer
        #: One read-modify-replace at a time, also when an awaiting task was cancelled
        #: and its thread is still running.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CredentialsFile(path={str(self.path)!r}, profile={self.profile!r})"

    async def write_async(self, creds: Credentials) -> None:
        """``write`` in a worker thread, off the event loop."""
        await asyncio.to_thread(self.write, creds)

    async def clear_async(self, mode: ClearMode) -> None:
        """``clear`` in a worker thread, off the event loop."""
        await asyncio.to_thread(self.clear, mode)

    def write(self, creds: Credentials) -> None:
        """Replace the file with one whose ``[profile]`` holds ``creds`` (blocking)."""
        section = render(creds, "ini", self.profile)
        with self._lock:
            directory = self._check_directory()
            current = self._read()
            old_text = current[0] if current else ""
            new_text = replace_section(old_text, self.profile, section)
            self._verify(old_text, new_text, written=section)
            self._replace(new_text.encode(), current[1] if current else directory)

    def clear(self, mode: ClearMode) -> None:
        """Take our profile out of the file as ``mode`` says (blocking; see ``ClearMode``)."""
        if mode not in CLEAR_MODES:
            raise CredentialsFileError(
                f"credentials file clear mode {mode!r} is unknown: use one of "
                f"{', '.join(CLEAR_MODES)}"
            )
        if mode == "keep":
            return
        with self._lock:
            self._check_directory()
            current = self._read()
            if current is None:
                return
            old_text, old_stat = current
            new_text = replace_section(old_text, self.profile, "")
            if new_text == old_text:
                return  # not ours (any more): leave it alone
            self._verify(old_text, new_text, written=None)
            if mode == "remove" and not new_text.strip():
                self._remove()
            else:
                self._replace(new_text.encode(), old_stat)

    def _fail(self, problem: str) -> CredentialsFileError:
        return CredentialsFileError(f"credentials file {self.path}: {problem}")

    def _check_directory(self) -> os.stat_result:
        directory = self.path.parent
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            raise self._fail(
                f"its directory {directory} does not exist; create it (mkdir -m 700 {directory})"
            ) from None
        except OSError as exc:
            raise self._fail(f"its directory cannot be checked ({exc.strerror})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise self._fail(f"{directory} is not a directory")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise self._fail(
                f"its directory {directory} is writable by group or others without the "
                f"sticky bit (mode {stat.S_IMODE(st.st_mode):04o}): anyone there could "
                "replace the file; use a private directory, or chmod go-w it"
            )
        return st

    def _read(self) -> tuple[str, os.stat_result] | None:
        """The current file's text and ``lstat``, or None if there is none."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(f"cannot be checked ({exc.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise self._fail(
                "is a symbolic link: refused, since each write replaces the file (the link "
                "would be lost) and a link may have been planted; give the real path"
            )
        try:
            raw, identity = read_small_file(self.path, self._fail, MAX_FILE_BYTES)
        except FileNotFoundError:
            return None
        if (identity.device, identity.inode) != (st.st_dev, st.st_ino):
            raise self._fail("was replaced while being read (by another program?); try again")
        try:
            return raw.decode("utf-8"), st
        except UnicodeDecodeError:
            raise self._fail("is not UTF-8 text; fix or remove it") from None

    def _parse(self, text: str, which: str) -> configparser.RawConfigParser:
        # The parser botocore's raw_config_parse uses, with its defaults.
        parser = configparser.RawConfigParser()
        try:
            parser.read_string(text)
        except configparser.Error as exc:
            # Not str(exc): configparser quotes the offending line, which may be a secret.
            line = getattr(exc, "lineno", None)
            where = f" at line {line}" if line else ""
            raise self._fail(
                f"{which} is not a valid shared-credentials file ({type(exc).__name__}"
                f"{where}); fix or remove it"
            ) from None
        return parser

    def _verify(self, old_text: str, new_text: str, *, written: str | None) -> None:
        """Refuse a result in which anything but our section reads differently, or ours
        does not read as the ``written`` section (None: ours must be gone)."""
        old = self._parse(old_text, "the existing file")
        new = self._parse(new_text, "the updated file")
        others = [name for name in old.sections() if name != self.profile]
        expected = others if written is None else [*others, self.profile]
        same = sorted(new.sections()) == sorted(expected) and all(
            new.items(name) == old.items(name) for name in others
        )
        if same and written is not None:
            ours = self._parse(written, "the new section")
            same = all(new.get(self.profile, k) == v for k, v in ours.items(self.profile))
        if not same:
            raise self._fail(
                f"section [{self.profile}] could not be replaced without changing other "
                "sections (an indented or unusual header?); fix the file's layout"
            )

    def _replace(self, data: bytes, owner: os.stat_result) -> None:
        """Atomically replace the file with ``data``, owned (when root) like ``owner``."""
        if len(data) > MAX_FILE_BYTES:
            raise self._fail(f"would grow past {size_text(MAX_FILE_BYTES)}; remove old profiles")
        directory = self.path.parent
        temporary = directory / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o600)
        except OSError as exc:
            raise self._fail(
                f"cannot create a temporary file in {directory} ({exc.strerror}); can this "
                "user write to the directory?"
            ) from None
        try:
            try:
                if os.geteuid() == 0:
                    os.fchown(fd, owner.st_uid, owner.st_gid)  # the user whose file it is
                self._writer(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, self.path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if isinstance(exc, OSError):
                raise self._fail(
                    f"cannot be replaced ({exc.strerror or type(exc).__name__}); the previous "
                    "file is unchanged"
                ) from None
            raise
        self._sync_directory()

    def _remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail(f"cannot be removed ({exc.strerror})") from None
        self._sync_directory()

    def _sync_directory(self) -> None:
        """Make the rename or unlink itself durable."""
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._fail(f"its directory cannot be opened to sync ({exc.strerror})") from None
        try:
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot
                raise self._fail(f"its directory cannot be synced ({exc.strerror})") from None
        finally:
            os.close(fd)
