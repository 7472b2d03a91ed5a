"""A local STS: the Query API over HTTP, answering in STS's own XML.

Implements what credential-sidecar and its users call:

* ``AssumeRoleWithWebIdentity`` (unsigned): verifies the token's RS256 signature against a
  trusted issuer, its ``aud`` and ``exp`` (with STS's 5 minute allowance);
* ``AssumeRole`` and ``GetCallerIdentity`` (SigV4-signed): the caller must sign with
  credentials this emulator issued and that have not expired; chained AssumeRole is
  capped at 1 hour, as in STS.

Fault injection, switchable at run time (``POST /_emulator/faults``, JSON):
``{"action": "AssumeRoleWithWebIdentity", "error": "Throttling", "status": 400,
"count": 3}``, ``{"delay": 5}``, ``{"hang": true}`` (until faults are cleared),
``{"lifetime": 60}`` (credentials that live 60 s). ``DELETE /_emulator/faults`` clears
them; ``GET /_emulator/stats`` counts calls per action.
"""

from __future__ import annotations

import asyncio
import secrets
import string
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from sidecar.config import MAX_DURATION, MIN_DURATION, ROLE_ARN, SESSION_NAME
from sidecar.core.credentials import format_expiration
from sidecar.devmode import sigv4
from sidecar.devmode.issuer import DEFAULT_AUDIENCE

NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
CHAINED_MAX = 3600
EXP_LEEWAY = 300
_KEY_ALPHABET = string.ascii_uppercase + "234567"


