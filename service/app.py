"""The application factory: ``create_app(settings)`` builds the app; its lifespan opens
the store."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp

from runstore.client.models import REQUIRED_FIELDS, RESERVED_FIELDS, RunPatch, RunSnapshot

from .api.auth import BearerAuth
from .api.direct import DirectRunRoutes
from .api.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from .api.routes import router
from .config import Settings, TokenTable, is_loopback
from .store import RunStore, open_store

__all__ = ["create_app"]

log = logging.getLogger("runstore")

VERSION = "0.1.0"
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


class StickyCheck:
    """A yes/no check that stays yes once it says yes, and until then is asked again at most
    once every ``interval`` seconds.

    For FastAPI's "is OpenTelemetry configured" check: OpenTelemetry sets each global provider
    only once, so a yes is final; a provider set while the server runs is noticed within
    ``interval``.
    """

    def __init__(self, check: Callable[[], bool], interval: float = 1.0) -> None:
        self._check = check
        self._interval = interval
        self._yes = False
        self._next = 0.0

    def __call__(self) -> bool:
        if self._yes:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        self._yes = bool(self._check())
        return self._yes


class RunStoreApp(FastAPI):
    """The FastAPI app with authentication and the direct run routes in front of its
    middleware stack.

    The run routes (:mod:`.api.direct`) are what agents call at every step; in front of the
    stack they skip FastAPI's error, telemetry and body-limit middleware as well as its router.
    Authentication is checked first, for every request.
    """

    def __init__(self, *, tokens: TokenTable | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens = tokens
        # FastAPI's native telemetry (0.165 here) asks for every request whether OpenTelemetry
        # has been configured, which took a few percent of a PATCH. Asked less often (see
        # StickyCheck), it answers the same.
        telemetry = getattr(self, "_native_telemetry", None)
        if callable(getattr(telemetry, "enabled", None)):
            telemetry.enabled = StickyCheck(telemetry.enabled)  # type: ignore[union-attr]

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = DirectRunRoutes(super().build_middleware_stack())
        return app if self.tokens is None else BearerAuth(app, tokens=self.tokens)


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

    app = RunStoreApp(
        tokens=settings.token_table,
        title="runstore",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.include_router(router)
    install_problem_handlers(app)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return app


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the snapshot schemas and bearer auth added."""
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
    for model in (RunSnapshot, RunPatch):
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
