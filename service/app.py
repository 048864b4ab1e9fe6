"""The application factory: ``create_app(settings)`` builds the app; its lifespan opens
the store.

Every request, the run routes' included, passes one stack, outermost first, as FastAPI's
``build_middleware_stack`` puts it together (nothing is served around it):

1. FastAPI's own layers: OpenTelemetry spans, metrics and logs when ``RUNSTORE_TELEMETRY`` is
   on (off by default: FastAPI then asks on every request whether a provider is configured,
   a large part of a PATCH's cost in the app), ``ServerErrorMiddleware`` (an unexpected
   exception is answered 500 by the ``Exception`` handler of :mod:`.api.problems`, then raised
   on to the server to log), exception telemetry, and the app-wide body limit (none; the routes
   limit bodies).
2. The app's middleware (``app.add_middleware``; the last added is the outermost):
   :class:`~.api.auth.BearerAuth` when tokens are configured, for every path; middleware added
   to the app later runs before it. Request ids and metrics belong here, and see every request
   by construction.
3. ``ExceptionMiddleware``: the problem+json handlers (:mod:`.api.problems`), chosen by the
   class of what was raised; inside it, FastAPI's exit stack for uploaded files.
4. The router. Its first route is :class:`~.api.run_route.RunRoute`: PUT, PATCH, GET, HEAD and
   DELETE ``/runs/{runId}``, matched by a prefix and a method and called with the Request alone.
   Then FastAPI's routes (:mod:`.api.routes`), which document the run routes as well and answer
   what RunRoute does not match (404, 405). A ``root_path`` changes nothing in this: routes
   match the path below it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from runstore.client.models import (
    REQUIRED_FIELDS,
    RESERVED_FIELDS,
    ClaimRequest,
    LeaseRequest,
    RunPatch,
    RunSnapshot,
)

from .api.auth import BearerAuth
from .api.leases import lease_router
from .api.openapi import for_generators, operation_id
from .api.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from .api.routes import RUN_ENDPOINTS, router
from .api.run_route import RunRoute
from .config import Settings, is_loopback
from .store import RunStore, open_store

__all__ = ["create_app"]

log = logging.getLogger("runstore")

VERSION = "0.1.0"
DOCS_ASSETS = "/docs/assets"
DESCRIPTION = (
    "Durable, shared storage for AI-agent run snapshots. Every error is application/problem+json "
    "(RFC 9457). Writes are on stable storage when answered."
)


def _warn_if_open(settings: Settings) -> None:
    if settings.tokens is None and not is_loopback(settings.host):
        # Loud on purpose: in a container (0.0.0.0 by default) this line is the only sign of it.
        log.warning(
            "NO AUTHENTICATION: RUNSTORE_TOKENS is not set and the server listens on %s: "
            "anyone who can reach this address can read, change and delete every run. Set "
            "RUNSTORE_TOKENS, or keep the server behind an authenticating proxy.",
            settings.host,
        )


def create_app(settings: Settings | None = None, *, store: RunStore | None = None) -> FastAPI:
    """A new runstore application; its lifespan opens the store (the one the settings name, or
    ``store``) and closes it."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        _warn_if_open(settings)
        opened = store if store is not None else open_store(settings)
        async with opened:
            yield {"store": opened, "settings": settings}

    # /docs and /redoc with their assets served from the fastapi-offline wheel, not a CDN: the
    # pages work on a machine with no internet access (issue 15).
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        generate_unique_id_function=operation_id,
        title="runstore",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
        telemetry={
            "tracing": settings.telemetry,
            "metrics": settings.telemetry,
            "logs": settings.telemetry,
        },
    )
    app.router.routes.insert(0, RunRoute(RUN_ENDPOINTS))
    app.include_router(router)
    app.include_router(lease_router)
    install_problem_handlers(app)
    tokens = settings.token_table
    if tokens is not None:
        app.add_middleware(BearerAuth, tokens=tokens)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the snapshot schemas and bearer auth added, made what client
    generators need (:mod:`.api.openapi`)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (RunSnapshot, RunPatch, LeaseRequest, ClaimRequest):
        model_schema = model.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        for name, definition in model_schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas[model.__name__] = model_schema
    # The Python model defaults some fields for convenience; on the wire PUT needs them all.
    schemas[RunSnapshot.__name__]["required"] = sorted(REQUIRED_FIELDS)
    _wire_rules(schemas[RunSnapshot.__name__], schemas[RunPatch.__name__])
    _problems_as_problem_json(schema)
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Needed when the server has RUNSTORE_TOKENS set.",
        }
    }
    schema["security"] = [{"bearer": []}, {}]
    for_generators(schema)
    app.openapi_schema = schema
    return schema


def _wire_rules(snapshot: dict[str, Any], patch: dict[str, Any]) -> None:
    """Rules of the wire format that the Python models leave to the server (docs/api.md).

    A PATCH cannot set to null a field the snapshot requires (nor ``traceFrom`` and
    ``historyFrom``); ``trace`` and ``traceFrom`` come together, as do a ``history`` array and
    ``historyFrom``; reserved names are no top-level fields.
    """
    for name in (*REQUIRED_FIELDS, "traceFrom", "historyFrom"):
        field = patch["properties"][name]
        not_null = [option for option in field.pop("anyOf", []) if option.get("type") != "null"]
        if not_null:
            field.pop("default", None)
            field.update(not_null[0])
    history_array = {"required": ["history"], "properties": {"history": {"type": "array"}}}
    patch["dependentRequired"] = {"trace": ["traceFrom"], "traceFrom": ["trace"]}
    patch["dependentSchemas"] = {"historyFrom": history_array}
    patch["if"] = history_array
    patch["then"] = {"required": ["historyFrom"]}
    patch["propertyNames"] = {
        "not": {"enum": sorted(RESERVED_FIELDS - {"traceFrom", "historyFrom"})}
    }
    snapshot["propertyNames"] = {"not": {"enum": sorted(RESERVED_FIELDS)}}


def _problems_as_problem_json(schema: dict[str, Any]) -> None:
    """Document error bodies under application/problem+json, the type they are sent with.

    FastAPI puts a response ``model`` under the route's media type (application/json).
    """
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_MEDIA_TYPE in content and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
