"""Trust-policy checks: provider, aud, sub (and the missing-sub footgun), operators."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.devmode.issuer import OidcIssuer
from sidecar.exchange.trust_policy import check, check_token
from sidecar.sources.base import TokenClaims, inspect_token
from tests.peers import run_sidecar

GH = "token.actions.githubusercontent.com"
ISSUER = OidcIssuer(f"https://{GH}")
SUB = "repo:org/app:ref:refs/heads/main"


def claims(**extra: Any) -> TokenClaims:
    token = ISSUER.mint(SUB, **extra)
    return inspect_token(token, "test", datetime.now(UTC))


def policy(conditions: dict[str, Any] | None, provider: str = GH) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Federated": f"arn:aws:iam::123456789012:oidc-provider/{provider}"},
        "Action": "sts:AssumeRoleWithWebIdentity",
    }
    if conditions is not None:
        statement["Condition"] = conditions
    return {"Version": "2012-10-17", "Statement": [statement]}


def levels(findings: list[Any]) -> list[str]:
    return [f.level for f in findings]


def test_well_scoped_policy_passes() -> None:
    """aud StringEquals and sub StringLike matching the token: all ok."""
    findings = check(
        policy(
            {
                "StringEquals": {f"{GH}:aud": "sts.amazonaws.com"},
                "StringLike": {f"{GH}:sub": "repo:org/app:*"},
            }
        ),
        claims(),
    )
    assert levels(findings) == ["ok", "ok"]


def test_missing_sub_on_github_is_an_error() -> None:
    """No sub condition with GitHub's issuer: any repository on GitHub could assume it."""
    findings = check(policy({"StringEquals": {f"{GH}:aud": "sts.amazonaws.com"}}), claims())
    errors = [f.message for f in findings if f.level == "error"]
    assert len(errors) == 1
    assert "ANY repository on GitHub" in errors[0]
    assert f'"{GH}:sub": "{SUB}"' in errors[0]


def test_missing_sub_elsewhere_is_a_warning() -> None:
    """For other issuers a missing sub condition is a warning naming the issuer."""
    other = OidcIssuer("https://oidc.eks.eu-west-1.amazonaws.com/id/ABC")
    token_claims = inspect_token(other.mint("system:serviceaccount:ns:app"), "t", datetime.now(UTC))
    provider = "oidc.eks.eu-west-1.amazonaws.com/id/ABC"
    findings = check(
        policy({"StringEquals": {f"{provider}:aud": "sts.amazonaws.com"}}, provider), token_claims
    )
    assert levels(findings) == ["ok", "warning"]


@pytest.mark.parametrize("pattern", ["*", "repo:*"])
def test_wildcard_sub_is_flagged(pattern: str) -> None:
    """A sub pattern that admits everyone is as bad as none."""
    findings = check(
        policy({"StringLike": {f"{GH}:sub": pattern, f"{GH}:aud": "sts.amazonaws.com"}}), claims()
    )
    assert any(f.level == "warning" and "admits every subject" in f.message for f in findings)


def test_mismatches_are_explained() -> None:
    """A sub for another repository and a wrong aud: errors naming both values."""
    findings = check(
        policy(
            {
                "StringEquals": {
                    f"{GH}:aud": "sigstore",
                    f"{GH}:sub": "repo:org/other:ref:refs/heads/main",
                }
            }
        ),
        claims(),
    )
    errors = [f.message for f in findings if f.level == "error"]
    assert any("aud=sts.amazonaws.com" in e for e in errors)
    assert any(f"sub={SUB}" in e for e in errors)


def test_wrong_provider() -> None:
    """A policy trusting another issuer says which one it trusts."""
    findings = check(policy({}, "gitlab.com"), claims())
    assert levels(findings) == ["error"]
    assert "oidc-provider/gitlab.com" in findings[0].message


def test_other_claims_and_operators() -> None:
    """Conditions on other claims are evaluated; unknown operators are not guessed."""
    findings = check(
        policy(
            {
                "StringEquals": {f"{GH}:aud": "sts.amazonaws.com", f"{GH}:repository": "org/app"},
                "StringNotEquals": {f"{GH}:sub": "repo:org/app:ref:refs/heads/evil"},
                "DateGreaterThan": {f"{GH}:iat": "2020-01-01T00:00:00Z"},
            }
        ),
        claims(repository="org/app"),
    )
    assert levels(findings).count("ok") == 3
    assert any("not evaluated" in f.message for f in findings)


def test_token_checks() -> None:
    """Expired tokens and wrong audiences are errors; a valid one is ok."""
    now = datetime.now(UTC)
    fresh = check_token(claims(), "sts.amazonaws.com", now)
    assert levels(fresh) == ["ok", "ok"]
    stale = check_token(claims(), "sts.amazonaws.com", now + timedelta(hours=2))
    assert levels(stale)[0] == "error"
    wrong = check_token(claims(), "api://AzureADTokenExchange", now)
    assert levels(wrong)[1] == "error"


def test_inspect_command(tmp_path: Path) -> None:
    """`credential-sidecar inspect` prints claims and findings, never the token; exit 4."""
    token = ISSUER.mint(SUB, repository="org/app")
    (tmp_path / "token").write_text(token)
    (tmp_path / "role.json").write_text(
        json.dumps(
            {
                "Role": {
                    "AssumeRolePolicyDocument": policy(
                        {"StringEquals": {f"{GH}:aud": "sts.amazonaws.com"}}
                    )
                }
            }
        )
    )
    result = run_sidecar(
        "inspect",
        "--token-file",
        str(tmp_path / "token"),
        "--trust-policy",
        str(tmp_path / "role.json"),
    )
    assert result.returncode == 4, result.stderr
    assert f"sub    {SUB}" in result.stdout
    assert "others repository" in result.stdout
    assert "ANY repository on GitHub" in result.stdout
    assert token not in result.stdout + result.stderr
    assert token.split(".")[2] not in result.stdout + result.stderr


def test_inspect_command_ok_and_bad_policy_file(tmp_path: Path) -> None:
    """A matching token exits 0; an unreadable policy file is a configuration error."""
    (tmp_path / "token").write_text(ISSUER.mint(SUB))
    (tmp_path / "ok.json").write_text(
        json.dumps(policy({"StringEquals": {f"{GH}:aud": "sts.amazonaws.com", f"{GH}:sub": SUB}}))
    )
    base = ["inspect", "--token-file", str(tmp_path / "token")]
    ok = run_sidecar(*base, "--trust-policy", str(tmp_path / "ok.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no problems found" in ok.stdout
    (tmp_path / "bad.json").write_text("{not json")
    bad = run_sidecar(*base, "--trust-policy", str(tmp_path / "bad.json"))
    assert bad.returncode == 2
    assert "is not JSON" in bad.stderr
