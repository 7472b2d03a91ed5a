"""Value checks that collect every problem instead of stopping at the first."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shlex
import string
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sidecar.config.model import RoleConfig
from sidecar.config.settings import (
    ACCOUNT_ID,
    CHAINED_MAX_DURATION,
    CI_TOKEN_VARIABLES,
    MAX_DURATION,
    MIN_DURATION,
    ROLE_ARN,
    SESSION_NAME,
    Raw,
    Value,
    as_text,
    is_template,
    parse_listen,
    parse_seconds,
)
from sidecar.core.errors import ExportError
from sidecar.core.secret import Secret, holds_token, looks_like_token
from sidecar.sources.base import DEFAULT_AUDIENCE
from sidecar.sources.command import CommandSource
from sidecar.sources.env import EnvSource
from sidecar.sources.file import FileSource
from sidecar.sources.github import GithubSource
from sidecar.sources.registry import KIND_NAMES, TokenSourceConfig

#: What a role gets while its token settings are wrong (a ConfigError follows anyway).
_NO_SOURCE = FileSource(Path())


def shown(value: object) -> str:
    """``value`` as a configuration error may echo it: quoted, and never if it looks secret.

    CI logs keep error messages, so a token pasted into the wrong setting must not be
    printed back. Every configuration error that echoes a value goes through here; a URL's
    user and password are never shown.
    """
    text = str(value)
    if holds_token(text):
        return "<a value that looks like a token, not shown>"
    with contextlib.suppress(ValueError):
        parts = urlsplit(text)
        if parts.scheme and "@" in parts.netloc:
            host = parts.netloc.rsplit("@", 1)[1]
            text = urlunsplit(parts._replace(netloc=f"<user:password>@{host}"))
    return repr(text if len(text) <= 200 else text[:200] + "...")


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): http:// is safe there."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Checker:
    """Collects problems instead of raising at the first, so all are reported together."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def role_arn(self, value: str, where: str) -> str:
        if not ROLE_ARN.match(value):
            self.add(
                f"{where}={shown(value)} is not an IAM role ARN: "
                "expected arn:aws:iam::<12-digit account>:role/<name>"
            )
        return value

    def listen(
        self, raw: Raw, name: str, examples: str, required: bool = False
    ) -> tuple[str | None, int]:
        """The HOST:PORT setting ``name`` as (host, port); (None, 0) if unset or invalid."""
        text = as_text(raw[name][0])
        if not text and not required:
            return None, 0
        try:
            return parse_listen(text)
        except ValueError as exc:
            self.add(
                f"{raw[name][1]}={shown(text)} is not a listen address ({exc}): use {examples}"
            )
            return None, 0

    def seconds(self, value: Value, where: str, low: float, high: float) -> float:
        """A duration: a number of seconds (a config file's number taken as it is), or text
        like 500ms/90s/15m/1h."""
        text = str(value)
        try:
            if isinstance(value, bool | tuple):
                raise ValueError(text)
            result = float(value) if isinstance(value, int | float) else parse_seconds(text)
        except ValueError:
            self.add(f"{where}={shown(text)} is not a duration: use seconds or 500ms/90s/15m/1h")
            return low
        if not low <= result <= high:
            self.add(f"{where}={shown(text)} must be between {low:g}s and {high:g}s")
        return result

    def duration(self, value: Value, where: str, chained: bool) -> int:
        text = str(value)
        try:
            if isinstance(value, bool | tuple):
                raise ValueError(text)
            seconds = int(value if isinstance(value, int | float) else parse_seconds(text))
        except ValueError:
            self.add(f"{where}={shown(text)} is not a duration: use 3600 or 1h")
            return 3600
        if not MIN_DURATION <= seconds <= MAX_DURATION:
            self.add(
                f"{where}={shown(text)} is outside STS's limits: "
                f"use {MIN_DURATION}..{MAX_DURATION} seconds (15m..12h)"
            )
            return 3600
        if chained and seconds > CHAINED_MAX_DURATION:
            self.notes.append(
                f"{where}={shown(text)}: STS caps chained AssumeRole sessions at 1 h; using 3600 s"
            )
            return CHAINED_MAX_DURATION
        return seconds

    def session_name(self, value: str, where: str) -> str:
        if is_template(value):
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(value) if f]
            except ValueError as exc:
                self.add(f"{where}={shown(value)} is not a valid template ({exc}): use {{claim}}")
                return value
            if any(not re.fullmatch(r"[\w-]+", f) for f in fields):
                self.add(
                    f"{where}={shown(value)}: template fields must be plain claim names "
                    "like {sub} or {repository}"
                )
        elif not SESSION_NAME.match(value):
            self.add(
                f"{where}={shown(value)} is not a valid RoleSessionName: "
                "use 2-64 characters of letters, digits and _+=,.@-"
            )
        return value

    def accounts(self, values: tuple[str, ...], where: str) -> tuple[str, ...]:
        for account in values:
            if not ACCOUNT_ID.match(account):
                self.add(f"{where}: {shown(account)} is not a 12-digit AWS account id")
        return values

    def token_source(self, raw: Raw, environ: Mapping[str, str]) -> TokenSourceConfig:
        """Where the web-identity token comes from: chosen, or detected when unambiguous."""
        kind = as_text(raw["token_source"][0]).lower()
        path_text = as_text(raw["token_file"][0])
        env_var = as_text(raw["token_env"][0])
        command = raw["token_command"][0]
        # A config file may give the program and its arguments as an array: no shell words.
        command_text = command if isinstance(command, str) else None
        command_argv = command if isinstance(command, tuple) else None
        audience = as_text(raw["audience"][0]) or DEFAULT_AUDIENCE
        if holds_token(audience):
            self.add(
                f"{raw['audience'][1]}: this looks like a token, not an audience: give the "
                "audience the token must carry (usually sts.amazonaws.com)"
            )
            audience = DEFAULT_AUDIENCE
        if not kind:
            if path_text:
                kind = "file"
            elif command_text or command_argv:
                kind = "command"
            elif env_var:
                kind = "env"
            elif environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
                kind = "github"
            else:
                present = [v for v in CI_TOKEN_VARIABLES if environ.get(v)]
                if len(present) == 1:
                    kind, env_var = "env", present[0]
        if not kind:
            self.add(
                "no web-identity token: pass --token-file or set "
                "AWS_WEB_IDENTITY_TOKEN_FILE (or --token-env, --token-command, "
                "--token-source github)"
            )
            return _NO_SOURCE
        if kind not in KIND_NAMES:
            self.add(
                f"{raw['token_source'][1]}={shown(kind)} must be one of {', '.join(KIND_NAMES)}"
            )
            return _NO_SOURCE
        timeout = self.seconds(
            raw["token_command_timeout"][0] or "10s", raw["token_command_timeout"][1], 0.1, 600
        )
        if kind == "file":
            if not path_text:
                self.add("--token-source file needs --token-file (or AWS_WEB_IDENTITY_TOKEN_FILE)")
                return _NO_SOURCE
            path = Path(path_text)
            if looks_like_token(path_text):
                self.add(
                    f"{raw['token_file'][1]}: this looks like a token, not a variable name or "
                    "a path (it is not shown): put the token in a file and give the file's "
                    "path, or give the name of the variable holding it with --token-env"
                )
            elif not path.is_file() or not os.access(path, os.R_OK):
                reason = "does not exist" if not path.exists() else "is not a readable file"
                self.add(
                    f"{raw['token_file'][1]}={shown(path_text)} {reason}: point it at the "
                    "mounted OIDC token (e.g. /var/run/secrets/eks.amazonaws.com/"
                    "serviceaccount/token)"
                )
            return FileSource(path, audience)
        if kind == "env":
            if env_var and looks_like_token(env_var):
                self.add(
                    f"{raw['token_env'][1]}: this looks like a token, not a variable name or "
                    "a path (it is not shown): give the name of the variable that holds the "
                    "token, e.g. --token-env CI_JOB_JWT_V2"
                )
            elif not env_var or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_var):
                self.add(f"--token-source env needs --token-env NAME (got {shown(env_var)})")
            elif not environ.get(env_var):
                self.add(f"environment variable {env_var} (--token-env) is not set or empty")
            return EnvSource(env_var or "", audience)
        if kind == "command":
            try:
                argv = command_argv or tuple(shlex.split(command_text or ""))
            except ValueError as exc:
                self.add(f"{raw['token_command'][1]}={shown(command_text)} cannot be split: {exc}")
                argv = ()
            if not argv:
                self.add("--token-source command needs --token-command 'PROGRAM ARGS...'")
            return CommandSource(argv, timeout, audience)
        url = environ.get("ACTIONS_ID_TOKEN_REQUEST_URL", "")
        request_token = environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
        if not url or not request_token:
            self.add(
                "--token-source github needs ACTIONS_ID_TOKEN_REQUEST_URL and "
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN: give the job `permissions: id-token: "
                "write`"
            )
        else:
            self.github_url(url)
        return GithubSource(url, Secret(request_token), audience)

    def github_url(self, url: str) -> None:
        """https:// only (the request token is a bearer secret), except on loopback."""
        where = "ACTIONS_ID_TOKEN_REQUEST_URL"
        problem = cleartext_url_problem(
            url,
            f"{where}={shown(url)}",
            "the bearer request token would cross the network in clear",
        )
        if problem:
            self.add(problem)


