"""A simulated cluster on one machine, against real ``node-agent`` processes.

The STS emulator's issuer plays the cluster's service-account issuer (the agent finds its
keys by OIDC discovery) and the emulator verifies every token it is sent. Hundreds of
concurrent "pods" (aiohttp clients, each with its own projected-style token) of dozens of
service accounts in several namespaces ask one agent for credentials. A few pods run in
network namespaces and reach an agent inside a "node" namespace on 169.254.170.23 and
fd00:ec2::23 over veth pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from sidecar.cli import EXIT_LISTEN
from sidecar.devmode.issuer import OidcIssuer
from tests import netns
from tests.peers import DaemonProcess, EmulatorThread, clean_aws_env

ACCOUNT = "123456789012"
NAMESPACES = ("payments", "builds", "search", "ml")
ACCOUNTS_PER_NAMESPACE = 8
PODS_PER_ACCOUNT = 10
STORM = [(ns, f"sa{i}") for ns in NAMESPACES for i in range(ACCOUNTS_PER_NAMESPACE)]
#: Service accounts each test below has to itself (identities not created by another).
REFUSALS, ROTATION = ("refusals", "app"), ("rotation", "app")


def role_of(namespace: str, account: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{namespace}-{account}"


def associations_toml(accounts: Sequence[tuple[str, str]], **roles: str) -> str:
    """``[[associations]]`` for ``accounts``; ``roles`` overrides a role ("ns/sa": arn)."""
    tables = []
    for namespace, account in accounts:
        role = roles.get(f"{namespace}/{account}", role_of(namespace, account))
        tables.append(
            f'[[associations]]\nnamespace = "{namespace}"\nservice_account = "{account}"\n'
            f'role_arn = "{role}"\n'
        )
    return "\n".join(tables)


def write_atomically(path: Path, text: str) -> None:
    """As a ConfigMap update lands: a new file renamed over the old one."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def pod_token(
    issuer: OidcIssuer,
    namespace: str,
    account: str,
    ttl: float = 3600,
    now: float | None = None,
    audience: str = "sts.amazonaws.com",
) -> str:
    """What the kubelet projects into a pod of ``namespace/account`` (a fresh pod each)."""
    claims = {
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
            "pod": {"name": f"{account}-{uuid.uuid4().hex[:10]}", "uid": str(uuid.uuid4())},
        }
    }
    return issuer.mint(
        f"system:serviceaccount:{namespace}:{account}",
        audience=audience,
        ttl=ttl,
        now=now,
        **claims,
    )


class NodeAgent(DaemonProcess):
    """``python -m sidecar node-agent`` as a real child process (``prefix``: run it inside
    a network namespace)."""

    def __init__(self, args: Sequence[str], prefix: Sequence[str] = ()) -> None:
        super().__init__(args, clean_aws_env())
        self.args = [
            *prefix,
            sys.executable,
            "-m",
            "sidecar",
            "node-agent",
            "--log-format",
            "json",
            *args,
        ]
        self.started: dict[str, Any] = {}
        #: Where --metrics-listen serves /metrics (the pods' listener never does).
        self.metrics_url = ""

    def start(self, wait_for: str | None = "started", timeout: float = 20) -> NodeAgent:
        super().start(wait_for=None)
        if wait_for:
            self.started = self.wait_event(wait_for, timeout)
            self.url = str(self.started["urls"][0])
            if "--metrics-listen" in self.args:  # logged just before "started"
                (metrics,) = self.events("metrics_started")
                self.metrics_url = str(metrics["url"])
        return self


@contextlib.contextmanager
def node_agent(args: Sequence[str], prefix: Sequence[str] = ()) -> Iterator[NodeAgent]:
    agent = NodeAgent(args, prefix)
    try:
        yield agent.start()
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
        agent.kill()


