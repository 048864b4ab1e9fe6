"""problem+json (RFC 9457) for every error, keyed by exception class.

Every answer is built from the class of a :mod:`runstore.client.problems` error (its slug, status
and title): the store's errors and the HTTP-level ones raised here alike. A problem answered
while request ids are on names the request's (``requestId``; :mod:`.instrument`). Nothing leaves the
server as a bare 500: an unexpected exception still gets a problem body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from runstore.client.problems import (
    BadRequest,
    BodyTooLarge,
    FieldError,
    InternalError,
    InvalidRun,
    MethodNotAllowed,
    RequestTimeout,
    RunNotFound,
    RunStoreError,
    problem_type_for_status,
)

from ..logs import current_request_id

__all__ = ["install_problem_handlers", "problem_response"]

log = logging.getLogger("runstore.api")

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"

# Refused before the body was read whole: the rest of it would be read as the next request.
_CLOSES_CONNECTION: Final = (BodyTooLarge, RequestTimeout)


def problem_response(
    error: RunStoreError,
    *,
    headers: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> Response:
    """The problem+json answer to ``error``: type, title and status from its class (a class
    with no problem type of its own is answered as an internal error)."""
    cls = type(error) if type(error).slug is not None else InternalError
    body = cls.problem_details(error.detail)
    status: int = body["status"]
    if instance is not None:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id is not None:
        body["requestId"] = request_id
    # The members a problem type adds (RFC 9457 extension members), as the error holds them.
    for member in ("errors", "holder", "expiresAt"):
        value = error.problem.get(member)
        if value is not None:
            body[member] = value
    all_headers = {**error.response_headers(), **(headers or {})}
    if status == 503:
        all_headers.setdefault("Retry-After", "1")
    if isinstance(error, _CLOSES_CONNECTION):
        all_headers.setdefault("Connection", "close")
    return Response(
        # Compact, as success bodies are.
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=all_headers,
    )


def _allowed_methods(request: Request, routes: Iterable[BaseRoute] | None = None) -> set[str]:
    """Every method some route of this path takes: a 405 must list them all (RFC 9110), while
    the router names only those of the first route whose path matched."""
    methods: set[str] = set()
    for route in request.app.router.routes if routes is None else routes:
        # FastAPI keeps an included router's routes behind the router itself.
        included = getattr(route, "original_router", None)
        if included is not None:
            methods |= _allowed_methods(request, included.routes)
            continue
        match, _ = route.matches(request.scope)
        route_methods = getattr(route, "methods", None)
        if match is not Match.NONE and route_methods:
            methods |= route_methods
    return methods


def _parameter_path(loc: Iterable[object]) -> str:
    """A parameter's path as the body's paths are written: ``query.status[0]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


# FastAPI's parameter errors in the words the body's field errors use (strict_json, records).
_MESSAGES: Final = {
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_long": "must be at most {max_length} characters",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "int_parsing": "must be an integer",
    "missing": "is required",
}


def _parameter_message(error: Mapping[str, Any]) -> str:
    template = _MESSAGES.get(error.get("type", ""))
    try:
        return template.format(**error.get("ctx", {})) if template else str(error.get("msg"))
    except (KeyError, IndexError):
        return str(error.get("msg"))


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into problem+json."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RunStoreError)
        if type(exc).slug is None:
            return await on_unexpected(request, exc)
        return problem_response(exc, instance=request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        cls = problem_type_for_status(exc.status_code)
        if cls is None:
            cls = BadRequest if exc.status_code < 500 else InternalError
        detail = exc.detail if isinstance(exc.detail, str) else (cls.default_title or "")
        headers = dict(exc.headers or {})
        if cls is RunNotFound:
            detail = f"There is nothing at {request.url.path}."
        elif cls is MethodNotAllowed:
            detail = f"{request.method} is not allowed on {request.url.path}."
            allowed = _allowed_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        return problem_response(cls(detail), headers=headers, instance=request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors: list[FieldError] = [
            {
                "path": _parameter_path(error.get("loc", ())),
                "message": _parameter_message(error),
                "type": error.get("type", "invalid"),
            }
            for error in exc.errors()
        ]
        names = ", ".join(error["path"] for error in errors[:5])
        return problem_response(
            InvalidRun(f"The request has invalid parameters: {names}.", errors),
            instance=request.url.path,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(
            InternalError("The server failed to handle this request; nothing was changed."),
            instance=request.url.path,
        )

    app.add_exception_handler(RunStoreError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
