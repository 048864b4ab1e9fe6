"""The server's log lines: human-readable by default, one JSON object per line with
``RUNSTORE_LOG_FORMAT=json``, and each line of a request naming its request id.

:mod:`.api.instrument` sets :data:`CURRENT_REQUEST` for the time of each request (its id and its
ASGI scope); :class:`RequestFields` gives every log record made meanwhile, uvicorn's included,
the request's id, method and path, and the run id once the router has found it. The access log
line (logger ``runstore.access``) carries the route template, status and duration as well.

Nothing here logs a header or a body: a token or a run's content never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, Literal

from starlette.types import Scope

__all__ = [
    "CURRENT_REQUEST",
    "JsonFormatter",
    "RequestContext",
    "RequestFields",
    "TextFormatter",
    "configure_logging",
    "current_request_id",
]

LogFormat = Literal["text", "json"]

# What the access log line and the request's other lines may carry beyond a record's own.
_REQUEST_FIELDS: Final = ("request_id", "method", "route", "status", "duration_ms", "run_id")


class RequestContext:
    """The request being served: its id (None when request ids are off) and ASGI scope."""

    __slots__ = ("request_id", "scope")

    def __init__(self, request_id: str | None, scope: Scope) -> None:
        self.request_id = request_id
        self.scope = scope


CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("runstore_request", default=None)


def current_request_id() -> str | None:
    """The id of the request being served here, if any."""
    context = CURRENT_REQUEST.get()
    return None if context is None else context.request_id


class RequestFields(logging.Filter):
    """Adds the current request's fields to each record (those the record does not have)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = CURRENT_REQUEST.get()
        if context is None:
            return True
        fields = record.__dict__
        scope = context.scope
        fields.setdefault("request_id", context.request_id)
        fields.setdefault("method", scope.get("method"))
        path_params = scope.get("path_params") or {}
        fields.setdefault("run_id", path_params.get("runId"))
        return True


class TextFormatter(logging.Formatter):
    """``LEVEL:  logger: message``, then ``[request <id>]`` on a request's lines."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s:  %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None else f"{line} [request {request_id}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the request's
    fields where there are some, and the exception's traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in _REQUEST_FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(log_format: LogFormat, level: str) -> None:
    """One handler on the root logger, to stderr, in ``log_format``; uvicorn's loggers
    propagate to it (the server gives uvicorn no logging configuration of its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestFields())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
