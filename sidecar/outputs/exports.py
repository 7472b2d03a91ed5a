"""Credentials rendered as text a tool expects, like ``aws configure export-credentials``.

``FORMATS`` is the one registry (name -> renderer); ``render(creds, fmt, profile)`` is the
one entry point. Every value is quoted for its consumer so that nothing in it can end the
quoting: STS values are base64 and never need it, but the renderers do not rely on that.

Choices, each checked against the consumer:

* ``process`` is what the AWS CLI prints for ``--format process`` (``Version: 1``, then
  the keys botocore's ``ProcessProvider`` reads), plus ``AccountId`` when known, which
  botocore and the JavaScript v3 ``fromProcess`` read and others ignore. ``Expiration``
  is ``format_expiration``'s ``Z`` form: botocore parses any ISO 8601, JavaScript v3 and
  Rust need the ``Z``.
* The shell formats set the variables the AWS CLI sets (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_CREDENTIAL_EXPIRATION``), in
  single quotes where a value needs any (POSIX sh, ``shlex.quote``) or always (fish,
  PowerShell): no expansion happens inside them, and each shell's one escape for the
  quote character itself is applied.
* ``json`` has no AWS CLI counterpart: it is the STS ``Credentials`` object's keys (what
  scripts already pick out of ``aws sts assume-role-with-web-identity`` with ``jq``),
  plus ``AccountId``, ``RoleArn`` and ``AssumedRoleArn``.
* ``github-env`` follows the runner's ``$GITHUB_ENV`` parser: ``NAME=value`` for a
  one-line value, ``NAME<<DELIMITER`` / value / ``DELIMITER`` (a random delimiter not in
  the value) otherwise. ``github_mask`` gives the ``::add-mask::`` lines for stdout.
* No region anywhere: ``aws configure export-credentials`` prints none, and a region is
  the job's configuration, not part of the credentials.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.config.checks import check_profile
from sidecar.core.credentials import Credentials, format_expiration
from sidecar.core.errors import ExportError

#: Profile names: what ``aws configure`` users write; no brackets, spaces or controls, so a
#: name can never end its ``[section]`` header or start another.
#: What a shared-credentials (ini) value may hold: configparser strips surrounding
#: whitespace and treats a line break as a continuation, so neither can round-trip.
_INI_UNSAFE = re.compile(r"[\x00-\x1f\x7f]|^\s|\s$")
#: PowerShell ends a single-quoted string at any of these, not only at the ASCII quote.
_POWERSHELL_QUOTES = "'\u2018\u2019\u201a\u201b"

Renderer = Callable[[Credentials, str], str]


@dataclass(frozen=True)
class ExportFormat:
    """One output format: its renderer and a one-line description for ``--help``."""

    name: str
    render: Renderer
    description: str


def _variables(creds: Credentials) -> list[tuple[str, str]]:
    """The environment variables ``aws configure export-credentials`` sets, in its order."""
    pairs = [
        ("AWS_ACCESS_KEY_ID", creds.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key),
        ("AWS_SESSION_TOKEN", creds.session_token),
        ("AWS_CREDENTIAL_EXPIRATION", format_expiration(creds.expiration)),
    ]
    for name, value in pairs:
        if "\x00" in value:
            # No environment (and no C string) can hold a NUL: refuse, naming only the field.
            raise ExportError(f"{name} holds a NUL character; no environment can carry it")
    return pairs


def _sh_lines(prefix: str) -> Renderer:
    def render(creds: Credentials, profile: str) -> str:
        return "".join(
            f"{prefix}{name}={shlex.quote(value)}\n" for name, value in _variables(creds)
        )

    return render


def _fish(creds: Credentials, profile: str) -> str:
    # In fish single quotes only \\ and \' are escapes; a line break is literal.
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return "".join(f"set -gx {name} {quote(value)}\n" for name, value in _variables(creds))


def _powershell(creds: Credentials, profile: str) -> str:
    # Single quotes: no $ or ` expansion; a quote character is escaped by doubling it.
    def quote(value: str) -> str:
        return "'" + "".join(ch * 2 if ch in _POWERSHELL_QUOTES else ch for ch in value) + "'"

    return "".join(f"$Env:{name}={quote(value)}\n" for name, value in _variables(creds))


def _process_object(creds: Credentials) -> dict[str, object]:
    body: dict[str, object] = {
        "Version": 1,
        "AccessKeyId": creds.access_key_id,
        "SecretAccessKey": creds.secret_access_key,
        "SessionToken": creds.session_token,
        "Expiration": format_expiration(creds.expiration),
    }
    if creds.account_id:
        body["AccountId"] = creds.account_id
    return body


def _process(creds: Credentials, profile: str) -> str:
    return json.dumps(_process_object(creds), indent=2) + "\n"


def _json(creds: Credentials, profile: str) -> str:
    body = _process_object(creds)
    del body["Version"]
    body.setdefault("AccountId", "")
    body["RoleArn"] = creds.role_arn
    body["AssumedRoleArn"] = creds.assumed_role_arn
    return json.dumps(body, indent=2) + "\n"


def _ini(creds: Credentials, profile: str) -> str:
    keys = [
        ("aws_access_key_id", creds.access_key_id),
        ("aws_secret_access_key", creds.secret_access_key),
        ("aws_session_token", creds.session_token),
    ]
    for key, value in keys:
        if _INI_UNSAFE.search(value):
            raise ExportError(
                f"{key} holds a control character or surrounding whitespace, which a "
                "shared-credentials file cannot hold; use another format"
            )
    lines = [f"[{check_profile(profile)}]", *(f"{key} = {value}" for key, value in keys)]
    return "\n".join(lines) + "\n"


def _github_env(creds: Credentials, profile: str) -> str:
    out = []
    for name, value in _variables(creds):
        if "\n" not in value and "\r" not in value:
            out.append(f"{name}={value}\n")
            continue
        # The runner ends a heredoc value at the first line equal to the delimiter.
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        while delimiter in value:
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        out.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(out)


def github_mask(creds: Credentials) -> str:
    """``::add-mask::`` lines, one per credential value, for a GitHub Actions step's stdout.

    Printed before the values reach ``$GITHUB_ENV``, so later steps' logs show ``***``.
    The access key id is masked too (it names the session in CloudTrail). Values are
    escaped the way workflow commands expect (``%``, CR, LF), so a value cannot start a
    second command.
    """
    lines = []
    for value in (creds.access_key_id, creds.secret_access_key, creds.session_token):
        if value:
            escaped = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
            lines.append(f"::add-mask::{escaped}\n")
    return "".join(lines)


FORMATS: Mapping[str, ExportFormat] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ExportFormat(
                "process", _process, "credential_process JSON (Version 1), with Expiration"
            ),
            ExportFormat("env", _sh_lines("export "), "POSIX shell: export AWS_...='...' lines"),
            ExportFormat("env-no-export", _sh_lines(""), "POSIX shell: AWS_...='...' lines"),
            ExportFormat("json", _json, "JSON: the STS Credentials keys, account and role"),
            ExportFormat("powershell", _powershell, "PowerShell: $Env:AWS_...='...' lines"),
            ExportFormat("fish", _fish, "fish: set -gx AWS_... '...' lines"),
            ExportFormat("github-env", _github_env, "lines to append to $GITHUB_ENV"),
            ExportFormat("ini", _ini, "a shared-credentials file profile section"),
        )
    }
)


def render(creds: Credentials, fmt: str, profile: str = "default") -> str:
    """``creds`` as ``fmt`` text (a key of ``FORMATS``); ``ExportError`` for an unknown
    format, a bad profile name, or a value the format cannot hold."""
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    return spec.render(creds, check_profile(profile))