def agent_args(emulator: EmulatorThread, associations: Path, *extra: str) -> list[str]:
    """An agent trusting the emulator's issuer (keys by OIDC discovery), exchanging with
    the emulator, on a free loopback port."""
    return [
        "--issuer",
        emulator.issuer.url,
        "--associations",
        str(associations),
        "--sts-endpoint",
        emulator.url,
        "--region",
        "us-east-1",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        # The simulated pods all connect from 127.0.0.1; real pods have an address each.
        "--max-connections-per-client",
        "1024",
        *extra,
    ]


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    """The cluster's issuer and the STS that trusts it (this module's own: its counts)."""
    with EmulatorThread() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def agent(cluster: EmulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """One node's agent serving the storm's service accounts (and the tests' own), with
    room in the STS cap for a whole storm."""
    path = tmp_path_factory.mktemp("node") / "associations.toml"
    path.write_text(associations_toml([*STORM, REFUSALS, ROTATION]))
    args = agent_args(cluster, path, "--sts-rate", "1000", "--sts-burst", "1000")
    with node_agent([*args, "--request-wait", "20s"]) as process:
        yield process
        code, _ = process.stop()
        assert code == 0, process.output  # SIGTERM after all that: a clean exit


@pytest.fixture
async def pods() -> AsyncIterator[aiohttp.ClientSession]:
    """HTTP clients of many pods: no connection reuse, so each request is its own client."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


async def ask(
    session: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, dict[str, Any]]:
    """One pod's request, as an SDK sends it: the token file's content as Authorization."""
    headers = {} if token is None else {"Authorization": token}
    async with session.get(url, headers=headers) as response:
        return response.status, await response.json(content_type=None)


def sts_calls(emulator: EmulatorThread) -> int:
    return emulator.calls("AssumeRoleWithWebIdentity")


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from a /metrics page (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(f"{name}{{{wanted}}}" if labels else name) + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found[1]) if found else 0.0


async def test_a_pod_start_storm_gets_each_pod_its_role_for_one_sts_call_per_identity(
    cluster: EmulatorThread, agent: NodeAgent, pods: aiohttp.ClientSession
) -> None:
    """320 pods of 32 service accounts in 4 namespaces start at once: each gets exactly
    its service account's role (the emulator issued those credentials for that role, to
    that service account), pods of one account share one session, and the storm costs one
    STS call per identity."""
    before = sts_calls(cluster)
    accounts = [account for account in STORM for _ in range(PODS_PER_ACCOUNT)]
    random.Random(9).shuffle(accounts)  # pods of all accounts start interleaved
    tokens = [pod_token(cluster.issuer, ns, sa) for ns, sa in accounts]
    answers = await asyncio.gather(*(ask(pods, agent.url, token) for token in tokens))
    assert sts_calls(cluster) - before == len(STORM)
    keys: dict[tuple[str, str], set[str]] = {}
    for (namespace, account), (status, body) in zip(accounts, answers, strict=True):
        assert status == 200, body
        assert body["RoleArn"] == role_of(namespace, account)
        assert body["AccountId"] == ACCOUNT
        keys.setdefault((namespace, account), set()).add(body["AccessKeyId"])
        session = cluster.emulator.sessions[body["AccessKeyId"]]
        assert session.role_name == f"{namespace}-{account}"
        assert session.session_name == f"{namespace}.{account}"
        assert session.session_token == body["Token"]
    assert all(len(k) == 1 for k in keys.values())  # one session per service account
    assert len(set.union(*keys.values())) == len(STORM)
    async with pods.get(agent.metrics_url) as response:
        page = await response.text()
    for namespace in NAMESPACES:
        assert metric(page, "credential_sidecar_identities", namespace=namespace) == 8
        labels = {"namespace": namespace, "result": "miss"}
        assert metric(page, "credential_sidecar_identity_lookups_total", **labels) == 8


def forged(issuer: OidcIssuer, namespace: str, account: str) -> str:
    """Signed by another key that claims our issuer's key id."""
    impostor = OidcIssuer(issuer.url)
    impostor.kid = issuer.kid
    return pod_token(impostor, namespace, account)


def foreign(issuer: OidcIssuer, namespace: str, account: str) -> str:
    """Another cluster's token: a valid signature of its own, its own iss."""
    return pod_token(OidcIssuer("https://oidc.other-cluster.example.com"), namespace, account)


