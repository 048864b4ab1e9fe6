"""The OpenAPI document as client generators read it (issue 15).

FastAPI writes the document from the routes and the pydantic models; what generators such as
openapi-typescript and openapi-python-client need differs from that in a few ways, made right
here for every operation, so that a route added later gets them by construction:

- Operation ids are the endpoint's name in camelCase (``putRun``), set by
  :func:`operation_id` (the app's ``generate_unique_id_function``); an operation with no tag
  is tagged by the first segment of its path.
- A HEAD answer never has a body: its responses declare headers only.
- No schema property has a ``default``: on the wire an absent field and a null one differ (in
  a PATCH, absent keeps the stored value and null clears it), and generators read a default as
  "always present". Parameters keep theirs (``limit`` is 50 when not sent); a query, path or
  header parameter is never null, so it is not declared nullable.
- Headers the server sends are declared: ``X-Request-Id`` on every answer,
  ``WWW-Authenticate`` on every 401 and 403, ``Retry-After`` on every 409 (``lease-held``) and
  503, ``Location`` on every 201, plus what each route declares itself (``ETag``, the event
  streams' and the viewer's headers). ``tests/api/test_openapi_headers.py`` drives a server
  through every operation and fails on a header sent but not declared.
- Descriptions are about the wire: the Markdown of route docstrings (reST double backticks
  become single), the wire descriptions of the snapshot models below instead of their Python
  docstrings, and no pydantic-made property titles ("Completedat").
"""

from __future__ import annotations

from typing import Any, Final

from fastapi.routing import APIRoute
from pydantic.alias_generators import to_camel

from runstore.client.models import MAX_INT, RUN_ID_PATTERN

from .headers import LEASE_HEADER
from .schemas import Problem

__all__ = [
    "ETAG_HEADER",
    "JSON",
    "LEASE_PARAM",
    "RUN_ID_PARAM",
    "for_generators",
    "operation_id",
    "problem_responses",
]

JSON: Final = "application/json"

HTTP_METHODS: Final = frozenset({"get", "put", "post", "delete", "options", "head", "patch"})

ETAG_HEADER: Final = {
    "ETag": {
        "description": 'The run\'s version as an entity tag ("7"); send it in If-Match or '
        "If-None-Match.",
        "schema": {"type": "string"},
    }
}

