"""AWS credentials as held in memory.

``Credentials`` never shows its secret parts in ``repr``; the access key id is masked
too (it identifies the session in CloudTrail, which is useful but not public).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

_ACCOUNT_IN_ARN = re.compile(r"^arn:aws[\w-]*:(?:iam|sts)::(\d{12}):")


def mask_key_id(access_key_id: str) -> str:
    """``ASIAXXXXXXXXXXXXWXYZ`` -> ``ASIA...WXYZ``: enough to correlate, not to use."""
    if len(access_key_id) <= 8:
        return "*" * len(access_key_id)
    return f"{access_key_id[:4]}...{access_key_id[-4:]}"


def account_from_arn(arn: str) -> str:
    """The 12-digit account id inside an IAM/STS ARN, or "" if it has none."""
    match = _ACCOUNT_IN_ARN.match(arn)
    return match.group(1) if match else ""


def role_name(role_arn: str) -> str:
    """``arn:aws:iam::1:role/path/name`` -> ``name`` (as EC2's IMDS lists it, and the
    metrics label a role is counted under)."""
    return role_arn.rsplit("/", 1)[-1]


def format_expiration(moment: datetime) -> str:
    """UTC with a literal ``Z`` and no fraction: the one form every SDK parses.

    JS v3 and Rust reject ``+00:00``; botocore needs a zone; Go needs RFC 3339.
    """
    if moment.tzinfo is None:
        raise ValueError("expiration must be timezone-aware")
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


@dataclass(frozen=True)
class Credentials:
    """One STS session's credentials."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    #: The role that was asked for (``arn:aws:iam::...:role/x``).
    role_arn: str
    #: Who the credentials act as (``arn:aws:sts::...:assumed-role/x/session``).
    assumed_role_arn: str

    @property
    def account_id(self) -> str:
        return account_from_arn(self.assumed_role_arn) or account_from_arn(self.role_arn)

    def __repr__(self) -> str:
        return (
            f"Credentials(access_key_id={mask_key_id(self.access_key_id)!r}, "
            f"expiration={format_expiration(self.expiration)!r}, "
            f"assumed_role_arn={self.assumed_role_arn!r})"
        )
