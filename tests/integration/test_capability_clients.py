"""The capability endpoint reached by real SDKs that know only RELATIVE_URI.

An SDK given ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` always connects to
``169.254.170.2:80``, so the test makes a network namespace of its own (tests/netns.py),
puts the address on its ``lo`` with ``link-local up``, runs the daemon there in dev mode
(its STS emulator is inside the namespace too) with ``--relative-listen 169.254.170.2:80``,
and runs the clients inside the same namespace with only ``RELATIVE_URI`` set. Each client
makes a signed STS call with what it got, which the emulator verifies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import netns
from tests.peers import REPO, clean_aws_env, serve_dev_in

BOTOCORE_CLIENT = """
import json, boto3
session = boto3.Session()
creds = session.get_credentials()
identity = session.client("sts").get_caller_identity()
print(json.dumps({"method": creds.method, "arn": identity["Arn"],
                  "key": creds.get_frozen_credentials().access_key}))
"""


@dataclass
class Capability:
    namespace: netns.Namespace
    server: subprocess.Popen[str]
    sts_url: str
    ids: Path

    def env(self, relative_uri: str, **extra: str) -> dict[str, str]:
        """What a container would get: RELATIVE_URI only, plus the dev STS endpoint."""
        return clean_aws_env(
            AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=relative_uri,
            AWS_ENDPOINT_URL_STS=self.sts_url,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            **extra,
        )

    def uri(self, role: str = "default") -> str:
        return "/v2/credentials/" + (self.ids / role).read_text()


@pytest.fixture
def capability(tmp_path: Path) -> Iterator[Capability]:
    with netns.namespaces() as net:
        namespace = net.namespace("host")
        namespace.run([sys.executable, "-m", "sidecar", "link-local", "up"], cwd=REPO)
        ids = tmp_path / "ids"
        server, sts_url = serve_dev_in(
            namespace,
            "--relative-listen",
            "169.254.170.2:80",
            "--relative-id-dir",
            str(ids),
            "--log-format",
            "json",
        )
        yield Capability(namespace, server, sts_url, ids)


def test_botocore_with_only_relative_uri(capability: Capability) -> None:
    """botocore's container provider, given only RELATIVE_URI, gets the role from
    169.254.170.2:80 and signs an STS call with it."""
    uri = capability.uri()
    done = capability.namespace.run(
        [sys.executable, "-c", BOTOCORE_CLIENT], env=capability.env(uri), check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["method"] == "container-role"
    assert out["key"].startswith("ASIA")
    assert out["arn"].startswith("arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/")
    # A guess gets nothing: botocore reports the endpoint's refusal.
    wrong = capability.namespace.run(
        [sys.executable, "-c", BOTOCORE_CLIENT],
        env=capability.env("/v2/credentials/" + "A" * 43),
        check=False,
    )
    assert wrong.returncode != 0
    # The ids never reach the daemon's log.
    capability.server.terminate()
    _, log = capability.server.communicate(timeout=10)
    assert '"event": "relative_started"' in log
    assert uri.rsplit("/", 1)[1] not in log


def test_javascript_v3_default_chain_with_only_relative_uri(
    capability: Capability, node_client: Path
) -> None:
    """The AWS SDK for JavaScript v3's default chain, given only RELATIVE_URI, gets the
    role from 169.254.170.2:80 and signs an STS call with it."""
    env = capability.env(capability.uri())
    script = node_client.parent / "caller-identity.mjs"
    done = capability.namespace.run(["node", str(script)], env=env, check=False)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ok"], (out, done.stderr)
    assert out["arn"].startswith("arn:aws:sts::123456789012:assumed-role/credential-sidecar-dev/")
