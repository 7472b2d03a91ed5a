"""``credentials --url``'s client: URL rules, token file, answers, redirects and retries."""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest

from sidecar.core.errors import ExportError, FetchError
from sidecar.outputs.one_shot import (
    check_url,
    emit,
    fetch_credentials,
    parse_container_json,
    read_client_token,
)
from tests.fakes import make_credentials

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9911/v1/credentials",
        "http://127.9.9.9:1/v1/credentials",
        "http://localhost:9911/v1/credentials",
        "http://[::1]:9911/v1/credentials",
        "http://169.254.170.2/v2/credentials/x",
        "http://169.254.170.23/v1/credentials",
        "http://[fd00:ec2::23]/v1/credentials",
        "https://credentials.example.com/v1/credentials",
    ],
)
def test_urls_the_sdks_accept(url: str) -> None:
    """Plain http to loopback and the ECS/EKS link-local addresses, https anywhere."""
    assert check_url(url) == url


def test_a_refused_url_is_named_without_its_path() -> None:
    """The message names scheme and host only: a capability path is a secret."""
    with pytest.raises(FetchError) as caught:
        check_url("http://10.0.0.1/v2/credentials/secret-capability-id")
    assert "http://10.0.0.1" in str(caught.value)
    assert "secret-capability-id" not in str(caught.value)


def answer(**fields: object) -> bytes:
    base: dict[str, object] = {
        "AccessKeyId": "ASIAIOSFODNN7EXAMPLE",
        "SecretAccessKey": SECRET,
        "Token": "token-value",
        "Expiration": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "RoleArn": "arn:aws:iam::123456789012:role/ci",
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def test_parse_reads_the_container_answer() -> None:
    """The container JSON becomes Credentials with its account from the role ARN."""
    creds = parse_container_json(answer(), "http://127.0.0.1:1")
    assert creds.secret_access_key == SECRET
    assert creds.account_id == "123456789012"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json " + SECRET.encode(), "not JSON"),
        (answer(Token=None), "without Token"),
        (answer(Expiration="soon"), "not an ISO 8601 time"),
        (answer(Expiration="2026-01-01T00:00:00"), "without a time zone"),
        (answer(Expiration="2001-01-01T00:00:00Z"), "have expired"),
    ],
)
def test_a_bad_answer_is_named_without_its_values(body: bytes, problem: str) -> None:
    """Each malformed answer names the problem; no value from the body is repeated."""
    with pytest.raises(FetchError, match=problem) as caught:
        parse_container_json(body, "http://127.0.0.1:1")
    assert SECRET not in str(caught.value)


def test_a_token_file_with_a_newline_is_refused(tmp_path: Path) -> None:
    """The token is sent verbatim, so a final newline (which every SDK chokes on) is refused."""
    path = tmp_path / "token"
    path.write_text("a-token-0123456789abcdef\n")
    with pytest.raises(FetchError, match="final newline"):
        read_client_token(path)
    path.write_text("a-token-0123456789abcdef")
    assert read_client_token(path) == "a-token-0123456789abcdef"


class Script(http.server.BaseHTTPRequestHandler):
    """Answers GETs from a list of (status, headers, body), in order; records them."""

    replies: ClassVar[list[tuple[int, dict[str, str], bytes]]] = []
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        status, headers, body = self.replies.pop(0)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Script.replies, Script.seen = [], []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Script)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_retries_5xx_like_botocore(server: str) -> None:
    """A 503 (cold start) is retried; the token goes verbatim in Authorization."""
    Script.replies = [
        (503, {}, b'{"Code":"CredentialsUnavailable","Message":"wait"}'),
        (200, {}, answer()),
    ]
    pauses: list[float] = []
    creds = fetch_credentials(server + "/v1/credentials", "tok", sleep=pauses.append)
    assert creds.access_key_id == "ASIAIOSFODNN7EXAMPLE"
    assert Script.seen == [("/v1/credentials", "tok")] * 2
    assert pauses == [1.0]


def test_fetch_does_not_retry_a_refusal(server: str) -> None:
    """A 403 is final and reported with the daemon's code and message."""
    body = b'{"Code":"AccessDenied","Message":"wrong token"}'
    Script.replies = [(403, {}, body)]
    with pytest.raises(FetchError, match="403 AccessDenied: wrong token"):
        fetch_credentials(server + "/v1/credentials", "tok", sleep=lambda _: None)
    assert len(Script.seen) == 1


def test_fetch_never_follows_a_redirect(server: str) -> None:
    """A redirect is not followed: it could carry the auth token to another place."""
    Script.replies = [(302, {"Location": server + "/elsewhere"}, b"")]
    with pytest.raises(FetchError, match="302"):
        fetch_credentials(server + "/v1/credentials", "tok", sleep=lambda _: None)
    assert [path for path, _ in Script.seen] == ["/v1/credentials"]


def test_github_env_masks_before_appending(tmp_path: Path) -> None:
    """github-env: mask lines on stdout, variable lines appended to $GITHUB_ENV."""
    target = tmp_path / "env"
    out = io.StringIO()
    creds = make_credentials(datetime.now(UTC) + timedelta(hours=1))
    emit(creds, "github-env", "default", out, {"GITHUB_ENV": str(target)})
    assert all(line.startswith("::add-mask::") for line in out.getvalue().splitlines())
    assert f"AWS_SECRET_ACCESS_KEY={creds.secret_access_key}\n" in target.read_text()
    with pytest.raises(ExportError, match=r"\$GITHUB_ENV"):
        emit(creds, "github-env", "default", io.StringIO(), {})
