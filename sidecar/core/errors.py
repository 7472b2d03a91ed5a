"""Every error credential-sidecar raises on purpose, and what each one means.

    SidecarError                  base; carries an operator-facing message
    ├── ConfigError               bad configuration; lists every problem at once (exit 2)
    ├── AuthTokenError            the endpoint's auth token file is unusable
    ├── ListenError               the listen address cannot be bound (exit 3)
    ├── TokenError                the web-identity token cannot be read or is unusable
    │   └── TokenExpiredError     ...because its exp has passed
    ├── ExchangeError             an STS call failed or returned unusable credentials
    │   ├── StsError              STS answered with an error code (or did not answer);
    │   │                         ``disposition`` says how the refresher should react
    │   └── AccountNotAllowedError  credentials for an account outside allowed_accounts
    ├── OutputError               credentials cannot be handed out in the form asked for
    │   ├── ExportError           an export format or profile name is unknown or unusable
    │   ├── CredentialsFileError  the shared-credentials file cannot be updated safely
    │   └── FetchError        a running daemon's endpoint did not give credentials
    └── Refusal                   a request for credentials is refused (tenancy, endpoint)
        ├── BadRequest            400: a malformed request (a header out of range)
        ├── NotFound              404: no such role, no default role
        ├── MethodNotAllowed      405: the path exists, for another method
        ├── Unauthenticated       401: no credential presented, or one that is not valid
        ├── Forbidden             403: a valid credential that does not open this role
        └── Unavailable           503: nothing servable yet (retry shortly)

An error knows how it should be treated (``Disposition``) so that no caller has to
re-derive it from strings: the refresher asks ``error.disposition``. Every error also
knows the HTTP ``status`` and JSON ``json_code`` it is answered with, so handlers never
write status/code pairs by hand (``sidecar.outputs.http.error_response``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class Disposition(enum.Enum):
    """How the refresher reacts to a failed exchange."""

    #: Transient (throttling, 5xx, network, timeout): back off with jitter and retry.
    RETRY = "retry"
    #: The web-identity token itself was rejected as expired: retry with a freshly read token.
    NEW_TOKEN = "new_token"  # noqa: S105 - a name, not a password
    #: Needs an operator (IAM trust policy, audience, bad request): report and retry slowly.
    FATAL = "fatal"


class SidecarError(Exception):
    """Base of every deliberate error; ``str()`` is safe to log (never holds a secret)."""

    disposition: Disposition = Disposition.RETRY
    #: How a request that meets this error is answered.
    status: int = 500
    json_code: str = "InternalError"

    @property
    def code(self) -> str:
        """A short machine-readable name, used as a metrics label and in logs."""
        return type(self).__name__


class ConfigError(SidecarError):
    """One or more configuration values are wrong; every problem is listed."""

    disposition = Disposition.FATAL

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"invalid configuration ({len(self.problems)} {noun}):\n{lines}")


class AuthTokenError(SidecarError):
    """The auth token file clients must present cannot be read, created or used."""

    disposition = Disposition.FATAL


class ListenError(SidecarError):
    """The listen address cannot be bound: in use, not on this host, or not permitted."""

    disposition = Disposition.FATAL


class TokenError(SidecarError):
    """The web-identity token is missing, unreadable, not a JWT, expired or for another audience.

    Retryable by default: a projected token file is rewritten by the kubelet, so the next
    read may work. A wrong audience or an expired token that nothing can renew (an
    environment variable) needs an operator: ``Disposition.FATAL``.
    """

    def __init__(self, message: str, disposition: Disposition = Disposition.RETRY) -> None:
        super().__init__(message)
        self.disposition = disposition


class TokenExpiredError(TokenError):
    """The token's ``exp`` has passed (beyond STS's clock-skew allowance)."""


class ExchangeError(SidecarError):
    """An STS call failed."""


class StsError(ExchangeError):
    """STS returned an error code, or could not be reached (code ``NetworkError``/``Timeout``)."""

    def __init__(
        self,
        operation: str,
        error_code: str,
        message: str,
        disposition: Disposition,
        http_status: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.operation = operation
        self.error_code = error_code
        self.message = message
        self.disposition = disposition
        self.http_status = http_status
        self.hint = hint
        text = f"{operation} failed: {error_code}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)

    def explained(self, hint: str | None) -> StsError:
        """This error with the likely cause and fix, which only the layer above STS knows."""
        if not hint:
            return self
        return StsError(
            self.operation,
            self.error_code,
            self.message,
            self.disposition,
            self.http_status,
            hint,
        )

    @property
    def code(self) -> str:
        return self.error_code


class AccountNotAllowedError(ExchangeError):
    """STS returned credentials for an account the role's allow-list does not contain."""

    disposition = Disposition.FATAL


class Refusal(SidecarError):
    """A request is refused; ``str()`` is the message the client gets (never a secret).

    ``reason`` is a short fixed label for metrics and the refusal log (never free text).
    """

    disposition = Disposition.FATAL
    reason: str = "refused"

    def __init__(
        self,
        message: str,
        json_code: str | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        log_event: str | None = None,
        role: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The role the refused request was for, when it names a real one (a metrics label).
        self.role = role
        if json_code is not None:
            self.json_code = json_code
        if reason is not None:
            self.reason = reason
        self.headers = headers or {}
        #: The refusal log's event name, for refusals worth a (rate-limited) warning: a
        #: wrong credential may be an attack; an unknown path is just a typo.
        self.log_event = log_event


class BadRequest(Refusal):
    status = 400
    json_code = "BadRequest"
    reason = "bad_request"


class MethodNotAllowed(Refusal):
    status = 405
    json_code = "MethodNotAllowed"
    reason = "method"


class NotFound(Refusal):
    status = 404
    json_code = "NotFound"
    reason = "not_found"


class Unauthenticated(Refusal):
    status = 401
    json_code = "Unauthorized"
    reason = "unauthenticated"


class Forbidden(Refusal):
    status = 403
    json_code = "AccessDenied"
    reason = "forbidden"


class Unavailable(Refusal):
    status = 503
    json_code = "CredentialsUnavailable"
    reason = "unavailable"

    def __init__(
        self, message: str, json_code: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, json_code, reason, {"Retry-After": "1"})


class OutputError(SidecarError):
    """Credentials cannot be rendered or written the way the operator asked."""

    disposition = Disposition.FATAL


class ExportError(OutputError):
    """An unknown export format, a bad profile name, or a value a format cannot hold."""


class CredentialsFileError(OutputError):
    """The shared-credentials file cannot be read, checked or replaced safely."""


class FetchError(OutputError):
    """``credentials --url``: the URL is not allowed, or the endpoint gave no credentials."""
