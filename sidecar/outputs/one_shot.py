"""``credentials``: one set of credentials, printed in the form a tool expects.

They come from a running daemon (``--url`` and ``--auth-token-file``: what an SDK does
with ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``,
with the same host rules), or from one exchange with ``serve``'s flags (``cli.py`` runs
the daemon machinery until the default role has credentials). Either way the text is
``exports.render``'s; secrets go to standard output (or ``$GITHUB_ENV``), never into a log
or an error message. Messages name the endpoint by scheme and host only: a capability
endpoint's path is itself a secret.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from sidecar.core.credentials import Credentials
from sidecar.core.errors import ExportError, FetchError
from sidecar.core.safe_read import MAX_INPUT_BYTES, read_small_file
from sidecar.outputs.exports import github_mask, render

#: Hosts SDKs accept for plain http besides 127.0.0.0/8 (shared/sdk-contract.md).
HTTP_HOSTS = ("localhost", "::1", "169.254.170.2", "169.254.170.23", "fd00:ec2::23")
#: Like botocore: 2 s per attempt, 3 attempts 1 s apart (5xx and unreachable only).
TIMEOUT, ATTEMPTS, PAUSE = 2.0, 3, 1.0
#: An answer is a few hundred bytes.
MAX_BODY = 64 * 1024
_FIELDS = ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _http_allowed(host: str) -> bool:
    if host.lower() in HTTP_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


def check_url(url: str) -> str:
    """``url`` if the SDKs would fetch credentials from it; ``FetchError`` naming why not."""
    parts = urlsplit(url)
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise FetchError(
            "--url must be http(s)://HOST[:PORT]/PATH, like "
            "http://127.0.0.1:9911/v1/credentials (the daemon logs its URL at startup)"
        )
    if parts.username is not None or parts.password is not None:
        raise FetchError("--url must not carry a user or password; use --auth-token-file")
    if parts.scheme == "http" and not _http_allowed(host):
        raise FetchError(
            f"--url {_where(url)}: plain http is allowed only for loopback (127.0.0.0/8, "
            "[::1], localhost), 169.254.170.2, 169.254.170.23 and [fd00:ec2::23], as in the "
            "AWS SDKs: credentials would cross a network unencrypted; use https"
        )
    return url


def read_client_token(path: Path) -> str:
    """The auth token to send, as an SDK sends it: the file's content, verbatim."""

    def fail(problem: str) -> FetchError:
        return FetchError(f"--auth-token-file {path}: {problem}")

    try:
        raw, _ = read_small_file(path, fail, MAX_INPUT_BYTES)
    except FileNotFoundError:
        raise fail("does not exist; give the daemon's --auth-token-file") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise fail("is not ASCII text, so it cannot be an auth token") from None
    if not text or text != text.strip() or any(not 0x21 <= ord(c) <= 0x7E for c in text):
        raise fail(
            "must hold the token alone, printable, without spaces or a final newline "
            "(it is sent verbatim, as SDKs send it)"
        )
    return text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The endpoint never redirects: following one could send the token elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def parse_container_json(body: bytes, where: str, now: datetime | None = None) -> Credentials:
    """Credentials from a container-credentials answer; ``FetchError`` naming only fields."""
    try:
        data = json.loads(body)
    except ValueError:
        raise FetchError(f"{where} answered 200 with a body that is not JSON") from None
    if not isinstance(data, dict):
        raise FetchError(f"{where} answered 200 with JSON that is not an object")
    missing = [k for k in _FIELDS if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise FetchError(f"{where} answered without {', '.join(missing)}")
    try:
        expiration = datetime.fromisoformat(data["Expiration"])
    except ValueError:
        raise FetchError(f"{where} answered an Expiration that is not an ISO 8601 time") from None
    if expiration.tzinfo is None:
        raise FetchError(f"{where} answered an Expiration without a time zone")
    if expiration <= (now or datetime.now(UTC)):
        raise FetchError(f"{where} answered credentials that have expired")
    role_arn = data.get("RoleArn")
    return Credentials(
        access_key_id=data["AccessKeyId"],
        secret_access_key=data["SecretAccessKey"],
        session_token=data["Token"],
        expiration=expiration,
        role_arn=role_arn if isinstance(role_arn, str) else "",
        assumed_role_arn="",
    )


def _refusal(status: int, body: bytes) -> str:
    """``status Code: Message`` from a JSON error (either spelling), cut short."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = data.get("Code") or data.get("code") or ""
        message = data.get("Message") or data.get("message") or ""
        return f"{status} {str(code)[:64]}: {str(message)[:300]}"
    return str(status)


def fetch_credentials(
    url: str,
    token: str | None,
    timeout: float = TIMEOUT,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> Credentials:
    """GET ``url`` as an SDK does; retried on 5xx and network errors, like botocore."""
    where = _where(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    problem = f"{where} did not answer"
    for attempt in range(attempts):
        if attempt:
            sleep(PAUSE)
        request = urllib.request.Request(  # noqa: S310 - scheme checked by check_url
            url, headers={"Authorization": token} if token is not None else {}
        )
        try:
            with opener.open(request, timeout=timeout) as response:
                status, body = response.status, response.read(MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                status, body = exc.code, exc.read(MAX_BODY + 1)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            problem = f"cannot reach {where}: {reason}; is the daemon running there?"
            continue
        if len(body) > MAX_BODY:
            raise FetchError(f"{where} answered more than {MAX_BODY} bytes: is it the daemon?")
        if status == 200:
            return parse_container_json(body, where)
        problem = f"{where} refused: {_refusal(status, body)}"
        if status < 500:
            break
    raise FetchError(problem)


def emit(
    creds: Credentials, fmt: str, profile: str, out: TextIO, environ: Mapping[str, str]
) -> None:
    """Write ``creds`` as ``fmt`` to ``out``; ``github-env`` appends its lines to
    ``$GITHUB_ENV`` and writes only the ``::add-mask::`` lines to ``out``, first."""
    text = render(creds, fmt, profile)  # a value the format cannot hold fails before output
    if fmt != "github-env":
        out.write(text)
        out.flush()
        return
    target = environ.get("GITHUB_ENV")
    if not target:
        raise ExportError(
            "--format github-env appends to the file named by $GITHUB_ENV, which is not set: "
            "run it in a GitHub Actions step, or use --format env"
        )
    out.write(github_mask(creds))
    out.flush()
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ExportError(f"cannot append to $GITHUB_ENV ({target}): {exc.strerror}") from None