# The run id is read from the path by the routes themselves, so that their endpoints take the
# Request alone (api.run_route calls them so); this documents it.
RUN_ID_PARAM: Final = {
    "name": "runId",
    "in": "path",
    "required": True,
    "description": "1-200 characters of A-Z a-z 0-9 _ . ~ : @ -, starting with a letter or digit.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": RUN_ID_PATTERN},
}
LEASE_PARAM: Final = {
    "name": LEASE_HEADER,
    "in": "header",
    "description": (
        "The writer's lease on the run (its number). 409 lease-lost unless it is the run's "
        "latest lease; without it, 409 lease-held while another lease is live."
    ),
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem+json answers of ``statuses``, for a route's ``responses``."""
    return {
        status: {"model": Problem, "content": {"application/problem+json": {}}}
        for status in statuses
    }


# Headers the server sends with every answer of a status, whichever operation answers it.
HEADERS_BY_STATUS: Final[dict[str, dict[str, Any]]] = {
    "201": {
        "Location": {
            "description": "The path of the run just created.",
            "schema": {"type": "string"},
        }
    },
    "401": {
        "WWW-Authenticate": {
            "description": 'Bearer, with error="invalid_token" when a token was sent.',
            "schema": {"type": "string"},
        }
    },
    "403": {
        "WWW-Authenticate": {
            "description": 'Bearer, with error="insufficient_scope" and the scope needed.',
            "schema": {"type": "string"},
        }
    },
    "409": {
        "Retry-After": {
            "description": "With lease-held: seconds until the live lease expires.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
    "503": {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}

# On every answer while request ids are on (RUNSTORE_METRICS, the default).
REQUEST_ID_HEADER: Final = {
    "X-Request-Id": {
        "description": "The request's id: the X-Request-Id it sent when that was 1-200 visible "
        "ASCII characters, else one the server made. Problem bodies repeat it as requestId; "
        "the server's log lines of the request name it.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    }
}

TAGS: Final = [
    {"name": "runs", "description": "Store, read, list and delete run snapshots."},
    {
        "name": "leases",
        "description": "One owner per run: take, renew and release a run's lease (a fencing "
        "token), and claim orphaned runs.",
    },
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "events", "description": "Follow runs as they change (server-sent events)."},
]

_ABSENT_OR_NULL: Final = (
    " Absent: the stored value stays. null: the field is cleared (removed from the run)."
)
# What the Python models' docstrings say for Python users, said for the wire.
SCHEMA_DESCRIPTIONS: Final = {
    "RunSnapshot": "A whole run, the camelCase JSON of the agent framework's IRunSnapshot. "
    "Fields this document does not name are kept as sent and returned on reads. completedAt, "
    "history, plan, text and error may be left out (or null): the run does not have them.",
    "RunPatch": "The body of a PATCH: any subset of the snapshot's fields, plus where appends "
    "start. A field left out keeps its stored value; null clears an optional field (completedAt, "
    "history, plan, text, error). trace appends the steps from index traceFrom; history "
    "appends the turns from index historyFrom (or, with null, clears the history).",
    "RunSummary": "One row of GET /runs: the snapshot without trace, history and plan, with "
    "traceLength, version, updatedAt (ms) and lease (the live lease, or null). Optional fields "
    "the run lacks are left out.",
    "Lease": "A lease: holder owns run runId until expiresAt (ms, by the store's clock; reason "
    "with ttlMs, never by comparing clocks). lease is the fencing token, sent as Runstore-Lease "
    "with every write under it.",
    "LeaseRequest": "The body of POST /runs/{runId}/lease: take a lease (no lease), or renew "
    "lease n (the holder's, and the run's latest).",
    "ClaimRequest": "The body of POST /claims: take over the orphaned run that has waited "
    "longest, among the unfinished runs with one of these statuses.",
    "ClaimedRun": "What POST /claims answers: the run as stored (its version is the ETag) and "
    "the new lease on it.",
    "WriteAck": "What a PUT or PATCH left stored.",
}
PATCH_FIELD_DESCRIPTIONS: Final = {
    "completedAt": "Set when the run finished (ms); a finished run stays finished."
    + _ABSENT_OR_NULL,
    "error": "Why the run failed." + _ABSENT_OR_NULL,
    "history": "With historyFrom: the turns to store from that index on. null (without "
    "historyFrom) clears the history.",
    "historyFrom": "Index in the stored history where the sent turns start.",
    "plan": "The agent's plan." + _ABSENT_OR_NULL,
    "text": "The run's final text." + _ABSENT_OR_NULL,
    "trace": "With traceFrom: the steps to store from that index on.",
    "traceFrom": "Index in the stored trace where the sent steps start (the trace length the "
    "client last saw).",
}


def operation_id(route: APIRoute) -> str:
    """An operation's id: its endpoint's name in camelCase (``put_run`` gives ``putRun``)."""
    return to_camel(route.name)


def for_generators(schema: dict[str, Any]) -> None:
    """Make ``schema`` (FastAPI's document, changed in place) what generators need."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                _fix_operation(path, method, operation)
    components = schema.get("components", {}).get("schemas", {})
    for name, definition in components.items():
        _strip_defaults_and_titles(definition)
        if name in SCHEMA_DESCRIPTIONS:
            definition["description"] = SCHEMA_DESCRIPTIONS[name]
    patch_properties = components.get("RunPatch", {}).get("properties", {})
    for name, description in PATCH_FIELD_DESCRIPTIONS.items():
        if name in patch_properties:
            patch_properties[name]["description"] = description
    used = {
        tag
        for item in schema.get("paths", {}).values()
        for op in item.values()
        if isinstance(op, dict)
        for tag in op.get("tags", ())
    }
    known = {tag["name"] for tag in TAGS}
    schema["tags"] = [tag for tag in TAGS if tag["name"] in used] + [
        {"name": name} for name in sorted(used - known)
    ]


def _fix_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    if not operation.get("tags"):
        operation["tags"] = [path.strip("/").split("/")[0] or "service"]
    for key in ("summary", "description"):
        if key in operation:
            operation[key] = _markdown(operation[key])
    for parameter in operation.get("parameters", []):
        parameter_schema = parameter.get("schema", {})
        parameter_schema.pop("title", None)
        _not_null(parameter_schema)
        if "description" in parameter_schema and "description" in parameter:
            del parameter_schema["description"]  # said once, on the parameter
    for status, response in operation.get("responses", {}).items():
        headers = response.setdefault("headers", {})
        for name, header in {**REQUEST_ID_HEADER, **HEADERS_BY_STATUS.get(status, {})}.items():
            headers.setdefault(name, header)
        if not headers:
            del response["headers"]
        if method == "head":
            response.pop("content", None)


def _not_null(parameter_schema: dict[str, Any]) -> None:
    """A parameter is sent or not, never null: drop the null option FastAPI declares for an
    optional one."""
    options = parameter_schema.get("anyOf")
    if options is None:
        return
    not_null = [option for option in options if option.get("type") != "null"]
    if len(not_null) == 1:
        del parameter_schema["anyOf"]
        parameter_schema.update(not_null[0])


def _strip_defaults_and_titles(definition: dict[str, Any]) -> None:
    for property_schema in definition.get("properties", {}).values():
        property_schema.pop("default", None)
        property_schema.pop("title", None)


def _markdown(text: str) -> str:
    """Docstring reST as Markdown: ``code`` becomes `code`."""
    return text.replace("``", "`")
