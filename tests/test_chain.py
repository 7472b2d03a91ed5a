"""Role chains against the STS emulator and moto: hops, re-chaining, templates, accounts."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from sidecar.config import SESSION_NAME, HopConfig, RoleConfig, StsConfig
from sidecar.core.clock import SystemClock
from sidecar.core.credentials import Credentials
from sidecar.core.errors import AccountNotAllowedError, StsError
from sidecar.core.metrics import Metrics
from sidecar.exchange.chain import ChainExchanger, TemplateError, render, sanitize_session_name
from sidecar.exchange.sts import StsClient
from sidecar.sources.base import TokenClaims, TokenSource, WebIdentityToken
from sidecar.sources.file import FileSource, FileTokenSource
from tests.peers import EmulatorThread

A = "arn:aws:iam::123456789012:role/"
B = "arn:aws:iam::210987654321:role/"


class Exchange:
    """Runs one role's chain against an STS endpoint, keeping the exchanger between calls."""

    def __init__(
        self,
        endpoint: str,
        token_path: Path,
        hops: Sequence[HopConfig],
        allowed: tuple[str, ...] = (),
    ) -> None:
        self.role = RoleConfig(
            "r",
            FileSource(token_path),
            tuple(hops),
            allowed_accounts=allowed,
            default_session_name="sidecar",
        )
        self.endpoint = endpoint
        self.token_path = token_path
        self.tokens = FileTokenSource(token_path, SystemClock())

    async def __call__(self, times: int = 1) -> list[Credentials]:
        async with self.open() as exchanger:
            return [await exchanger.exchange(self.tokens) for _ in range(times)]

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[ChainExchanger]:
        """The exchanger, for tests that act between exchanges."""
        clock = SystemClock()
        config = StsConfig("us-east-1", self.endpoint, "regional")
        async with StsClient(config, 5, Metrics(CollectorRegistry()), SystemClock()) as sts:
            yield ChainExchanger(self.role, sts, clock)