def unsigned(issuer: OidcIssuer, namespace: str, account: str) -> str:
    payload = {
        "iss": issuer.url,
        "sub": f"system:serviceaccount:{namespace}:{account}",
        "aud": "sts.amazonaws.com",
        "exp": int(time.time()) + 3600,
    }
    return jwt.encode(payload, "", algorithm="none")


REFUSED = {
    "forged": (forged, 401, "InvalidSignature"),
    "expired": (
        lambda i, ns, sa: pod_token(i, ns, sa, ttl=3600, now=time.time() - 7200),
        401,
        "TokenExpired",
    ),
    "wrong audience": (
        lambda i, ns, sa: pod_token(i, ns, sa, audience="vault"),
        403,
        "InvalidAudience",
    ),
    "wrong issuer": (foreign, 403, "InvalidIssuer"),
    "unsigned": (unsigned, 401, "InvalidToken"),  # an empty signature: not even a JWS
}


async def test_bad_tokens_are_refused_without_an_sts_call(
    cluster: EmulatorThread, agent: NodeAgent, pods: aiohttp.ClientSession
) -> None:
    """Forged (other key, same kid), expired, wrong-audience, wrong-issuer and unsigned
    tokens of an associated service account, a missing token and a service account without
    an association get their JSON status and code; none of them reaches STS or the cache."""
    before = sts_calls(cluster)
    namespace, account = REFUSALS
    for name, (make, status, code) in REFUSED.items():
        got, body = await ask(pods, agent.url, make(cluster.issuer, namespace, account))
        assert (got, body.get("code")) == (status, code), (name, body)
    got, body = await ask(pods, agent.url, None)
    assert (got, body["code"]) == (401, "MissingAuthorization")
    got, body = await ask(pods, agent.url, pod_token(cluster.issuer, "payments", "intruder"))
    assert (got, body["code"]) == (403, "NoAssociation")
    assert "service account intruder in namespace payments" in body["message"]
    assert sts_calls(cluster) == before
    async with pods.get(agent.metrics_url) as response:
        page = await response.text()
    assert metric(page, "credential_sidecar_identities", namespace=namespace) == 0
    for reason in ("signature", "expired", "audience", "issuer", "no_association", "missing"):
        assert metric(page, "credential_sidecar_pod_token_refusals_total", reason=reason) >= 1


async def test_token_rotation_is_served_from_the_cache(
    cluster: EmulatorThread, agent: NodeAgent, pods: aiohttp.ClientSession
) -> None:
    """A rotated token (new exp, new pod) of a cached service account is served the cached
    session: no STS call."""
    namespace, account = ROTATION
    status, first = await ask(pods, agent.url, pod_token(cluster.issuer, namespace, account))
    assert status == 200, first
    calls = sts_calls(cluster)
    for ttl in (4000, 5000, 6000):
        status, body = await ask(
            pods, agent.url, pod_token(cluster.issuer, namespace, account, ttl=ttl)
        )
        assert status == 200, body
        assert body["AccessKeyId"] == first["AccessKeyId"]
    assert sts_calls(cluster) == calls