def cleartext_url_problem(url: str, named: str, risk: str) -> str | None:
    """Why ``url`` may not be used, or None: it must be https://, or http:// to a loopback
    host (127.0.0.0/8, ::1, localhost). ``named`` introduces the URL in the message and
    ``risk`` says what plain http would expose."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or parts.scheme not in ("https", "http") or not host:
        return f"{named} is not a URL: expected https://host/path"
    if parts.scheme == "http" and not is_loopback_host(host):
        return (
            f"{named} is plain http:// to {host}: {risk}. Use https:// (http:// is only "
            "accepted for loopback hosts: 127.0.0.0/8, ::1, localhost)"
        )
    return None


def check_accounts_of(role: RoleConfig, check: Checker) -> None:
    if not role.allowed_accounts:
        return
    for hop in role.hops:
        account = hop.role_arn.split(":")[4] if hop.role_arn.count(":") >= 5 else ""
        if account and account not in role.allowed_accounts:
            check.add(
                f"role {role.name}: {hop.role_arn} is in account {account}, which is not "
                f"in allowed_accounts ({', '.join(role.allowed_accounts)})"
            )


#: A shared-credentials profile (an ini section) name we write.
_PROFILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=,:/-]{0,127}")


def check_profile(profile: str) -> str:
    """``profile`` if it is a usable profile (ini section) name; ``ExportError`` if not."""
    if not _PROFILE.fullmatch(profile):
        raise ExportError(
            f"profile name {profile!r} is not usable: use letters, digits and _.@+=,:/- "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return profile
