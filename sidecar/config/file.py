"""The TOML config file: server-wide settings and several named roles.

```toml
listen = "127.0.0.1:9911"          # any serve flag, underscores for dashes
auth_token_file = "/run/sidecar/auth-token"
default_role = "deploy"            # served at /v1/credentials

[token]                            # where tokens come from, for every role
source = "file"                    # file | github | env | command
file = "/var/run/secrets/tokens/oidc"
audience = "sts.amazonaws.com"

[roles.deploy]                     # served at /v1/credentials/deploy
role_arn = "arn:aws:iam::123456789012:role/deploy"
session_name = "{sub}"
duration = "1h"

[roles.upload]                     # a chain: web identity, then AssumeRole
auth_token_file = "/run/sidecar/upload-token"   # only this token opens this role
allowed_accounts = ["123456789012"]
[[roles.upload.hops]]
role_arn = "arn:aws:iam::123456789012:role/ci"
duration = "12h"
[[roles.upload.hops]]
role_arn = "arn:aws:iam::123456789012:role/upload-to-s3"
external_id = "build-system"
tags = { team = "build" }
```

Problems are added to the shared ``Checker`` so they are reported with all the others.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.config.checks import Checker, check_accounts_of, shown
from sidecar.config.model import HopConfig, RoleConfig
from sidecar.config.settings import (
    POLICY_ARN,
    ROLE_NAME,
    ROLE_SETTINGS,
    SETTINGS_BY_NAME,
    TOKEN_SETTINGS,
    Raw,
    Value,
    default_session_name,
)

Document = dict[str, Any]

#: [token] keys -> setting names.
TOKEN_KEYS = {
    "source": "token_source",
    "file": "token_file",
    "env": "token_env",
    "command": "token_command",
    "command_timeout": "token_command_timeout",
    "audience": "audience",
}
HOP_KEYS = {
    "role_arn",
    "duration",
    "session_name",
    "external_id",
    "policy",
    "policy_arns",
    "tags",
    "transitive_tag_keys",
    "source_identity",
}
ROLE_KEYS = HOP_KEYS | {"hops", "token", "auth_token_file", "allowed_accounts", "default"}
#: Settings that make no sense in a file (or are described by roles there).
_NOT_IN_FILE = {"config", "dev", *ROLE_SETTINGS, *TOKEN_SETTINGS}
TOP_KEYS = {name for name in SETTINGS_BY_NAME if name not in _NOT_IN_FILE} | {
    "token",
    "roles",
    "default_role",
}
#: Not accepted by AssumeRoleWithWebIdentity (the token's claims play these parts).
NOT_FOR_WEB_IDENTITY = ("external_id", "tags", "transitive_tag_keys", "source_identity")


def read(path: Path, check: Checker) -> Document | None:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        check.add(f"--config {path} does not exist")
    except OSError as exc:
        check.add(f"--config {path} cannot be read: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        check.add(f"--config {path} is not valid TOML: {exc}")
    return None


def _value(value: Any, where: str, check: Checker) -> Value | None:
    """A TOML value as a setting takes it: as it is (an array becomes a tuple of strings);
    a table, a date or an array of anything but strings is refused."""
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return tuple(value)
        check.add(f"{where} must be an array of strings")
        return None
    if isinstance(value, str | bool | int | float):
        return value
    check.add(f"{where} must be a string, a number, true/false or an array of strings")
    return None


def _unknown(table: Mapping[str, Any], known: set[str], where: str, check: Checker) -> None:
    for key in sorted(set(table) - known):
        check.add(f"unknown key {shown(key)} in {where}; known keys: {', '.join(sorted(known))}")


def _token_values(table: Any, where: str, check: Checker) -> dict[str, Value]:
    if not isinstance(table, dict):
        check.add(f"{where} must be a table")
        return {}
    _unknown(table, set(TOKEN_KEYS), where, check)
    found = {
        TOKEN_KEYS[k]: _value(v, f"{where}.{k}", check) for k, v in table.items() if k in TOKEN_KEYS
    }
    return {k: v for k, v in found.items() if v is not None}


def settings(document: Document, check: Checker) -> dict[str, Value]:
    """Server-wide settings (and the [token] defaults), as the file gives them."""
    _unknown(document, TOP_KEYS, "the config file", check)
    found = {
        k: _value(v, k, check)
        for k, v in document.items()
        if k in SETTINGS_BY_NAME and k not in _NOT_IN_FILE
    }
    values = {k: v for k, v in found.items() if v is not None}
    if "token" in document:
        values.update(_token_values(document["token"], "[token]", check))
    return values


def declares_roles(document: Document) -> bool:
    return bool(document.get("roles"))


def _strings(value: Any, where: str, check: Checker) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    check.add(f"{where} must be a list of strings")
    return ()


def hop_config(table: Any, where: str, first: bool, check: Checker) -> HopConfig:
    if not isinstance(table, dict):
        check.add(f"{where} must be a table")
        return HopConfig("")
    _unknown(table, HOP_KEYS, where, check)
    role_arn = check.role_arn(str(table.get("role_arn", "")), f"{where}.role_arn")
    duration = check.duration(table.get("duration", 3600), f"{where}.duration", not first)
    session = table.get("session_name")
    if session is not None:
        check.session_name(str(session), f"{where}.session_name")
    if first:
        for key in NOT_FOR_WEB_IDENTITY:
            if key in table:
                check.add(
                    f"{where}.{key}: AssumeRoleWithWebIdentity does not accept it (the "
                    "first hop); move it to a later hop"
                )
    policy = table.get("policy")
    if isinstance(policy, dict):
        policy = json.dumps(policy, separators=(",", ":"))
    if policy is not None:
        try:
            json.loads(str(policy))
        except ValueError as exc:
            check.add(f"{where}.policy is not valid JSON: {exc}")
    policy_arns = _strings(table.get("policy_arns", []), f"{where}.policy_arns", check)
    for arn in policy_arns:
        if not POLICY_ARN.match(arn):
            check.add(f"{where}.policy_arns: {shown(arn)} is not an IAM policy ARN")
    tags = table.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        check.add(f'{where}.tags must be a table of strings, like {{ team = "build" }}')
        tags = {}
    return HopConfig(
        role_arn=role_arn,
        duration=duration,
        session_name=None if session is None else str(session),
        external_id=None if table.get("external_id") is None else str(table["external_id"]),
        policy=None if policy is None else str(policy),
        policy_arns=policy_arns,
        tags=tuple(sorted(tags.items())),
        transitive_tag_keys=_strings(
            table.get("transitive_tag_keys", []), f"{where}.transitive_tag_keys", check
        ),
        source_identity=None
        if table.get("source_identity") is None
        else str(table["source_identity"]),
    )


def role_hops(table: Mapping[str, Any], where: str, check: Checker) -> tuple[HopConfig, ...] | None:
    """A role's hops: ``role_arn`` and its options (one hop), or ``hops = [...]`` (a chain)."""
    if "hops" in table:
        if "role_arn" in table:
            check.add(f"{where}: give either role_arn or hops, not both")
        hop_tables = table["hops"] if isinstance(table["hops"], list) else []
        if not hop_tables:
            check.add(f"{where}.hops must be a non-empty array of tables ([[...hops]])")
            return None
        return tuple(
            hop_config(h, f"{where}.hops[{i}]", i == 0, check) for i, h in enumerate(hop_tables)
        )
    single = {k: v for k, v in table.items() if k in HOP_KEYS}
    if "role_arn" not in single:
        check.add(f"{where} needs role_arn (or hops)")
        return None
    return (hop_config(single, where, True, check),)


