"""The HTTP contract (docs/api.md): routes that validate, call the store, and answer.

Routes never touch SQL; they turn bodies into records (``store.records``), call the
:class:`RunStore`, and write JSON straight from what the store returns.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from runstore.client.models import MAX_INT, STATUS_PATTERN, WriteAck
from runstore.client.problems import (
    BadRequest,
    InvalidRun,
    PreconditionFailed,
    RunNotFound,
)

from ..store.base import RunQuery, RunStore, WriteResult, decode_cursor, encode_cursor
from .body import read_parsed
from .headers import header, parse_etags, parse_if_match, parse_lease
from .openapi import ETAG_HEADER, JSON, LEASE_PARAM, RUN_ID_PARAM, problem_responses
from .parsers import BodyRules, patch_of, snapshot_of
from .request_state import body_budget_of, run_id_of, settings_of, store_of
from .schemas import Deleted, Health, RunList

__all__ = ["RUN_ENDPOINTS", "router"]

_AUTH = (401, 403)

# Entity tags as RFC 9110 writes them: * or a list of tags, each "..." or W/"...".
_ETAGS_PATTERN: Final = r'^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$'
_IF_MATCH_PARAM: Final = {
    "name": "If-Match",
    "in": "header",
    "description": 'Write only if the stored version is one of these tags ("7"); * if it exists.',
    "schema": {"type": "string", "pattern": _ETAGS_PATTERN},
}
_IF_NONE_MATCH_PARAM: Final = {
    "name": "If-None-Match",
    "in": "header",
    "description": "304 if the stored version is one of these tags (weak comparison); * any.",
    "schema": {"type": "string", "pattern": _ETAGS_PATTERN},
}
_CREATE_ONLY_PARAM: Final = {
    "name": "If-None-Match",
    "in": "header",
    "description": "* creates the run only if it does not exist yet (412 if it does).",
    "schema": {"type": "string", "enum": ["*"]},
}


router = APIRouter()


async def _resolve_if_match(store: RunStore, run_id: str, value: str | None) -> int | None:
    accepted = parse_if_match(value)
    if accepted is None:
        return None
    if len(accepted) == 1 and -1 not in accepted:
        return next(iter(accepted))
    # "*" or a list of tags: find the stored version, which the store checks again atomically.
    current = await store.get_version(run_id)
    if current is None:
        raise PreconditionFailed("The run does not exist, so If-Match cannot hold.")
    if accepted and current not in accepted:
        raise PreconditionFailed(f"The run is at version {current}, not one If-Match names.")
    return current


class _Ack(Response):
    """A write's answer: ``runId``, ``version`` and ``traceLength``, with ETag (and Location
    when the run was created). Its header bytes are built at once: what ``Response(...)`` gives
    for the same body and headers, without its header normalisation (a few us a write)."""

    media_type = JSON

    def __init__(self, result: WriteResult, status: int, run_id: str) -> None:
        self.status_code = status
        self.background = None
        self.body = (
            f'{{"runId":"{result.run_id}","version":{result.version},'
            f'"traceLength":{result.trace_length}}}'.encode()
        )
        self.raw_headers = [(b"etag", b'"%d"' % result.version)]
        if result.created:
            self.raw_headers.append((b"location", f"/runs/{run_id}".encode()))
        self.raw_headers += [
            (b"content-length", b"%d" % len(self.body)),
            (b"content-type", b"application/json"),
        ]


_JSON_BODY_ERRORS = (400, *_AUTH, 408, 409, 412, 413, 415, 422, 503)


@router.patch(
    "/runs/{runId}",
    summary="Append steps and update fields of a run",
    response_model=WriteAck,
    responses={200: {"headers": ETAG_HEADER}, **problem_responses(*_JSON_BODY_ERRORS, 404)},
    openapi_extra={
        "parameters": [RUN_ID_PARAM, _IF_MATCH_PARAM, LEASE_PARAM],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/RunPatch"}}},
        },
    },
)
async def patch_run(request: Request) -> Response:
    """Send only what is new: ``trace`` from ``traceFrom``, ``history`` from ``historyFrom``,
    and any fields to replace."""
    run_id = run_id_of(request)
    settings = settings_of(request)
    with body_budget_of(request).holding() as hold:
        patch = await read_parsed(request, settings, hold, patch_of, run_id, BodyRules.of(settings))
        lease = parse_lease(header(request, b"runstore-lease"))
        store = store_of(request)
        if_match = await _resolve_if_match(store, run_id, header(request, b"if-match"))
        result = await store.patch_run(run_id, patch, if_match=if_match, lease=lease)
    return _Ack(result, 200, run_id)


@router.put(
    "/runs/{runId}",
    summary="Create or replace a run",
    status_code=200,
    response_model=WriteAck,
    responses={
        201: {"model": WriteAck, "description": "Created", "headers": ETAG_HEADER},
        200: {"description": "Replaced", "headers": ETAG_HEADER},
        **problem_responses(*_JSON_BODY_ERRORS),
    },
    openapi_extra={
        "parameters": [RUN_ID_PARAM, _IF_MATCH_PARAM, _CREATE_ONLY_PARAM, LEASE_PARAM],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/RunSnapshot"}}},
        },
    },
)
async def put_run(request: Request) -> Response:
    """Store a whole snapshot. 201 when the run is new, 200 when it replaced one."""
    run_id = run_id_of(request)
    settings = settings_of(request)
    with body_budget_of(request).holding() as hold:
        record = await read_parsed(
            request, settings, hold, snapshot_of, run_id, BodyRules.of(settings)
        )
        lease = parse_lease(header(request, b"runstore-lease"))
        store = store_of(request)
        if_none_match = header(request, b"if-none-match")
        create_only = False
        if if_none_match is not None:
            if parse_etags(if_none_match, "If-None-Match") is not None:
                raise BadRequest("On PUT, If-None-Match supports only *.")
            create_only = True
        if_match = await _resolve_if_match(store, run_id, header(request, b"if-match"))
        result = await store.put_run(
            record, if_match=if_match, if_none_match=create_only, lease=lease
        )
    return _Ack(result, 201 if result.created else 200, run_id)


def _etag_matches(value: str, version: int) -> bool:
    tags = parse_etags(value, "If-None-Match")
    return tags is None or any(tag == str(version) for _, tag in tags)  # weak comparison


_GET_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The snapshot as last written",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/RunSnapshot"}}},
        "headers": ETAG_HEADER,
    },
    304: {"description": "Not modified (If-None-Match)", "headers": ETAG_HEADER},
    **problem_responses(400, *_AUTH, 404, 422, 503),
}
_IF_NONE_MATCH: Final = {"parameters": [RUN_ID_PARAM, _IF_NONE_MATCH_PARAM]}


async def _read_run(run_id: str, request: Request, *, head: bool) -> Response:
    stored = await store_of(request).get_run(run_id)
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    etag = f'"{stored.version}"'
    if_none_match = header(request, b"if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, stored.version):
        return Response(status_code=304, headers={"ETag": etag})
    if head:
        return Response(
            media_type=JSON, headers={"ETag": etag, "Content-Length": str(len(stored.body))}
        )
    return Response(stored.body, media_type=JSON, headers={"ETag": etag})


@router.get(
    "/runs/{runId}",
    summary="Read a run",
    response_model=None,
    responses=_GET_RESPONSES,
    openapi_extra=_IF_NONE_MATCH,
)
async def get_run(request: Request) -> Response:
    """The snapshot, with its version as the ETag."""
    run_id = run_id_of(request)
    return await _read_run(run_id, request, head=False)


@router.head(
    "/runs/{runId}",
    summary="Headers of a run's GET",
    response_model=None,
    responses=_GET_RESPONSES,
    openapi_extra=_IF_NONE_MATCH,
)
async def head_run(request: Request) -> Response:
    """The headers GET would send (ETag, Content-Length), without the body."""
    run_id = run_id_of(request)
    return await _read_run(run_id, request, head=True)


@router.delete(
    "/runs/{runId}",
    summary="Delete a run",
    status_code=204,
    response_class=Response,
    responses=problem_responses(400, *_AUTH, 404, 409, 412, 422, 503),
    openapi_extra={"parameters": [RUN_ID_PARAM, _IF_MATCH_PARAM, LEASE_PARAM]},
)
async def delete_run(request: Request) -> Response:
    run_id = run_id_of(request)
    lease = parse_lease(header(request, b"runstore-lease"))
    store = store_of(request)
    if_match = await _resolve_if_match(store, run_id, header(request, b"if-match"))
    await store.delete_run(run_id, if_match=if_match, lease=lease)
    return Response(status_code=204)


# What api.run_route.RunRoute serves, first in the app's router: the endpoints declared above
# for /runs/{runId}, each taking the Request alone (tests check the two agree).
RUN_ENDPOINTS: Final[Mapping[str, Callable[[Request], Awaitable[Response]]]] = {
    "PATCH": patch_run,
    "PUT": put_run,
    "GET": get_run,
    "HEAD": head_run,
    "DELETE": delete_run,
}


Millis = Annotated[int | None, Query(ge=0, le=MAX_INT)]


@router.get(
    "/runs",
    summary="List runs, newest first",
    response_model=RunList,
    responses=problem_responses(*_AUTH, 422, 503),
)
async def list_runs(
    request: Request,
    status: Annotated[
        list[Annotated[str, Query(pattern=STATUS_PATTERN)]] | None,
        Query(description="Only runs with this status; repeat for several."),
    ] = None,
    startedAfter: Millis = None,
    startedBefore: Millis = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="nextCursor of the previous page.")
    ] = None,
) -> Response:
    """Summaries (snapshot without trace, history, plan; with traceLength, version, updatedAt),
    newest ``startedAt`` first, ties by ``runId`` descending."""
    decoded = None
    if cursor is not None:
        try:
            decoded = decode_cursor(cursor)
        except ValueError:
            raise InvalidRun(
                "The cursor is not one this store issued; pass nextCursor unchanged.",
                errors=[
                    {"path": "query.cursor", "message": "not a valid cursor", "type": "cursor"}
                ],
            ) from None
    page = await store_of(request).list_runs(
        RunQuery(
            statuses=tuple(dict.fromkeys(status or ())),
            started_after=startedAfter,
            started_before=startedBefore,
            limit=limit,
            cursor=decoded,
        )
    )
    next_cursor = "null" if page.next_cursor is None else f'"{encode_cursor(page.next_cursor)}"'
    return Response(
        f'{{"runs":[{",".join(page.summaries)}],"nextCursor":{next_cursor}}}'.encode(),
        media_type=JSON,
    )


@router.delete(
    "/runs",
    summary="Delete finished or old runs (retention)",
    response_model=Deleted,
    responses=problem_responses(*_AUTH, 422, 503),
)
async def delete_runs(
    request: Request,
    completedBefore: Millis = None,
    startedBefore: Millis = None,
) -> Response:
    """Delete every run that matches all the given bounds; needs the admin scope."""
    if completedBefore is None and startedBefore is None:
        raise InvalidRun(
            "Say which runs to delete: completedBefore and/or startedBefore (ms).",
            errors=[{"path": "query.completedBefore", "message": "is required", "type": "missing"}],
        )
    deleted = await store_of(request).delete_runs(
        completed_before=completedBefore, started_before=startedBefore
    )
    return Response(json.dumps({"deleted": deleted}).encode(), media_type=JSON)


@router.get("/healthz", summary="The process is alive", tags=["health"], response_model=Health)
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


@router.head(
    "/healthz",
    summary="The process is alive (headers only)",
    tags=["health"],
    response_model=None,
)
async def healthz_head() -> Response:
    return Response(media_type=JSON, headers={"Content-Length": "15"})


@router.get(
    "/readyz",
    summary="The store can read and write",
    tags=["health"],
    response_model=Health,
    responses=problem_responses(*_AUTH, 503),
)
async def readyz(request: Request) -> Response:
    await store_of(request).check_ready()
    return Response(b'{"status":"ready"}', media_type=JSON)
