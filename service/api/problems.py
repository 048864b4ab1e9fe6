"""problem+json (RFC 9457) for every error, keyed by exception class.

HTTP-level errors that are not the store's are raised as :class:`ProblemError`; the store's
errors (:mod:`runstore.service.errors`) map to a status and a type here. Nothing leaves the
server as a bare 500: an unexpected exception still gets a problem body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from ..errors import (
    FieldError,
    InvalidRun,
    PreconditionFailed,
    RunNotFound,
    StaleWrite,
    StorageUnavailable,
    StoreError,
    TraceGap,
    WriteConflict,
)

__all__ = ["PROBLEM_TYPES", "ProblemError", "install_problem_handlers", "problem_response"]

log = logging.getLogger("runstore.api")

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
TYPE_PREFIX: Final = "urn:runstore:problem:"

# slug -> (status, title); the docs list the same table.
PROBLEM_TYPES: Final[dict[str, tuple[int, str]]] = {
    "malformed-json": (400, "Malformed JSON"),
    "run-id-mismatch": (400, "Run id mismatch"),
    "bad-request": (400, "Bad request"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "request-timeout": (408, "Request timeout"),
    "stale-write": (409, "Stale write"),
    "trace-gap": (409, "Trace gap"),
    "conflict": (409, "Conflict"),
    "precondition-failed": (412, "Precondition failed"),
    "body-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "invalid-fields": (422, "Invalid fields"),
    "storage-unavailable": (503, "Storage unavailable"),
    "internal-error": (500, "Internal error"),
}

_STORE_ERRORS: Final[tuple[tuple[type[StoreError], str], ...]] = (
    (InvalidRun, "invalid-fields"),
    (RunNotFound, "not-found"),
    (StaleWrite, "stale-write"),
    (TraceGap, "trace-gap"),
    (WriteConflict, "conflict"),
    (PreconditionFailed, "precondition-failed"),
    (StorageUnavailable, "storage-unavailable"),
)


class ProblemError(Exception):
    """An error answered as problem+json with the status of its ``slug``."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.slug = slug
        self.detail = detail
        self.errors = errors
        self.headers = headers


def problem_response(
    slug: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> Response:
    status, title = PROBLEM_TYPES[slug]
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    all_headers = dict(headers or {})
    if status == 503:
        all_headers.setdefault("Retry-After", "1")
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=all_headers,
    )


def _slug_for(exc: StoreError) -> str:
    for cls, slug in _STORE_ERRORS:
        if isinstance(exc, cls):
            return slug
    return "internal-error"


def _status_slug(status: int) -> str:
    for slug, (code, _) in PROBLEM_TYPES.items():
        if code == status:
            return slug
    return "bad-request" if status < 500 else "internal-error"


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


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into problem+json."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(
            exc.slug,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            instance=request.url.path,
        )

    async def on_store_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreError)
        errors = exc.errors if isinstance(exc, InvalidRun) else None
        return problem_response(
            _slug_for(exc), exc.detail, errors=errors, instance=request.url.path
        )

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        slug = _status_slug(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else PROBLEM_TYPES[slug][1]
        if exc.status_code == 404:
            detail = f"There is nothing at {request.url.path}."
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
            allowed = _allowed_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        return problem_response(slug, detail, headers=headers, instance=request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors: list[FieldError] = [
            {
                "path": ".".join(str(part) for part in error.get("loc", ())),
                "message": error.get("msg", "invalid"),
                "type": error.get("type", "invalid"),
            }
            for error in exc.errors()
        ]
        names = ", ".join(error["path"] for error in errors[:5])
        return problem_response(
            "invalid-fields",
            f"The request has invalid parameters: {names}.",
            errors=errors,
            instance=request.url.path,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(
            "internal-error",
            "The server failed to handle this request; nothing was changed.",
            instance=request.url.path,
        )

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
