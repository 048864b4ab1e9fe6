"""Request ids, request metrics and the access log: the app's outermost middleware.

Pure ASGI (no BaseHTTPMiddleware: a PATCH's cost in the app is a few hundred microseconds, and
this runs on every request, the run routes' included). For each HTTP request:

- **Request id**: the ``X-Request-Id`` the request sent, if it is 1-200 visible ASCII
  characters, else a new one (32 hex digits: a random prefix drawn when the process starts and
  a counter, so that making one needs no system call); it goes on the answer's headers, into every
  problem body as ``requestId`` (:func:`~.problems.problem_response` reads it from
  :data:`~runstore.service.logs.CURRENT_REQUEST`) and onto every log line of the request.
- **Metrics**: counted and timed by route template (the matched route's, never the raw path:
  ``/runs/{runId}``; ``unmatched`` for a 404 of no route), method and status class. A request
  that raised is counted as 500 (the server's error middleware answers it, outside this one);
  one whose client left before any answer, as 499.
- **Access log**: one line per request on the ``runstore.access`` logger, with the route
  template, status and duration as fields (the JSON log format shows them).

With ``RUNSTORE_METRICS=false`` the app has no metrics and no request ids; the access log, if
on, is still this middleware's.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from time import perf_counter
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import CURRENT_REQUEST, RequestContext
from ..metrics import ServerMetrics

__all__ = ["ObservedRequests", "new_request_id", "request_id_of"]

access_log = logging.getLogger("runstore.access")

REQUEST_ID_HEADER: Final = b"x-request-id"
_VALID_REQUEST_ID: Final = re.compile(rb"[!-~]{1,200}")
# Methods counted under their own name; any other (httptools accepts WebDAV's and more) is
# "other", so that no client can grow the number of time series.
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
UNMATCHED: Final = "unmatched"

_ID_PREFIX: Final = os.urandom(8).hex()
_id_numbers = itertools.count(1)


def new_request_id() -> str:
    """A request id unique to this process's life, and across processes (32 hex digits)."""
    return f"{_ID_PREFIX}{next(_id_numbers):016x}"


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's own id if it sent a valid one, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _VALID_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) else UNMATCHED


class ObservedRequests:
    """See the module docstring. ``metrics`` None: no metrics and no request ids."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics | None, access_log: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        metrics = self.metrics
        request_id = request_id_of(scope["headers"]) if metrics is not None else None
        header = None if request_id is None else (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if header is not None:
                    message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = CURRENT_REQUEST.set(RequestContext(request_id, scope))
        try:
            await self.app(scope, receive, send_observed)
        except BaseException:
            status = 500
            raise
        finally:
            if status == 0:
                status = 499
            seconds = perf_counter() - started
            if metrics is not None or self.access_log:
                route = _route_template(scope)
                method = scope["method"]
                if metrics is not None:
                    metrics.request(
                        route, method if method in _METHODS else "other", status, seconds
                    )
                if self.access_log and access_log.isEnabledFor(logging.INFO):
                    self._log(scope, route, status, seconds)
            CURRENT_REQUEST.reset(token)

    @staticmethod
    def _log(scope: Scope, route: str, status: int, seconds: float) -> None:
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        path = scope["path"]  # the root path included
        access_log.info(
            '%s - "%s %s HTTP/%s" %d %.1fms',
            where,
            scope["method"],
            path,
            scope.get("http_version", "1.1"),
            status,
            seconds * 1000,
            extra={"route": route, "status": status, "duration_ms": round(seconds * 1000, 3)},
        )
