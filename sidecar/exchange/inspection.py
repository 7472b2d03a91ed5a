"""``credential-sidecar inspect``: what STS will think of this token and this trust policy.

Fetches one token from the configured source (never printing it), shows its claims, and
checks it — and, given the role's trust policy, the policy — for the mistakes that STS
only reports as "InvalidIdentityToken" or "Not authorized".
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.config.checks import Checker
from sidecar.config.settings import Raw
from sidecar.core.clock import SystemClock
from sidecar.core.errors import ConfigError
from sidecar.core.safe_read import MAX_INPUT_BYTES
from sidecar.exchange.trust_policy import Finding, check, check_token
from sidecar.sources.registry import SourceContext, build_source, kind_of

#: Claims shown on their own line; the others are listed by name.
_SHOWN = ("iss", "sub", "aud", "exp", "iat", "nbf")


@dataclass(frozen=True)
class Report:
    origin: str
    claims: list[tuple[str, str]]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return all(f.level != "error" for f in self.findings)

    def render(self) -> str:
        lines = [f"token from {self.origin} (the token itself is never shown)"]
        lines += [f"  {name:<6} {value}" for name, value in self.claims]
        lines += [f"{f.level:<8} {f.message}" for f in self.findings]
        verdict = "no problems found" if self.ok else "problems found: see the errors above"
        return "\n".join([*lines, verdict])


def _load_policy(path: Path) -> dict[str, Any]:
    try:
        # A pipe is fine here (`--trust-policy <(aws iam get-role ...)`), but bounded.
        with path.open("rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"--trust-policy {path} cannot be read: {exc.strerror}"]) from None
    if len(data) > MAX_INPUT_BYTES:
        raise ConfigError(
            [f"--trust-policy {path} is larger than 64 KiB: is it a role's trust policy?"]
        )
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ConfigError([f"--trust-policy {path} is not JSON: {exc}"]) from None
    # Accept both the bare policy and `aws iam get-role` output.
    role = document.get("Role", {}) if isinstance(document, dict) else {}
    policy = role.get("AssumeRolePolicyDocument", document)
    if not isinstance(policy, dict) or "Statement" not in policy:
        raise ConfigError(
            [
                f"--trust-policy {path} has no Statement: pass the role's trust "
                "policy (or `aws iam get-role --role-name NAME` output)"
            ]
        )
    return policy


async def inspect(raw: Raw, environ: Mapping[str, str], policy_path: Path | None) -> Report:
    checker = Checker()
    source_config = checker.token_source(raw, environ)
    if checker.problems:
        raise ConfigError(checker.problems)
    policy = _load_policy(policy_path) if policy_path else None
    audience = source_config.audience
    if not kind_of(source_config).requests_audience:
        # Fetch without the audience check: a mismatch is reported below with the claims.
        source_config = dataclasses.replace(source_config, audience="")
    clock = SystemClock()
    async with aiohttp.ClientSession(trust_env=True) as session:
        token = await build_source(source_config, SourceContext(clock, session, environ)).fetch()
    claims = token.claims
    shown = [
        ("iss", claims.issuer),
        ("sub", claims.subject),
        ("aud", ", ".join(claims.audience)),
        ("exp", claims.expires_text),
    ]
    others = sorted(k for k in claims.other if k not in _SHOWN)
    if others:
        shown.append(("others", ", ".join(others)))
    findings = check_token(claims, audience, clock.now())
    if policy is not None:
        findings += check(policy, claims)
    return Report(token.origin, shown, findings)
