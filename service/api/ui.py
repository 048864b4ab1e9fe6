"""The run viewer (docs/viewer.md): static pages under ``/ui/``, served from package data.

The pages hold no data: they are plain HTML, CSS and JavaScript that call the API from the
browser with the user's token, so they are served without one (:mod:`.auth` leaves ``/ui/``
open) and every data call they make is checked as usual. Files are served by Starlette's
``StaticFiles`` (conditional GETs, safe paths, content types) from ``runstore.service``'s
``ui/`` folder; every answer carries a Content-Security-Policy that allows scripts, styles and
connections from this origin only and no inline code, so a run's content that slipped into the
page as markup still could not run (the scripts insert every value as text anyway).
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from .openapi import problem_responses

__all__ = ["SECURITY_HEADERS", "ui_router"]

# 'self' for what the pages load; nothing inline (no 'unsafe-inline' for scripts or styles),
# no other origin, no plugins, no framing, no <base> to redirect relative URLs.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the package, not while it runs: revalidate (ETag) on every load.
    "Cache-Control": "no-cache",
}

ui_router = APIRouter()
_files = StaticFiles(packages=[("runstore.service", "ui")], html=True)

_SECURITY_HEADER_DOCS: Final = {
    name: {"description": f"Always: {value}", "schema": {"type": "string"}}
    for name, value in SECURITY_HEADERS.items()
}
_VALIDATOR_DOCS: Final = {
    "ETag": {
        "description": "The file's entity tag; send it in If-None-Match.",
        "schema": {"type": "string"},
    },
    "Last-Modified": {
        "description": "When the file last changed (HTTP date).",
        "schema": {"type": "string"},
    },
}
_PAGE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "headers": {
            **_SECURITY_HEADER_DOCS,
            **_VALIDATOR_DOCS,
            "Accept-Ranges": {"description": "bytes", "schema": {"type": "string"}},
        },
        "description": "A page of the viewer, or one of its scripts or style sheets",
        "content": {
            "text/html": {"schema": {"type": "string"}},
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}},
        },
    },
    304: {
        "description": "Not modified (If-None-Match)",
        "headers": {**_SECURITY_HEADER_DOCS, **_VALIDATOR_DOCS},
    },
}


async def _serve(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    response.headers.update(SECURITY_HEADERS)
    return response


@ui_router.get("/ui", include_in_schema=False)
async def ui_root() -> Response:
    return RedirectResponse("ui/", status_code=308)


@ui_router.get(
    "/ui/",
    summary="The run viewer: the list of runs",
    response_class=Response,
    responses=_PAGE_RESPONSES,
)
async def ui_index(request: Request) -> Response:
    """The viewer's first page (HTML); needs no token, its data calls do."""
    return await _serve("", request)


@ui_router.get(
    "/ui/{path}",
    summary="A file of the run viewer",
    response_class=Response,
    responses={**_PAGE_RESPONSES, **problem_responses(404)},
    # Read from the request (no 422 of FastAPI's own for a path any string matches).
    openapi_extra={
        "parameters": [
            {
                "name": "path",
                "in": "path",
                "required": True,
                "description": "A file of the viewer, such as run.html or viewer.css.",
                "schema": {"type": "string"},
            }
        ]
    },
)
async def ui_file(request: Request) -> Response:
    """``run.html`` (one run) and the viewer's scripts and style sheets."""
    return await _serve(request.path_params["path"], request)