async def test_the_sts_rate_cap_holds_and_waiting_pods_get_an_answer(
    cluster: EmulatorThread, tmp_path: Path, pods: aiohttp.ClientSession
) -> None:
    """With --sts-rate 4 --sts-burst 2, a storm of 12 new identities reaches STS at most
    2 + 4/s (sampled from the emulator's counts); a pod whose exchange waits for the cap
    gets credentials or a 503 within its request wait, never a hang, and its retries cost
    no extra STS call."""
    accounts = [("capped", f"sa{i}") for i in range(12)]
    path = tmp_path / "associations.toml"
    path.write_text(associations_toml(accounts))
    args = agent_args(cluster, path, "--sts-rate", "4", "--sts-burst", "2", "--request-wait", "1s")
    with node_agent(args) as capped:
        before = sts_calls(cluster)
        samples: list[tuple[float, int]] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                count = await asyncio.to_thread(sts_calls, cluster)
                samples.append((time.monotonic(), count - before))
                await asyncio.sleep(0.05)

        async def pod(namespace: str, account: str) -> list[tuple[int, float]]:
            """Retries a 503 after a short pause, as SDKs do; (status, seconds) per try."""
            tries = []
            while True:
                token = pod_token(cluster.issuer, namespace, account)
                started = time.monotonic()
                async with pods.get(capped.url, headers={"Authorization": token}) as response:
                    status, body = response.status, await response.json(content_type=None)
                    retry_after = response.headers.get("Retry-After")
                tries.append((status, time.monotonic() - started))
                if status != 503:
                    assert status == 200 and body["RoleArn"] == role_of(namespace, account)
                    return tries
                assert retry_after == "1" and body["code"], body
                await asyncio.sleep(0.2)

        start = time.monotonic()
        sampler = asyncio.create_task(sample())
        results = await asyncio.gather(*(pod(ns, sa) for ns, sa in accounts))
        elapsed = time.monotonic() - start
        done.set()
        await sampler
        assert sts_calls(cluster) - before == len(accounts)
    for at, count in samples:
        assert count <= 2 + 4 * (at - start) + 1, samples
    # 10 calls beyond the burst at 4 per second take at least 2.5 s.
    assert elapsed >= 2.4
    statuses = [status for tries in results for status, _ in tries]
    assert 503 in statuses  # some pods did wait past --request-wait...
    assert max(seconds for tries in results for _, seconds in tries) < 1 + 2.5  # ...boundedly


async def test_idle_identities_are_evicted_and_come_back(
    cluster: EmulatorThread, tmp_path: Path, pods: aiohttp.ClientSession
) -> None:
    """An identity unused for --identity-idle-timeout is dropped (its session forgotten);
    the next request creates it again with a new STS call."""
    path = tmp_path / "associations.toml"
    path.write_text(associations_toml([("idle", "app")]))
    with node_agent(agent_args(cluster, path, "--identity-idle-timeout", "2s")) as idle:
        before = sts_calls(cluster)
        status, first = await ask(pods, idle.url, pod_token(cluster.issuer, "idle", "app"))
        assert status == 200, first
        evicted = await asyncio.to_thread(idle.wait_event, "identity_evicted", 10)
        assert (evicted["subject"], evicted["reason"]) == ("system:serviceaccount:idle:app", "idle")
        status, again = await ask(pods, idle.url, pod_token(cluster.issuer, "idle", "app"))
        assert status == 200, again
        assert again["AccessKeyId"] != first["AccessKeyId"]
        assert sts_calls(cluster) - before == 2
        assert len(idle.events("identity_created")) == 2


async def test_the_associations_file_changes_without_a_restart(
    cluster: EmulatorThread, tmp_path: Path, pods: aiohttp.ClientSession
) -> None:
    """A new association works within the poll interval of the file changing; a changed
    one serves its new role (only its identity dropped); a removed one is refused at once
    after SIGHUP; a broken file keeps the associations in force."""
    path = tmp_path / "associations.toml"
    kept, changed, added = ("team", "kept"), ("team", "changed"), ("team", "added")
    path.write_text(associations_toml([kept, changed]))
    with node_agent(agent_args(cluster, path)) as live:

        async def role(account: tuple[str, str]) -> tuple[int, dict[str, Any]]:
            return await ask(pods, live.url, pod_token(cluster.issuer, *account))

        status, kept_before = await role(kept)
        assert status == 200
        assert (await role(changed))[0] == 200
        status, body = await role(added)
        assert (status, body["code"]) == (403, "NoAssociation")

        new_role = f"arn:aws:iam::{ACCOUNT}:role/team-changed-v2"
        write_atomically(
            path, associations_toml([kept, changed, added], **{"team/changed": new_role})
        )
        for _ in range(40):  # up to 8 s: the 5 s poll interval, and some
            if (status := (await role(added))[0]) == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200
        status, body = await role(changed)
        assert (status, body["RoleArn"]) == (200, new_role)
        status, body = await role(kept)
        assert body["AccessKeyId"] == kept_before["AccessKeyId"]  # not dropped

        write_atomically(path, associations_toml([kept, changed]))
        assert live.proc is not None
        live.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(live.wait_event, "associations_reloaded", 5)
        status, body = await role(added)
        assert (status, body["code"]) == (403, "NoAssociation")

        write_atomically(path, "[[associations]\n")
        live.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(live.wait_event, "associations_rejected", 5)
        assert (await role(kept))[0] == 200