class StsFault(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class Fault:
    action: str = "*"
    error: str | None = None
    status: int = 400
    message: str = "injected fault"
    delay: float = 0.0
    hang: bool = False
    lifetime: int | None = None
    count: int | None = None  # None: until cleared

    def matches(self, action: str) -> bool:
        return self.action in ("*", action) and (self.count is None or self.count > 0)


@dataclass(frozen=True)
class Session:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    account: str
    role_name: str
    session_name: str
    role_id: str

    @property
    def arn(self) -> str:
        return f"arn:aws:sts::{self.account}:assumed-role/{self.role_name}/{self.session_name}"

    @property
    def user_id(self) -> str:
        return f"{self.role_id}:{self.session_name}"


def _random(alphabet: str, size: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(size))


class StsEmulator:
    def __init__(self, audience: str = DEFAULT_AUDIENCE) -> None:
        self.audience = audience
        self.issuers: dict[str, RSAPublicKey] = {}
        self.sessions: dict[str, Session] = {}
        self.faults: list[Fault] = []
        self.calls: Counter[str] = Counter()
        self.last_subject: str | None = None  # of the last accepted web-identity token
        #: The parameters of the last call of each action (never the token itself).
        self.last_params: dict[str, dict[str, str]] = {}
        self._release = asyncio.Event()  # set when faults are cleared: hung calls return

    def trust_issuer(self, issuer_url: str, key: RSAPublicKey) -> None:
        """Like creating an IAM OIDC provider: tokens from this issuer are accepted."""
        self.issuers[issuer_url.rstrip("/")] = key

    # -- HTTP ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/", self._handle),
            web.get("/", self._handle),
            web.post("/_emulator/faults", self._add_fault),
            web.delete("/_emulator/faults", self._clear_faults),
            web.get("/_emulator/stats", self._stats),
        ]

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            spec: dict[str, Any] = await request.json()
            self.faults.append(Fault(**spec))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"bad fault spec: {exc}"}, status=400)
        return web.json_response({"faults": len(self.faults)})

    async def _clear_faults(self, _: web.Request) -> web.Response:
        self.faults.clear()
        self._release.set()
        self._release = asyncio.Event()
        return web.json_response({"faults": 0})

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "calls": dict(self.calls),
                "sessions": len(self.sessions),
                "last_subject": self.last_subject,
                "last_params": self.last_params,
            }
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        params = dict(request.query)
        if request.method == "POST":
            params.update((await request.post()).items())  # type: ignore[arg-type]
        action = str(params.get("Action", ""))
        self.calls[action] += 1
        self.last_params[action] = {
            str(k): str(v) for k, v in params.items() if k != "WebIdentityToken"
        }
        request_id = str(uuid.uuid4())
        try:
            lifetime = await self._apply_faults(action)
            if action == "AssumeRoleWithWebIdentity":
                result = self._assume_role_with_web_identity(params, lifetime)
            elif action == "AssumeRole":
                caller = self._authenticate(request, body)
                result = self._assume_role(params, caller, lifetime)
            elif action == "GetCallerIdentity":
                caller = self._authenticate(request, body)
                result = self._caller_identity(caller)
            else:
                raise StsFault("InvalidAction", f"Could not find operation {action or '(none)'}")
        except StsFault as fault:
            kind = "Receiver" if fault.status >= 500 else "Sender"
            xml = (
                f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{kind}</Type>'
                f"<Code>{escape(fault.code)}</Code><Message>{escape(fault.message)}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
            )
            return web.Response(status=fault.status, text=xml, content_type="text/xml")
        xml = (
            f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{result}</{action}Result>'
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            f"</{action}Response>"
        )
        return web.Response(text=xml, content_type="text/xml")

    async def _apply_faults(self, action: str) -> int | None:
        lifetime = None
        for fault in list(self.faults):
            if not fault.matches(action):
                continue
            if fault.count is not None:
                fault.count -= 1
            if fault.hang:
                await self._release.wait()  # until the faults are cleared
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.lifetime is not None:
                lifetime = fault.lifetime
            if fault.error:
                raise StsFault(fault.error, fault.message, fault.status)
        self.faults = [f for f in self.faults if f.count is None or f.count > 0]
        return lifetime

    # -- actions ---------------------------------------------------------------------------

    @staticmethod
    def _role_params(params: dict[str, Any], default_duration: int) -> tuple[str, str, int]:
        role_arn = str(params.get("RoleArn", ""))
        session_name = str(params.get("RoleSessionName", ""))
        if not ROLE_ARN.match(role_arn):
            raise StsFault("ValidationError", f"{role_arn!r} is invalid for RoleArn")
        if not SESSION_NAME.match(session_name):
            raise StsFault(
                "ValidationError",
                "1 validation error detected: Value at 'roleSessionName' failed to satisfy "
                "constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
            )
        try:
            duration = int(params.get("DurationSeconds", default_duration))
        except ValueError:
            raise StsFault("ValidationError", "DurationSeconds must be an integer") from None
        if not MIN_DURATION <= duration <= MAX_DURATION:
            raise StsFault(
                "ValidationError",
                f"1 validation error detected: Value '{duration}' at 'durationSeconds' failed "
                f"to satisfy constraint: Member must have value between {MIN_DURATION} and "
                f"{MAX_DURATION}",
            )
        return role_arn, session_name, duration

    def _issue(self, role_arn: str, session_name: str, seconds: int) -> Session:
        now = datetime.now(UTC).replace(microsecond=0)
        account = role_arn.split(":")[4]
        role_name = role_arn.split(":role/", 1)[1].rsplit("/", 1)[-1]
        session = Session(
            access_key_id="ASIA" + _random(_KEY_ALPHABET, 16),
            secret_access_key=_random(string.ascii_letters + string.digits + "+/", 40),
            session_token=secrets.token_urlsafe(96),
            expiration=now + timedelta(seconds=seconds),
            account=account,
            role_name=role_name,
            session_name=session_name,
            role_id="AROA" + _random(_KEY_ALPHABET, 17),
        )
        # Forget expired sessions so a long-running emulator does not grow without bound.
        self.sessions = {k: s for k, s in self.sessions.items() if s.expiration > now}
        self.sessions[session.access_key_id] = session
        return session

    @staticmethod
    def _credentials_xml(session: Session) -> str:
        return (
            f"<AssumedRoleUser><AssumedRoleId>{session.user_id}</AssumedRoleId>"
            f"<Arn>{escape(session.arn)}</Arn></AssumedRoleUser>"
            f"<Credentials><AccessKeyId>{session.access_key_id}</AccessKeyId>"
            f"<SecretAccessKey>{escape(session.secret_access_key)}</SecretAccessKey>"
            f"<SessionToken>{session.session_token}</SessionToken>"
            f"<Expiration>{format_expiration(session.expiration)}</Expiration></Credentials>"
        )

    def _verify_token(self, token: str) -> dict[str, Any]:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise StsFault("InvalidIdentityToken", "The token is not a valid JWT") from None
        issuer = str(unverified.get("iss", "")).rstrip("/")
        key = self.issuers.get(issuer)
        if key is None:
            raise StsFault(
                "InvalidIdentityToken",
                f"No OpenIDConnect provider found in your account for {issuer}",
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=self.audience,
                leeway=EXP_LEEWAY,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            exp = datetime.fromtimestamp(int(unverified["exp"]), UTC)
            raise StsFault(
                "ExpiredTokenException",
                f"Token expired: current date/time {format_expiration(datetime.now(UTC))} must "
                f"be before the expiration date/time {format_expiration(exp)}",
            ) from None
        except jwt.InvalidAudienceError:
            raise StsFault("InvalidIdentityToken", "Incorrect token audience") from None
        except jwt.InvalidTokenError as exc:
            raise StsFault("InvalidIdentityToken", f"Invalid token: {exc}") from None
        return claims

    def _assume_role_with_web_identity(self, params: dict[str, Any], lifetime: int | None) -> str:
        claims = self._verify_token(str(params.get("WebIdentityToken", "")))
        role_arn, session_name, duration = self._role_params(params, 3600)
        session = self._issue(role_arn, session_name, lifetime or duration)
        self.last_subject = str(claims["sub"])
        return (
            f"<SubjectFromWebIdentityToken>{escape(str(claims['sub']))}"
            f"</SubjectFromWebIdentityToken><Audience>{escape(self.audience)}</Audience>"
            f"{self._credentials_xml(session)}<Provider>{escape(str(claims['iss']))}</Provider>"
        )

    def _assume_role(self, params: dict[str, Any], caller: Session, lifetime: int | None) -> str:
        role_arn, session_name, duration = self._role_params(params, 3600)
        if duration > CHAINED_MAX:
            raise StsFault(
                "ValidationError",
                "The requested DurationSeconds exceeds the 1 hour session limit for roles "
                "assumed by role chaining.",
            )
        session = self._issue(role_arn, session_name, lifetime or duration)
        return self._credentials_xml(session)

    @staticmethod
    def _caller_identity(caller: Session) -> str:
        return (
            f"<Arn>{escape(caller.arn)}</Arn><UserId>{caller.user_id}</UserId>"
            f"<Account>{caller.account}</Account>"
        )

    def _authenticate(self, request: web.Request, body: bytes) -> Session:
        try:
            signed = sigv4.parse_authorization(request.headers.get("Authorization"))
            session = self.sessions.get(signed.access_key_id)
            if session is None:
                raise StsFault(
                    "InvalidClientTokenId",
                    "The security token included in the request is invalid.",
                    403,
                )
            if request.headers.get("X-Amz-Security-Token") != session.session_token:
                raise StsFault(
                    "InvalidClientTokenId",
                    "The security token included in the request is invalid.",
                    403,
                )
            if session.expiration <= datetime.now(UTC):
                raise StsFault(
                    "ExpiredToken", "The security token included in the request is expired", 403
                )
            sigv4.verify(
                signed,
                session.secret_access_key,
                request.method,
                request.path,
                request.query_string,
                request.headers,
                body,
            )
        except sigv4.SignatureError as exc:
            raise StsFault(exc.code, exc.message, 403) from None
        return session
