"""``/runs/{runId}``: the routes agents call at every step, as one route of the app's router.

FastAPI declares them (:mod:`.routes`: they are in the OpenAPI document, and its router would
serve them too), but matching them one regular expression at a time and calling them through
FastAPI's dependency machinery costs more than the durable write itself. :class:`RunRoute` is
the router's first route: it matches these requests by a prefix test and a method lookup and
calls the same endpoints with the Request alone, which is all they take. It is a route like any
other, inside the app's middleware and exception handling (see :mod:`runstore.service.app`);
what it does not match goes on to FastAPI's routes, which answer 404 or 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

__all__ = ["RunRoute"]

Endpoint = Callable[[Request], Awaitable[Response]]

_PREFIX: Final = "/runs/"


def _route_path(scope: Scope) -> str:
    """The path below the app's ``root_path``, which ASGI's ``path`` includes: what every route
    of starlette's matches."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


class RunRoute(BaseRoute):
    """``/runs/{runId}``, served by ``endpoints`` (method -> endpoint taking the Request)."""

    # What FastAPI's telemetry reports as the request's http.route.
    path_format: Final = "/runs/{runId}"

    def __init__(self, endpoints: Mapping[str, Endpoint]) -> None:
        self.endpoints = dict(endpoints)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            endpoint = self.endpoints.get(scope["method"])
            path = _route_path(scope)
            run_id = path[len(_PREFIX) :]
            # A run id has no "/" (not even as %2F, which arrives decoded), like the declared
            # route's {runId}: the routes after this one answer such paths with their 404.
            if endpoint is not None and path.startswith(_PREFIX) and run_id and "/" not in run_id:
                params: dict[str, Any] = scope.get("path_params") or {}
                # "route" as starlette's own router sets it, for middleware that asks.
                return Match.FULL, {
                    "route": self,
                    "endpoint": endpoint,
                    "path_params": {**params, "runId": run_id},
                }
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint: Endpoint = scope["endpoint"]
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        # Nameless: URLs of the run routes are built from the declared routes' names.
        raise NoMatchFound(name, path_params)