async def test_ready_only_once_the_issuer_keys_are_loaded(
    cluster: EmulatorThread, tmp_path: Path, pods: aiohttp.ClientSession
) -> None:
    """An agent whose --jwks-file is not there yet still starts: /readyz says 503 (keys
    not loaded) and pods get a 503 to retry, with no STS call; once the file appears
    (`kubectl get --raw /openid/v1/jwks` written by the DaemonSet's init step) the agent
    becomes ready within its poll interval and serves pods."""
    path = tmp_path / "associations.toml"
    path.write_text(associations_toml([("keys", "app")]))
    jwks = tmp_path / "jwks.json"
    args = agent_args(cluster, path, "--jwks-file", str(jwks))
    with node_agent(args) as agent:
        before = sts_calls(cluster)
        async with pods.get(agent.base + "/readyz") as response:
            assert response.status == 503
            assert (await response.json())["issuer_keys_loaded"] is False
        token = pod_token(cluster.issuer, "keys", "app")
        async with pods.get(agent.url, headers={"Authorization": token}) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "1"
            assert (await response.json())["code"] == "IssuerKeysUnavailable"
        assert sts_calls(cluster) == before
        write_atomically(jwks, json.dumps(cluster.issuer.jwks()))
        for _ in range(60):  # up to 15 s: the 10 s poll interval, and some
            async with pods.get(agent.base + "/readyz") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.25)
        assert response.status == 200
        status, body = await ask(pods, agent.url, token)
        assert (status, body["RoleArn"]) == (200, role_of("keys", "app"))


def test_an_ipv6_address_that_cannot_be_bound_is_a_warning(
    cluster: EmulatorThread, tmp_path: Path
) -> None:
    """A node without fd00:ec2::23 (no IPv6) still serves on its other addresses, with a
    warning, instead of crash-looping (eks-pod-identity-agent#16); with no address at all
    it exits with the listen error's code."""
    path = tmp_path / "associations.toml"
    path.write_text(associations_toml([("team", "app")]))
    args = agent_args(cluster, path, "--listen", "[fd00:ec2::23]:0")
    with node_agent(args) as agent:
        assert len(agent.started["urls"]) == 1
        skipped = agent.events("listen_skipped")
        assert len(skipped) == 1 and skipped[0]["level"] == "warning"
        assert "fd00:ec2::23" in skipped[0]["msg"]
    only_ipv6 = [a if a != "127.0.0.1:0" else "[fd00:ec2::23]:0" for a in args]
    lonely = NodeAgent(only_ipv6).start(wait_for=None)
    try:
        assert lonely.wait(20) == EXIT_LISTEN
        assert "could not listen on any --listen address" in lonely.output
    finally:
        lonely.kill()


# -- pods in network namespaces --------------------------------------------------------

AGENT_V4, AGENT_V6 = "169.254.170.23", "fd00:ec2::23"
#: A pod's client: urllib to the link-local address (as SDKs reach the agent); one JSON line.
POD_CLIENT = textwrap.dedent(
    """
    import json, sys, urllib.request, urllib.error
    url, token_file = sys.argv[1], sys.argv[2]
    request = urllib.request.Request(url)
    with open(token_file) as handle:
        request.add_header("Authorization", handle.read())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, body = exc.code, json.loads(exc.read())
    print(json.dumps({"status": status, "role": body.get("RoleArn"), "code": body.get("code"),
                      "key": body.get("AccessKeyId")}))
    """
)
#: botocore's own container provider, as every Python SDK finds the agent.
SDK_CLIENT = textwrap.dedent(
    """
    import json, botocore.session
    credentials = botocore.session.Session().get_credentials().get_frozen_credentials()
    print(json.dumps({"key": credentials.access_key}))
    """
)
MINT = textwrap.dedent(
    """
    import json, sys, urllib.parse, urllib.request
    issuer, accounts = sys.argv[1], json.loads(sys.argv[2])
    tokens = []
    for namespace, account in accounts:
        query = urllib.parse.urlencode({"namespace": namespace, "service_account": account})
        with urllib.request.urlopen(f"{issuer}/_dev/pod-token?{query}", timeout=10) as r:
            tokens.append(r.read().decode())
    print(json.dumps(tokens))
    """
)
NETNS_ACCOUNTS = [("payments", "api"), ("builds", "ci"), ("payments", "api")]


