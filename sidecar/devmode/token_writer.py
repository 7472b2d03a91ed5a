"""Writes a token file exactly as the kubelet's AtomicWriter does.

Layout: ``<dir>/..<timestamp>/token`` holds the data, ``<dir>/..data`` is a symlink to
that directory, and ``<dir>/token`` is a symlink to ``..data/token``. An update writes a
new timestamped directory, points a temporary symlink at it and renames it over
``..data`` (atomic), then removes the old directory. A reader opening ``<dir>/token``
always sees a whole token, old or new.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


class ProjectedTokenWriter:
    def __init__(self, directory: Path, filename: str = "token") -> None:
        self.directory = directory
        self.filename = filename

    @property
    def path(self) -> Path:
        return self.directory / self.filename

    def write(self, token: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{time.time_ns() % 10**9:09d}"
        new_dir = self.directory / stamp
        new_dir.mkdir(mode=0o755)
        data = new_dir / self.filename
        data.write_text(token)
        data.chmod(0o644)

        data_link = self.directory / "..data"
        old_target = os.readlink(data_link) if data_link.is_symlink() else None
        tmp_link = self.directory / "..data_tmp"
        if tmp_link.is_symlink():
            tmp_link.unlink()
        tmp_link.symlink_to(stamp)
        tmp_link.replace(data_link)
        if not self.path.is_symlink():
            self.path.symlink_to(Path("..data") / self.filename)
        if old_target:
            shutil.rmtree(self.directory / old_target, ignore_errors=True)
