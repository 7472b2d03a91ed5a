"""A listener's request dispatch, on aiohttp's low-level server.

Every listener serves a handful of fixed paths (``/v1/credentials``, ``/readyz/<role>``,
the IMDS paths), so a dictionary finds the route. An aiohttp ``Application`` would resolve
it through its URL dispatcher and a middleware chain on every request: on the credentials
endpoint's hot path that was as much work as everything the sidecar does itself
(docs/benchmarks.md). What the middlewares did is done here once, in order:

1. the route is found on the path as sent, ``/`` and ``%`` still encoded: an exact path,
   or a prefix and one path segment handed (decoded) to the handler
   (``/v1/credentials/<role>``);
2. a listener-wide ``guard`` (the DNS-rebinding check of listeners without client auth)
   may answer first; then a path without a route is a JSON 404, a wrong method a JSON 405
   naming the right one;
3. a ``Refusal`` a handler raises becomes its JSON answer;
4. a 4xx charges the client's failure budget (``ratelimit``): over it, a 429 instead;
5. the request is counted under its route's pattern, never the path itself (a path holds
   a role name a client chose, or a capability id).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from aiohttp.web_request import BaseRequest

from sidecar.core.errors import MethodNotAllowed, NotFound, Refusal
from sidecar.core.metrics import Metrics
from sidecar.outputs.http import ROLE, LogThrottle, answer, error_response, log_refusal
from sidecar.outputs.ratelimit import FailureLimiter

#: A route's handler: the request, and the path segment after the route's prefix (None for
#: an exact path).
RouteHandler = Callable[[BaseRequest, str | None], Awaitable[web.StreamResponse]]
#: A check of every request before routing: an answer to refuse it, None to go on.
Guard = Callable[[BaseRequest], web.StreamResponse | None]
#: The route label of a request that matched no route.
UNMATCHED = "unmatched"


@dataclass(frozen=True)
class Route:
    method: str
    handler: RouteHandler
    #: The metrics label: the path, or the prefix and ``{name}`` of its segment.
    label: str


class Router:
    """The handler given to ``web.Server``; ``normalise`` rewrites a path before routing."""

    def __init__(
        self,
        metrics: Metrics,
        refusals: LogThrottle,
        limiter: FailureLimiter | None = None,
        guard: Guard | None = None,
        normalise: Callable[[str], str] | None = None,
    ) -> None:
        self._metrics = metrics
        self._refusals = refusals
        self._limiter = limiter
        self._guard = guard
        self._normalise = normalise
        self._exact: dict[str, Route] = {}
        self._prefixed: list[tuple[str, Route]] = []

    def add(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve ``path`` exactly."""
        self._exact[path] = Route(method, handler, path)

    def add_prefix(self, method: str, prefix: str, name: str, handler: RouteHandler) -> None:
        """Serve ``prefix`` + one non-empty segment (no ``/``), which the handler gets."""
        self._prefixed.append((prefix, Route(method, handler, f"{prefix}{{{name}}}")))

    def _match(self, path: str) -> tuple[Route, str | None] | None:
        route = self._exact.get(path)
        if route is not None:
            return route, None
        for prefix, route in self._prefixed:
            if path.startswith(prefix):
                segment = path[len(prefix) :]
                if segment and "/" not in segment:
                    return route, segment
        return None

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        # Routed on the path with "/" and "%" still encoded (as aiohttp's URL dispatcher
        # does): "/v1/credentials%2Fother" is no route, whatever a proxy in front of us
        # made of it; only the captured segment is decoded.
        path = request.rel_url.path_safe
        if self._normalise is not None:
            path = self._normalise(path)
        found = self._match(path)
        label = found[0].label if found is not None else UNMATCHED
        try:
            refused = self._guard(request) if self._guard is not None else None
            if refused is not None:
                response = refused
            elif found is None:
                raise NotFound("nothing is served at this path")
            else:
                route, segment = found
                if request.method != route.method:
                    raise MethodNotAllowed(
                        f"use {route.method} for {route.label}", headers={"Allow": route.method}
                    )
                if segment is not None and "%" in segment:
                    segment = unquote(segment)
                response = await route.handler(request, segment)
        except Refusal as exc:
            response = answer(exc)
        status = response.status
        if self._limiter is not None and 400 <= status < 500:
            response = self._rate_limited(request, self._limiter) or response
        self._metrics.count_request(label, request.get(ROLE, ""), response.status)
        return response

    def _rate_limited(self, request: BaseRequest, limiter: FailureLimiter) -> web.Response | None:
        """A 429 for a failing request once its client has no tokens left, else None."""
        remote = request.remote or "?"
        wait = limiter.charge(remote)
        if wait is None:
            return None
        message = "refused requests from a client failing too often"
        log_refusal(self._refusals, "rate_limited", message, remote)
        retry_after = max(1, math.ceil(wait))
        return error_response(
            429,
            "TooManyRequests",
            f"too many failed requests from {remote} (more than {limiter.burst} at once or "
            f"{limiter.rate:g} per second); retry after {retry_after} s. Requests with the right "
            "auth token are still served",
            headers={"Retry-After": str(retry_after)},
        )
