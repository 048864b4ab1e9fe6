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
   to the app later runs before it; outside it, :class:`~.api.instrument.ObservedRequests`
   (request ids, request metrics, the access log), so it sees every request, refused ones
   included.
3. ``ExceptionMiddleware``: the problem+json handlers (:mod:`.api.problems`), chosen by the
   class of what was raised; inside it, FastAPI's exit stack for uploaded files.
4. The router. Its first route is :class:`~.api.run_route.RunRoute`: PUT, PATCH, GET, HEAD and
   DELETE ``/runs/{runId}``, matched by a prefix and a method and called with the Request alone.
   Then FastAPI's routes (:mod:`.api.routes`), which document the run routes as well and answer
   what RunRoute does not match (404, 405), the event streams (:mod:`.api.events`) among
   them, and the viewer's static pages (:mod:`.api.ui`). A ``root_path`` changes nothing in
   this: routes match the path below it.

The app's :class:`~.events.EventBroker` (``app.state.events``) hears of every committed write
from the store and feeds the event streams; the lifespan closes it, and so does ``cli`` when
uvicorn is asked to stop, before uvicorn waits for open connections (streams would hold it up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from prometheus_client import start_http_server

from runstore.client.models import (
    REQUIRED_FIELDS,
    RESERVED_FIELDS,
    ClaimRequest,
    LeaseRequest,
    RunPatch,
    RunSnapshot,
)

from .api.auth import BearerAuth
from .api.events import events_router
from .api.instrument import ObservedRequests
from .api.leases import lease_router
from .api.limits import BodyBudget
from .api.metrics import metrics_router
from .api.offload import BodyParser
from .api.openapi import for_generators, operation_id
from .api.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from .api.routes import RUN_ENDPOINTS, router
from .api.run_route import RunRoute
from .api.ui import ui_router
from .config import Settings, is_loopback
from .events import EventBroker
from .metrics import ServerMetrics
from .store import RunStore, open_store

__all__ = ["create_app"]

log = logging.getLogger("runstore")

VERSION = "0.1.0"
DOCS_ASSETS = "/docs/assets"
DESCRIPTION = (
    "Durable, shared storage for AI-agent run snapshots. Every error is application/problem+json "
    "(RFC 9457). Writes are on stable storage when answered. Every request meets the server's "
    "limits (defaults; docs/api.md, Limits): request line and headers 64 KiB (431), 10 s to send "
    "them (408), 1000 open connections (503), body 16 MiB (413), 100000 trace and history items "
    "per write (413), JSON nesting 256 levels (400), 64 MiB of bodies in memory (503, "
    "Retry-After)."
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
    broker = EventBroker(settings.events_queue)
    metrics = ServerMetrics() if settings.metrics else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        _warn_if_open(settings)
        opened = store if store is not None else open_store(settings)
        async with opened, _metrics_port(settings, metrics):
            broker.bind(asyncio.get_running_loop())
            await opened.start_events(broker)
            if metrics is not None:
                await opened.observe(metrics)
                metrics.watch(opened.stats, broker)
            if settings.telemetry:
                # FastAPI's telemetry makes each request's span; the store's are its children.
                from opentelemetry import trace

                opened.trace(trace.get_tracer("runstore"))
            body_parser = BodyParser()
            try:
                yield {
                    "store": opened,
                    "settings": settings,
                    "events": broker,
                    "body_budget": BodyBudget(settings.max_body_memory),
                    "body_parser": body_parser,
                }
            finally:
                broker.close()
                await body_parser.close()

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
            # Exporters from the standard OTEL_* variables (the otel extra installs them).
            "auto_configure": settings.telemetry,
        },
    )
    app.router.routes.insert(0, RunRoute(RUN_ENDPOINTS))
    app.include_router(router)
    app.include_router(lease_router)
    app.include_router(events_router)
    app.include_router(ui_router)
    if metrics is not None:
        app.include_router(metrics_router)
    app.state.events = broker
    app.state.metrics = metrics
    install_problem_handlers(app)
    tokens = settings.token_table
    if tokens is not None:
        app.add_middleware(BearerAuth, tokens=tokens)
    if metrics is not None or settings.access_log:
        # Outside the auth: its refusals get request ids and are counted too.
        app.add_middleware(ObservedRequests, metrics=metrics, access_log=settings.access_log)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _metrics_port(settings: Settings, metrics: ServerMetrics | None) -> AsyncIterator[None]:
    """``/metrics`` without a token on ``RUNSTORE_METRICS_PORT``, while the app runs:
    prometheus-client's own server, on a thread of its own."""
    if metrics is None or settings.metrics_port is None:
        yield
        return
    server, thread = start_http_server(
        settings.metrics_port, addr=settings.host, registry=metrics.registry
    )
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


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