def _role(
    name: str, table: Any, raw: Raw, environ: Mapping[str, str], check: Checker
) -> RoleConfig | None:
    where = f"[roles.{name}]"
    if not ROLE_NAME.match(name):
        check.add(f"{where}: role names are 1-64 of letters, digits, _ and - (used in URLs)")
    if not isinstance(table, dict):
        check.add(f"{where} must be a table")
        return None
    _unknown(table, ROLE_KEYS, where, check)
    hops = role_hops(table, where, check)
    if hops is None:
        return None

    role_raw = dict(raw)
    if "token" in table:
        for key, value in _token_values(table["token"], f"{where}.token", check).items():
            role_raw[key] = (value, f"{where}.token")
    auth = table.get("auth_token_file")
    role = RoleConfig(
        name=name,
        token=check.token_source(role_raw, environ),
        hops=hops,
        auth_token_file=None if auth is None else Path(str(auth)),
        allowed_accounts=check.accounts(
            _strings(table.get("allowed_accounts", []), f"{where}.allowed_accounts", check),
            f"{where}.allowed_accounts",
        ),
        default_session_name=default_session_name(),
    )
    check_accounts_of(role, check)
    return role


def roles(
    document: Document, raw: Raw, environ: Mapping[str, str], check: Checker
) -> tuple[tuple[RoleConfig, ...], str | None]:
    """The declared roles and the name of the default one (None if there is none)."""
    tables = document.get("roles", {})
    if not isinstance(tables, dict):
        check.add("[roles] must be a table of [roles.<name>] tables")
        return (), None
    found = [r for n, t in tables.items() if (r := _role(n, t, raw, environ, check))]
    names = [r.name for r in found]
    marked = [n for n, t in tables.items() if isinstance(t, dict) and t.get("default") is True]
    default = document.get("default_role")
    if default is not None and marked:
        check.add("use either default_role or `default = true` in one role, not both")
    if default is None:
        if len(marked) > 1:
            check.add(f"several roles are marked default ({', '.join(marked)}): keep one")
        default = (
            marked[0]
            if marked
            else (names[0] if len(names) == 1 else ("default" if "default" in names else None))
        )
    elif default not in tables:
        check.add(
            f"default_role = {shown(default)} is not one of the roles "
            f"({', '.join(names) or 'none'})"
        )
    return tuple(found), default
