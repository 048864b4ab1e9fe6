"""The run routes served straight from ASGI, in front of FastAPI's middleware and router.

``PUT``, ``PATCH``, ``GET``, ``HEAD`` and ``DELETE /runs/{runId}`` are what agents call at every
step. FastAPI declares them (they are in the OpenAPI document, and its router serves them when the
app is mounted under a ``root_path``), but passing a request through its middleware, exit stacks
and router costs more than the durable write itself. :class:`DirectRunRoutes` sits in front of
the app's middleware stack (behind authentication) and hands these requests to the same endpoint
functions, with the app's exception handlers; every other request goes on to the stack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import routes

__all__ = ["DirectRunRoutes"]

Endpoint = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

_PREFIX: Final = "/runs/"
_ENDPOINTS: Final[Mapping[str, Endpoint]] = {
    "PATCH": routes.patch_run,
    "PUT": routes.put_run,
    "GET": routes.get_run,
    "HEAD": routes.head_run,
    "DELETE": routes.delete_run,
}


class DirectRunRoutes:
    """Pure ASGI middleware: answers the run routes itself, passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            run_id = path[len(_PREFIX) :]
            endpoint = _ENDPOINTS.get(scope["method"])
            # A run id has no "/" (not even as %2F, which arrives decoded): the router answers
            # such paths, like every path it alone knows, with its own 404 or 405.
            if endpoint is not None and path.startswith(_PREFIX) and run_id and "/" not in run_id:
                scope["path_params"] = {"runId": run_id}
                request = Request(scope, receive, send)
                try:
                    response = await endpoint(request)
                except Exception as exc:
                    response = await _handler_for(scope, exc)(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _handler_for(scope: Scope, exc: Exception) -> ExceptionHandler:
    """The handler the app registered for the nearest class of ``exc`` (``Exception`` at
    worst), as Starlette's exception middleware would choose it."""
    handlers: Mapping[Any, ExceptionHandler] = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    raise exc
