"""Which Kubernetes service account gets which role: the node agent's associations file.

    [[associations]]
    namespace = "payments"
    service_account = "api"
    role_arn = "arn:aws:iam::111122223333:role/payments-api"
    # any role option of `serve`'s config file: duration, session_name, policy,
    # policy_arns, allowed_accounts, or hops = [...] for a chain

The file is parsed whole, every problem reported at once; a broken new version keeps the
associations in force (and says why). The file is re-read when it changes, or on SIGHUP.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.config.checks import Checker, check_accounts_of, shown
from sidecar.config.file import HOP_KEYS, role_hops
from sidecar.config.model import RoleConfig
from sidecar.core.errors import ConfigError
from sidecar.core.safe_read import read_small_file
from sidecar.exchange.chain import sanitize_session_name
from sidecar.sources.presented import PresentedSource

log = logging.getLogger(__name__)

#: A Kubernetes namespace or service account name (RFC 1123 label / subdomain).
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
ASSOCIATION_KEYS = HOP_KEYS | {"namespace", "service_account", "hops", "allowed_accounts"}
MAX_ASSOCIATIONS_BYTES = 4 * 1024 * 1024

ServiceAccount = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Association:
    namespace: str
    service_account: str
    #: The role as the exchange sees it; its token is the one the pod presents.
    role: RoleConfig

    @property
    def subject(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass(frozen=True)
class Associations:
    by_account: Mapping[ServiceAccount, Association]
    #: Where they came from, for error messages.
    origin: str
    digest: bytes = b""

    def find(self, namespace: str, service_account: str) -> Association | None:
        return self.by_account.get((namespace, service_account))

    def __len__(self) -> int:
        return len(self.by_account)


def parse_associations(document: Any, audience: str, origin: str) -> Associations:
    """The associations in a parsed TOML document, or a ``ConfigError`` listing every problem."""
    check = Checker()
    tables = document.get("associations", []) if isinstance(document, dict) else None
    if isinstance(document, dict):
        for key in sorted(set(document) - {"associations"}):
            check.add(
                f"{origin}: unknown key {shown(key)}; only [[associations]] tables belong here"
            )
    if not isinstance(tables, list):
        check.add(f"{origin}: associations must be an array of tables ([[associations]])")
        tables = []
    found: dict[ServiceAccount, Association] = {}
    source = PresentedSource(audience)  # one for all: a node has thousands of associations
    for number, table in enumerate(tables, start=1):
        where = f"{origin}: association {number}"
        association = _association(table, where, source, check)
        if association is None:
            continue
        account = (association.namespace, association.service_account)
        if account in found:
            check.add(
                f"{where}: {account[0]}/{account[1]} is associated twice; a service account "
                "gets exactly one role"
            )
        found[account] = association
    if check.problems:
        raise ConfigError(check.problems)
    return Associations(found, origin)


def _association(
    table: Any, where: str, source: PresentedSource, check: Checker
) -> Association | None:
    if not isinstance(table, dict):
        check.add(f"{where} must be a table")
        return None
    for key in sorted(set(table) - ASSOCIATION_KEYS):
        check.add(
            f"{where}: unknown key {shown(key)}; known: {', '.join(sorted(ASSOCIATION_KEYS))}"
        )
    names = []
    for key in ("namespace", "service_account"):
        value = table.get(key)
        if not isinstance(value, str) or not _K8S_NAME.match(value):
            check.add(
                f"{where}: {key} = {shown(value)} must be a Kubernetes name (lower-case "
                "letters, digits, '-' and '.')"
            )
            continue  # check the other name too: every problem at once
        names.append(value)
    if len(names) != 2:
        return None
    # Namespaces repeat (a few dozen for thousands of accounts): one string each.
    namespace, service_account = sys.intern(names[0]), names[1]
    where = f"{where} ({namespace}/{service_account})"
    hops = role_hops(table, where, check)
    if hops is None:
        return None
    accounts = table.get("allowed_accounts", [])
    if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
        check.add(f"{where}.allowed_accounts must be a list of strings")
        accounts = []
    role = RoleConfig(
        name=f"{namespace}/{service_account}",
        token=source,
        hops=hops,
        allowed_accounts=check.accounts(tuple(accounts), f"{where}.allowed_accounts"),
        # CloudTrail shows who it was: the service account, not a generic name.
        default_session_name=session_name_for(namespace, service_account),
    )
    check_accounts_of(role, check)
    return Association(namespace, service_account, role)


def session_name_for(namespace: str, service_account: str) -> str:
    """``namespace.service_account``; cut to STS's 64 characters with a digest of the whole,
    so two long names sharing a role still tell apart in CloudTrail."""
    name = f"{namespace}.{service_account}"
    if len(name) > 64:
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[:53]}-{digest}"
    return sanitize_session_name(name)


def load_associations(path: Path, audience: str) -> Associations:
    """Read and parse ``path`` (bounded, a regular file); ``ConfigError`` on any problem."""
    origin = str(path)

    def fail(problem: str) -> ConfigError:
        return ConfigError([f"associations file {path} {problem}"])

    try:
        raw, _ = read_small_file(path, fail, MAX_ASSOCIATIONS_BYTES)
    except FileNotFoundError:
        raise fail("does not exist: give --associations the path of the TOML file") from None
    try:
        document = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise fail(f"is not valid TOML: {exc}") from None
    parsed = parse_associations(document, audience, origin)
    return Associations(parsed.by_account, origin, hashlib.sha256(raw).digest())
