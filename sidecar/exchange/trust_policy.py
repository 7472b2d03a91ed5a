"""Check a role's trust policy against a web-identity token, before STS says "AccessDenied".

STS answers a mismatch with a bare "Not authorized to perform
sts:AssumeRoleWithWebIdentity". This module finds which part does not match — the
provider, the audience, the subject — and flags the dangerous case: a policy that trusts
an issuer without a ``sub`` condition, which lets *any* workload of that issuer (for GitHub
Actions: any repository on GitHub) assume the role.

Supported condition operators: StringEquals, StringLike, StringEqualsIgnoreCase, their
``Not`` forms, and the ``ForAnyValue:``/``ForAllValues:`` set prefixes. Others are reported
as not evaluated rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sidecar.core.credentials import format_expiration
from sidecar.sources.base import STS_EXP_LEEWAY, TokenClaims

GITHUB_ISSUER = "token.actions.githubusercontent.com"
_WEB_IDENTITY_ACTIONS = {"sts:assumerolewithwebidentity", "sts:*", "*"}


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning" | "ok"
    message: str


def provider_of(issuer: str) -> str:
    """``https://token.actions.githubusercontent.com/`` -> the IAM provider's name."""
    parts = urlsplit(issuer)
    return (parts.netloc + parts.path).rstrip("/") if parts.netloc else issuer.rstrip("/")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _like(value: str, pattern: str) -> bool:
    # IAM's StringLike: * and ? are wildcards, nothing else is (no [] classes).
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


_TESTS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda actual, expected: actual == expected,
    "StringEqualsIgnoreCase": lambda actual, expected: actual.lower() == expected.lower(),
    "StringLike": _like,
}


def _matches(operator: str, actual: list[str], expected: list[str]) -> bool | None:
    """Whether the condition holds; None for operators we do not evaluate."""
    base = (
        operator.split(":", 1)[1]
        if operator.startswith(("ForAnyValue:", "ForAllValues:"))
        else operator
    )
    negate = "Not" in base
    test = _TESTS.get(base.replace("Not", ""))
    if test is None:
        return None
    hits = [any(test(a, e) for e in expected) for a in actual]
    result = all(hits) if operator.startswith("ForAllValues:") else any(hits)
    return not result if negate else result


def _admits_everyone(pattern: str, provider: str) -> bool:
    # Every GitHub Actions subject starts with "repo:", so "repo:*" admits all of GitHub.
    return pattern.strip("*") == "" or (provider == GITHUB_ISSUER and pattern == "repo:*")


def _claim(claims: TokenClaims, name: str) -> list[str]:
    if name == "aud":
        return list(claims.audience)
    if name == "sub":
        return [claims.subject]
    return [str(v) for v in _as_list(claims.other.get(name))]


def _statements(policy: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for statement in _as_list(policy.get("Statement")):
        if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
            continue
        actions = {str(a).lower() for a in _as_list(statement.get("Action"))}
        if actions & _WEB_IDENTITY_ACTIONS:
            yield statement


def check_token(claims: TokenClaims, audience: str, now: datetime) -> list[Finding]:
    """What STS will say about the token itself: expiry and audience."""
    findings: list[Finding] = []
    if claims.expires_at is None:
        findings.append(Finding("warning", "the token has no exp claim"))
    else:
        left = (claims.expires_at - now).total_seconds()
        if left < -STS_EXP_LEEWAY:
            findings.append(Finding("error", f"the token expired at {claims.expires_text}"))
        elif left < 60:  # about to expire before anyone could use it
            findings.append(
                Finding(
                    "warning",
                    f"the token expires in {left:.0f}s ({format_expiration(claims.expires_at)})",
                )
            )
        else:
            findings.append(Finding("ok", f"the token is valid for {left / 60:.0f} more min"))
    if audience in claims.audience:
        findings.append(Finding("ok", f"aud contains {audience}"))
    else:
        findings.append(
            Finding(
                "error",
                f"aud is {', '.join(claims.audience) or '(none)'}, not {audience}: request "
                f"the token for audience {audience}, or pass --audience to match the IAM "
                "OIDC provider's client ID",
            )
        )
    return findings


def check(policy: dict[str, Any], claims: TokenClaims) -> list[Finding]:
    """Every reason this token would (or should not) be accepted by this trust policy."""
    provider = provider_of(claims.issuer)
    trusted: list[str] = []
    matching: list[dict[str, Any]] = []
    for statement in _statements(policy):
        principal = statement.get("Principal", {})
        federated = _as_list(principal.get("Federated")) if isinstance(principal, dict) else []
        trusted += [str(f) for f in federated]
        if any(str(f).endswith(f":oidc-provider/{provider}") for f in federated):
            matching.append(statement)
    if not matching:
        return [
            Finding(
                "error",
                f"no Allow statement for sts:AssumeRoleWithWebIdentity trusts "
                f"oidc-provider/{provider} (the token's issuer); the policy trusts: "
                f"{', '.join(trusted) or 'no federated principal'}",
            )
        ]
    findings: list[Finding] = []
    for number, statement in enumerate(matching, start=1):
        findings += _check_statement(number, statement, claims, provider)
    return findings


def _check_statement(
    number: int, statement: dict[str, Any], claims: TokenClaims, provider: str
) -> list[Finding]:
    where = f"statement {statement.get('Sid') or number}"
    findings: list[Finding] = []
    seen_claims: set[str] = set()
    conditions = statement.get("Condition", {})
    for operator, tests in conditions.items() if isinstance(conditions, dict) else []:
        for key, expected_raw in tests.items() if isinstance(tests, dict) else []:
            if not key.lower().startswith(provider.lower() + ":"):
                continue
            claim = key.split(":")[-1]
            seen_claims.add(claim)
            expected = [str(e) for e in _as_list(expected_raw)]
            actual = _claim(claims, claim)
            result = _matches(operator, actual, expected)
            shown = ", ".join(actual) or "(missing)"
            if result is None:
                findings.append(
                    Finding(
                        "warning",
                        f"{where}: {operator} on {key} is not evaluated here; check it by hand",
                    )
                )
            elif result:
                findings.append(
                    Finding(
                        "ok",
                        f"{where}: {key} {operator} {expected} matches the token's {claim}={shown}",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "error",
                        f"{where}: {key} {operator} {expected} does "
                        f"not match the token's {claim}={shown}",
                    )
                )
            if (
                claim == "sub"
                and "Not" not in operator
                and any(_admits_everyone(e, provider) for e in expected)
            ):
                findings.append(
                    Finding(
                        "warning",
                        f"{where}: the sub pattern {expected} admits every subject of the issuer",
                    )
                )
    if "sub" not in seen_claims:
        scope = (
            "ANY repository on GitHub"
            if provider == GITHUB_ISSUER
            else f"any workload {provider} issues tokens for"
        )
        findings.append(
            Finding(
                "error" if provider == GITHUB_ISSUER else "warning",
                f"{where} has no {provider}:sub condition: {scope} can assume this role. Add "
                f'"StringEquals": {{"{provider}:sub": "{claims.subject}"}} (or a StringLike '
                "pattern as narrow as you can)",
            )
        )
    if "aud" not in seen_claims:
        findings.append(
            Finding(
                "warning",
                f"{where} has no {provider}:aud condition; "
                f"add one for {', '.join(claims.audience)}",
            )
        )
    return findings
