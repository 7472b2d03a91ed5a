"""The AWS config files ``exec`` gives its child: the user's harmless settings, no credentials.

SDKs try credentials from files before they ask the container endpoint: the shared
credentials file, the config file (keys, ``credential_process``, ``source_profile``, SSO,
web identity) and, in botocore, ``~/.boto`` and ``/etc/boto.cfg``. ``exec`` points every one
of them (``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE``, ``BOTO_CONFIG``) at files in its
private directory, so no file-based credential can win over the role. From the user's own
profile (``AWS_PROFILE``'s, else ``default``) it keeps only settings that cannot yield
credentials, such as the region and the CLI's output format.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from sidecar.core.safe_read import read_small_file

log = logging.getLogger(__name__)

#: Profile settings carried over to the child: none of them can supply credentials.
KEPT_SETTINGS = (
    "region",
    "output",
    "ca_bundle",
    "retry_mode",
    "max_attempts",
    "defaults_mode",
    "sts_regional_endpoints",
    "use_fips_endpoint",
    "use_dualstack_endpoint",
    "cli_pager",
)
#: A config file is a few KB; anything larger is not read (nor is a FIFO or a device).
MAX_CONFIG_BYTES = 1 << 20
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_PLAIN_VALUE = re.compile(r"^[\x20-\x7e]{0,1024}$")


def user_config_path(environ: Mapping[str, str]) -> Path:
    """Where the user's SDKs read their config: ``AWS_CONFIG_FILE``, else ``~/.aws/config``."""
    home = environ.get("HOME") or str(Path.home())
    text = environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    if text == "~" or text.startswith("~/"):
        text = home + text[1:]
    return Path(text)


def profile_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The kept settings of the user's profile; empty if the file is missing or unreadable."""
    path = user_config_path(environ)
    profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE") or "default"
    text = _read_small_file(path)
    if text is None:
        return {}
    # No [DEFAULT] semantics and no interpolation: SDKs parse these files literally.
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, default_section="\0 none \0"
    )
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        log.warning(
            "%s is not a valid AWS config file (%s); the command gets no settings from it",
            path,
            type(exc).__name__,
            extra={"event": "aws_config_unreadable", "path": str(path)},
        )
        return {}
    names = ("default", "profile default") if profile == "default" else (f"profile {profile}",)
    section = next((parser[name] for name in names if parser.has_section(name)), None)
    if section is None:
        return {}
    kept = {}
    for key in KEPT_SETTINGS:
        value = (section.get(key) or "").strip()
        if not value or not _PLAIN_VALUE.match(value):
            continue  # nested (multi-line) or odd values are not carried over
        if key == "region" and not _REGION.match(value):
            continue
        kept[key] = value
    return kept


def _read_small_file(path: Path) -> str | None:
    """The file's text if it is a regular file of at most MAX_CONFIG_BYTES, else None."""
    try:
        data, _ = read_small_file(path, ValueError, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return None  # the SDK would not read it either
    except ValueError as problem:
        log.warning(
            "%s %s; the command gets no settings from it",
            path,
            problem,
            extra={"event": "aws_config_unreadable", "path": str(path)},
        )
        return None
    return data.decode("utf-8", errors="replace")


def write_child_files(directory: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """Write the child's config (``settings`` only) and empty credential files into
    ``directory``; the variables that point the child's SDKs at them."""
    config = "".join(f"{key} = {value}\n" for key, value in settings.items())
    files = {
        "AWS_CONFIG_FILE": (directory / "aws-config", "[default]\n" + config),
        "AWS_SHARED_CREDENTIALS_FILE": (directory / "aws-credentials", ""),
        "BOTO_CONFIG": (directory / "boto.cfg", ""),
    }
    for path, text in files.values():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    return {variable: str(path) for variable, (path, _) in files.items()}