@pytest.fixture
def net() -> Iterator[netns.Namespaces]:
    with netns.namespaces() as namespaces:
        yield namespaces


def test_pods_in_network_namespaces_reach_the_agent_on_its_link_local_addresses(
    net: netns.Namespaces, tmp_path: Path
) -> None:
    """The agent runs in a "node" network namespace, puts 169.254.170.23 and fd00:ec2::23
    on lo itself (--setup-addresses) and listens on port 80 there; pods in their own
    namespaces reach it over veth pairs, IPv4 and IPv6, each gets its service account's
    role, a pod without a valid token is refused, and the SDK's container provider accepts
    the address. The cluster issuer and STS are the agent's dev mode (inside the node)."""
    node = net.namespace("node")
    pod_namespaces = [net.namespace(f"pod{i}") for i in range(len(NETNS_ACCOUNTS))]
    for pod in pod_namespaces:
        link = net.veth(node, pod)
        pod.route(AGENT_V4, via=link.a_ipv4.ip)
        pod.route(AGENT_V6, via=link.a_ipv6.ip)
    path = tmp_path / "associations.toml"
    path.write_text(associations_toml([("payments", "api"), ("builds", "ci")]))
    args = [
        "--dev",
        "--associations",
        str(path),
        "--listen",
        f"{AGENT_V4}:80",
        "--listen",
        f"[{AGENT_V6}]:80",
        "--setup-addresses",
    ]
    with node_agent(args, prefix=node.argv([])) as agent:
        assert agent.started["urls"] == [
            f"http://{AGENT_V4}:80/v1/credentials",
            f"http://[{AGENT_V6}]:80/v1/credentials",
        ]
        minted = node.run(
            [sys.executable, "-c", MINT, agent.started["issuer"], json.dumps(NETNS_ACCOUNTS)]
        )
        tokens = json.loads(minted.stdout)
        answers = []
        for i, (pod, (namespace, account), token) in enumerate(
            zip(pod_namespaces, NETNS_ACCOUNTS, tokens, strict=True)
        ):
            token_file = tmp_path / f"token{i}"
            token_file.write_text(token)
            host = AGENT_V4 if i % 2 == 0 else f"[{AGENT_V6}]"
            done = pod.run(
                [sys.executable, "-c", POD_CLIENT, f"http://{host}/v1/credentials", str(token_file)]
            )
            answer = json.loads(done.stdout)
            assert answer["status"] == 200, answer
            assert answer["role"] == role_of(namespace, account)
            answers.append(answer)
        # Two pods of payments/api, in two namespaces: one session.
        assert answers[0]["key"] == answers[2]["key"] != answers[1]["key"]
        bad = tmp_path / "bad-token"
        bad.write_text(forged_dev_token(tokens[1]))
        refused = json.loads(
            pod_namespaces[1]
            .run([sys.executable, "-c", POD_CLIENT, f"http://{AGENT_V4}/v1/credentials", str(bad)])
            .stdout
        )
        assert (refused["status"], refused["code"]) == (401, "InvalidSignature")
        sdk_env = clean_aws_env(
            AWS_CONTAINER_CREDENTIALS_FULL_URI=f"http://{AGENT_V4}/v1/credentials",
            AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=str(tmp_path / "token1"),
        )
        sdk = pod_namespaces[1].run([sys.executable, "-c", SDK_CLIENT], env=sdk_env)
        assert json.loads(sdk.stdout)["key"] == answers[1]["key"]


def forged_dev_token(token: str) -> str:
    """``token``'s claims, signed by another key under the same kid."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    impostor = OidcIssuer(claims["iss"])
    impostor.kid = header["kid"]
    standard = ("iss", "sub", "aud", "iat", "nbf", "exp")
    extra = {k: v for k, v in claims.items() if k not in standard}
    return impostor.mint(claims["sub"], ttl=claims["exp"] - claims["iat"], **extra)
