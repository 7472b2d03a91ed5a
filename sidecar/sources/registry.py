"""Every kind of token source in one table: its typed configuration, how it is built, how
long one fetch may take, and whether it can be watched or renewed.

Nothing else compares a source's kind: configuration parsing produces one of the typed
configs below, and everything downstream asks this registry about it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sidecar.core.clock import Clock
from sidecar.sources.base import TokenSource, TokenWatch
from sidecar.sources.command import CommandSource, CommandTokenSource
from sidecar.sources.env import EnvSource, EnvTokenSource
from sidecar.sources.file import FileSource, FileTokenSource
from sidecar.sources.github import HTTP_FETCH_TIMEOUT, GithubSource, GithubTokenSource
from sidecar.sources.presented import PresentedSource, PresentedTokenSource

#: A configured token source: one of the kinds' own typed configurations.
TokenSourceConfig = FileSource | EnvSource | CommandSource | GithubSource | PresentedSource


@dataclass(frozen=True)
class SourceContext:
    """What building a source may need; the daemon owns each part."""

    clock: Clock
    #: Only when ``needs_http`` holds for some configured source.
    http: aiohttp.ClientSession | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)


@dataclass(frozen=True)
class SourceKind:
    name: str
    build: Callable[[Any, SourceContext], TokenSource]
    #: Seconds one fetch may take, at most (part of an exchange's time budget).
    fetch_time: Callable[[Any], float]
    needs_http: bool = False
    #: False: the token cannot be renewed once it expires (an environment variable).
    renewable: bool = True
    #: The audience is asked of the issuer (the token is minted for it), not only checked.
    requests_audience: bool = False
    #: Offered by ``--token-source`` (the presented token exists only in the node agent).
    selectable: bool = True


def _github(config: GithubSource, context: SourceContext) -> TokenSource:
    if context.http is None:
        raise RuntimeError("a GitHub token source needs the daemon's HTTP client")
    return GithubTokenSource(
        config.url, config.request_token.reveal(), config.audience, context.clock, context.http
    )


KINDS: Mapping[type, SourceKind] = {
    FileSource: SourceKind(
        "file",
        lambda c, ctx: FileTokenSource(c.path, ctx.clock, c.audience),
        lambda c: HTTP_FETCH_TIMEOUT,
    ),
    GithubSource: SourceKind(
        "github",
        _github,
        lambda c: HTTP_FETCH_TIMEOUT,
        needs_http=True,
        requests_audience=True,
    ),
    EnvSource: SourceKind(
        "env",
        lambda c, ctx: EnvTokenSource(c.env_var, ctx.environ, ctx.clock, c.audience),
        lambda c: HTTP_FETCH_TIMEOUT,
        renewable=False,
    ),
    CommandSource: SourceKind(
        "command",
        lambda c, ctx: CommandTokenSource(c.argv, c.timeout, ctx.clock, c.audience),
        lambda c: c.timeout,
    ),
    PresentedSource: SourceKind(
        "request",
        lambda c, ctx: PresentedTokenSource("(unnamed)", ctx.clock, c.audience),
        lambda c: 0.0,
        selectable=False,
    ),
}
#: The names users give with --token-source, in the order --help lists them.
KIND_NAMES = tuple(kind.name for kind in KINDS.values() if kind.selectable)


def kind_of(config: TokenSourceConfig) -> SourceKind:
    return KINDS[type(config)]


def build_source(config: TokenSourceConfig, context: SourceContext) -> TokenSource:
    """The token source a role's configuration describes."""
    return kind_of(config).build(config, context)


def watch_for(source: TokenSource) -> TokenWatch | None:
    """How to notice a new token in ``source``; None where looking is not cheap.

    Files, and the tokens pods present to the node agent: an environment variable never
    changes, and a command or the GitHub token endpoint would have to be run to know.
    """
    return source if isinstance(source, TokenWatch) else None