@pytest.fixture
def token_path(emulator: EmulatorThread, tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(
        emulator.issuer.mint(
            "repo:org/app:ref:refs/heads/main", repository="org/app", run_id="4711"
        )
    )
    return path


class Payload(dict[str, object]):
    """A token's decoded claims that a weak reference can watch."""


class WatchedTokens:
    """Hands out the inner source's tokens, each with claims a weak reference watches."""

    def __init__(self, inner: TokenSource) -> None:
        self.inner = inner
        self.payloads: list[weakref.ref[Payload]] = []

    async def fetch(self) -> WebIdentityToken:
        token = await self.inner.fetch()
        payload = Payload(token.claims.other)
        self.payloads.append(weakref.ref(payload))
        claims = dataclasses.replace(token.claims, other=payload)
        return dataclasses.replace(token, claims=claims)


@pytest.mark.parametrize("hops", [1, 2])
async def test_a_single_hop_keeps_no_decoded_token(
    emulator: EmulatorThread, token_path: Path, hops: int
) -> None:
    """After an exchange a single-hop role holds nothing of the decoded token (the node
    agent keeps thousands); a chain keeps the claims its later hops' templates use."""
    chain = [HopConfig(A + "ci", 3600), HopConfig(A + "upload-to-s3", 3600)][:hops]
    exchange = Exchange(emulator.url, token_path, chain)
    tokens = WatchedTokens(exchange.tokens)
    async with exchange.open() as exchanger:
        await exchanger.exchange(tokens)
        gc.collect()
        kept = [ref for ref in tokens.payloads if ref() is not None]
        assert len(kept) == (hops > 1)


async def test_two_hop_chain(emulator: EmulatorThread, token_path: Path) -> None:
    """Web identity into ci, then AssumeRole into a narrow role signed by ci's credentials."""
    hops = [HopConfig(A + "ci", 43200), HopConfig(A + "upload-to-s3", 3600)]
    (creds,) = await Exchange(emulator.url, token_path, hops)()
    assert creds.role_arn == A + "upload-to-s3"
    assert creds.assumed_role_arn == "arn:aws:sts::123456789012:assumed-role/upload-to-s3/sidecar"
    assert emulator.last_params("AssumeRole")["DurationSeconds"] == "3600"


async def test_three_hops_with_every_option(emulator: EmulatorThread, token_path: Path) -> None:
    """External id, policies, tags, transitive keys and source identity reach STS."""
    hops = [
        HopConfig(A + "ci", 7200, session_name="{repository}-{run_id}"),
        HopConfig(A + "deployer", 3600),
        HopConfig(
            B + "target",
            900,
            session_name="{sub}",
            external_id="ext-123",
            policy='{"Version":"2012-10-17","Statement":[]}',
            policy_arns=("arn:aws:iam::aws:policy/ReadOnlyAccess",),
            tags=(("team", "build"),),
            transitive_tag_keys=("team",),
            source_identity="{repository}",
        ),
    ]
    (creds,) = await Exchange(emulator.url, token_path, hops)()
    assert (
        creds.assumed_role_arn
        == "arn:aws:sts::210987654321:assumed-role/target/repo-org-app-ref-refs-heads-main"
    )
    sent = emulator.last_params("AssumeRole")
    assert sent["RoleArn"] == B + "target"
    assert sent["ExternalId"] == "ext-123"
    assert sent["Policy"] == '{"Version":"2012-10-17","Statement":[]}'
    assert sent["PolicyArns.member.1.arn"] == "arn:aws:iam::aws:policy/ReadOnlyAccess"
    assert sent["Tags.member.1.Key"] == "team" and sent["Tags.member.1.Value"] == "build"
    assert sent["TransitiveTagKeys.member.1"] == "team"
    assert sent["SourceIdentity"] == "org-app"
    assert emulator.last_params("AssumeRoleWithWebIdentity")["RoleSessionName"] == "org-app-4711"


async def test_later_hop_session_defaults_to_previous(
    emulator: EmulatorThread, token_path: Path
) -> None:
    """Without a session name a chained hop keeps the previous hop's ("who I am")."""
    hops = [HopConfig(A + "ci", 3600, session_name="{run_id}-job"), HopConfig(A + "narrow")]
    (creds,) = await Exchange(emulator.url, token_path, hops)()
    assert creds.assumed_role_arn.endswith("assumed-role/narrow/4711-job")


async def test_rechain_from_long_first_hop(emulator: EmulatorThread, token_path: Path) -> None:
    """Later refreshes re-run only the chained hops; the token is used once."""
    web_before = emulator.calls("AssumeRoleWithWebIdentity")
    chained_before = emulator.calls("AssumeRole")
    hops = [HopConfig(A + "ci", 43200), HopConfig(A + "narrow")]
    first, second, third = await Exchange(emulator.url, token_path, hops)(times=3)
    assert len({first.access_key_id, second.access_key_id, third.access_key_id}) == 3
    assert emulator.calls("AssumeRoleWithWebIdentity") - web_before == 1
    assert emulator.calls("AssumeRole") - chained_before == 3


@pytest.mark.parametrize("code", ["AccessDenied", "ExpiredToken", "InvalidClientTokenId"])
async def test_dead_first_hop_is_dropped_and_the_chain_restarts(
    emulator: EmulatorThread, token_path: Path, code: str
) -> None:
    """Hop 2 refusing the kept first hop (revoked sessions): the chain restarts from the token."""
    hops = [HopConfig(A + "ci", 43200), HopConfig(A + "narrow")]
    web_before = emulator.calls("AssumeRoleWithWebIdentity")
    exchange = Exchange(emulator.url, token_path, hops)
    async with exchange.open() as exchanger:
        await exchanger.exchange(exchange.tokens)
        emulator.add_fault(action="AssumeRole", error=code, status=403, count=1)
        creds = await exchanger.exchange(exchange.tokens)
    assert creds.role_arn == A + "narrow"
    assert emulator.calls("AssumeRoleWithWebIdentity") - web_before == 2


async def test_refused_chain_does_not_keep_its_first_hop(
    emulator: EmulatorThread, token_path: Path
) -> None:
    """Hop 2 refusing a fresh first hop fails; the next attempt starts from the token again."""
    hops = [HopConfig(A + "ci", 43200), HopConfig(A + "narrow")]
    web_before = emulator.calls("AssumeRoleWithWebIdentity")
    exchange = Exchange(emulator.url, token_path, hops)
    async with exchange.open() as exchanger:
        emulator.add_fault(action="AssumeRole", error="AccessDenied", status=403, count=1)
        with pytest.raises(StsError, match="AccessDenied"):
            await exchanger.exchange(exchange.tokens)
        await exchanger.exchange(exchange.tokens)
    assert emulator.calls("AssumeRoleWithWebIdentity") - web_before == 2


async def test_drop_cached_forces_the_whole_chain(
    emulator: EmulatorThread, token_path: Path
) -> None:
    """drop_cached (what SIGHUP calls) makes the next exchange start from the web identity."""
    hops = [HopConfig(A + "ci", 43200), HopConfig(A + "narrow")]
    web_before = emulator.calls("AssumeRoleWithWebIdentity")
    exchange = Exchange(emulator.url, token_path, hops)
    async with exchange.open() as exchanger:
        await exchanger.exchange(exchange.tokens)
        await exchanger.exchange(exchange.tokens)
        assert emulator.calls("AssumeRoleWithWebIdentity") - web_before == 1
        exchanger.drop_cached()
        await exchanger.exchange(exchange.tokens)
    assert emulator.calls("AssumeRoleWithWebIdentity") - web_before == 2


async def test_short_first_hop_is_renewed(emulator: EmulatorThread, token_path: Path) -> None:
    """A first hop close to expiry is exchanged again before re-chaining."""
    web_before = emulator.calls("AssumeRoleWithWebIdentity")
    emulator.add_fault(action="AssumeRoleWithWebIdentity", lifetime=300)
    hops = [HopConfig(A + "ci", 3600), HopConfig(A + "narrow")]
    await Exchange(emulator.url, token_path, hops)(times=2)
    assert emulator.calls("AssumeRoleWithWebIdentity") - web_before == 2


async def test_account_allow_list(emulator: EmulatorThread, token_path: Path) -> None:
    """Credentials for an account outside the allow-list are refused."""
    hops = [HopConfig(A + "ci"), HopConfig(B + "elsewhere")]
    exchange = Exchange(emulator.url, token_path, hops, allowed=("123456789012",))
    with pytest.raises(AccountNotAllowedError, match="210987654321"):
        await exchange()


async def test_unknown_claim_in_template(emulator: EmulatorThread, token_path: Path) -> None:
    """A template naming a missing claim is a clear, fatal error listing what exists."""
    hops = [HopConfig(A + "ci", session_name="{workflow_ref}")]
    with pytest.raises(TemplateError, match=r"'workflow_ref'.*it has: .*repository"):
        await Exchange(emulator.url, token_path, hops)()


async def test_chain_against_moto(moto_sts: str, tmp_path: Path) -> None:
    """The same two-hop chain works against moto's STS implementation."""
    from sidecar.devmode.issuer import OidcIssuer

    path = tmp_path / "token"
    path.write_text(OidcIssuer("https://oidc.example").mint("repo:org/app"))
    hops = [HopConfig(A + "ci", 43200), HopConfig(A + "upload", 3600, session_name="hop2")]
    (creds,) = await Exchange(moto_sts, path, hops)()
    assert creds.assumed_role_arn.endswith(":assumed-role/upload/hop2")
    assert creds.access_key_id


@given(st.text(max_size=200))
def test_sanitized_names_are_always_valid(text: str) -> None:
    """Whatever a claim holds, the rendered session name satisfies STS's pattern."""
    assert SESSION_NAME.match(sanitize_session_name(text))


def test_render() -> None:
    """Templates pull claims and the previous session; plain names pass through."""
    claims = TokenClaims("iss", "repo:o/r", ("sts",), None, {"sub": "repo:o/r", "run_id": 7})
    assert render("{sub}", claims, None, "r") == "repo-o-r"
    assert render("run-{run_id}", claims, None, "r") == "run-7"
    assert render("{previous_session}", claims, "me@example.com", "r") == "me@example.com"
    assert render("fixed-name", None, None, "r") == "fixed-name"


async def test_clamped_chain_is_accepted_by_sts(emulator: EmulatorThread, token_path: Path) -> None:
    """--duration 12h with --chain: the chained hop is clamped to 1 h, which STS accepts."""
    from sidecar.config import load_config

    config = load_config(
        {
            "role_arn": A + "ci",
            "duration": "12h",
            "chain": A + "narrow",
            "token_file": str(token_path),
            "insecure_no_auth": "1",
        },
        {},
    )
    hops = config.roles[0].hops
    assert [h.duration for h in hops] == [43200, 3600]
    (creds,) = await Exchange(emulator.url, token_path, hops)()
    assert creds.assumed_role_arn.endswith(":assumed-role/narrow/sidecar")
    assert emulator.last_params("AssumeRole")["DurationSeconds"] == "3600"
