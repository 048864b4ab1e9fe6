"""Event streams (docs/api.md, "Events"): ``GET /runs/{runId}/events`` and ``GET /events``.

Server-sent events (the HTML Living Standard's ``text/event-stream``) on Starlette's
``StreamingResponse``, which already ends the stream when the client goes away (it listens for
``http.disconnect`` under uvicorn's ASGI 2.3); the framing is a few lines here. Why not
sse-starlette's ``EventSourceResponse``: what it adds beyond that (pings, framing) is as short
as this, and it learns of a shutdown by patching uvicorn's signal handler process-wide, where
the broker here is closed by the server's own stop (``cli``) and by the app's lifespan.

Each stream holds a watcher of :class:`~..events.EventBroker` for as long as it is open, and
gives it back however it ends (:class:`EventStream`), before the body ever started included.
A stream's task sends what the broker does not write to the connection itself: its first
event, what it takes while its watcher is let go (a slow connection, a resync, the end), and
keep-alive comments; once caught up it hands its watcher back (``broker.attach``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from runstore.client.models import STATUS_PATTERN
from runstore.client.problems import BadRequest, RunNotFound

from ..config import Settings
from ..events import DIRECT_WRITER, DirectWriter, EventBroker, Watcher, sse_frame
from ..store.base import RunStore, StoredRun
from ..store.records import is_finished
from .headers import header
from .openapi import RUN_ID_PARAM, problem_responses
from .request_state import broker_of, run_id_of, settings_of, store_of

__all__ = ["EVENT_STREAM", "STREAM_HEADERS", "EventStream", "events_router"]

EVENT_STREAM: Final = "text/event-stream"
KEEP_ALIVE: Final = b": keep-alive\n\n"

events_router = APIRouter(tags=["events"])

# No caching of a live stream, and no proxy buffering (nginx's X-Accel-Buffering).
STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    """A ``text/event-stream`` answer that calls ``on_close`` when it ends, however it ends."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], object]) -> None:
        super().__init__(
            events,
            media_type=EVENT_STREAM,
            headers=STREAM_HEADERS,
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _direct_writer(request: Request) -> DirectWriter | None:
    """The connection's writer, if the server offers one (``runstore serve`` does)."""
    extensions = request.scope.get("extensions")
    return None if extensions is None else extensions.get(DIRECT_WRITER)


def _resume_point(request: Request, after: int | None) -> int | None:
    """The version the client has: ``?after=`` or else ``Last-Event-ID``."""
    if after is not None:
        return after
    last = header(request, b"last-event-id")
    if last is None or not last.strip():
        return None
    text = last.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise BadRequest("Last-Event-ID must be a run version this stream sent (an integer).")
    return int(text)


_STREAM_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "Server-sent events (see docs/api.md, Events)",
        "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        "headers": {
            "Cache-Control": {
                "description": "no-store: a live stream is never cached.",
                "schema": {"type": "string"},
            },
            "X-Accel-Buffering": {
                "description": "no: a proxy that reads it (nginx) passes events on at once.",
                "schema": {"type": "string"},
            },
        },
    },
}


@events_router.get(
    "/runs/{runId}/events",
    summary="Follow a run as it changes (server-sent events)",
    response_class=StreamingResponse,
    responses={**_STREAM_RESPONSES, **problem_responses(400, 401, 403, 404, 422, 503)},
    openapi_extra={
        "parameters": [
            RUN_ID_PARAM,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Resume after this version (what the last event's id was).",
                "schema": {"type": "string", "pattern": r"^\s*[0-9]{1,19}\s*$"},
            },
        ]
    },
)
async def run_events(
    request: Request,
    after: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="Resume after this version (as Last-Event-ID)."),
    ] = None,
) -> StreamingResponse:
    """``run`` (the whole run), then a ``patch`` per write in version order, ``deleted`` when
    deleted; the stream ends after a finished run's last event."""
    run_id = run_id_of(request)
    resume = _resume_point(request, after)
    store, settings = store_of(request), settings_of(request)
    # Watch first, then read: a write committed after the read is then surely queued.
    broker = broker_of(request)
    watching = broker.watch_run(run_id, _direct_writer(request))
    watcher = watching.__enter__()
    try:
        stored = await store.get_run(run_id)
        if stored is None:
            raise RunNotFound(f"No run is stored under {run_id!r}.")
        broker.saw(run_id, stored.version)
    except BaseException:
        watching.__exit__(None, None, None)
        raise
    events = _run_events(store, broker, settings, watcher, run_id, stored, resume)
    return EventStream(events, lambda: watching.__exit__(None, None, None))


async def _run_events(
    store: RunStore,
    broker: EventBroker,
    settings: Settings,
    watcher: Watcher,
    run_id: str,
    stored: StoredRun,
    resume: int | None,
) -> AsyncIterator[bytes]:
    if resume != stored.version:
        yield sse_frame("run", stored.body, stored.version)
    if is_finished(stored.body):
        return
    broker.skip_seen(watcher, stored.version)
    while not watcher.ended:
        if watcher.resync:
            # It fell too far behind: what it missed is gone; the run as it is now replaces it.
            fresh = await broker.resync_read(watcher, run_id, store.get_run)
            if fresh is None:
                yield sse_frame("deleted", b'{"runId":"%s"}' % run_id.encode())
                return
            broker.skip_seen(watcher, fresh.version)
            yield sse_frame("run", fresh.body, fresh.version)
            if is_finished(fresh.body):
                return
            continue
        chunk = await _pending(settings, broker, watcher)
        if chunk is None:
            return
        if chunk:
            yield chunk


@events_router.get(
    "/events",
    summary="Follow every run's summary as it changes (server-sent events)",
    response_class=StreamingResponse,
    responses={**_STREAM_RESPONSES, **problem_responses(401, 403, 422, 503)},
)
async def all_events(
    request: Request,
    status: Annotated[
        list[Annotated[str, Query(pattern=STATUS_PATTERN)]] | None,
        Query(description="Only runs with this status after the write; repeat for several."),
    ] = None,
) -> StreamingResponse:
    """``summary`` after every write of a run, ``deleted`` when one is deleted; no replay."""
    broker = broker_of(request)
    watching = broker.watch_all(status or (), _direct_writer(request))
    watcher = watching.__enter__()
    events = _all_events(settings_of(request), broker, watcher)
    return EventStream(events, lambda: watching.__exit__(None, None, None))


async def _all_events(
    settings: Settings, broker: EventBroker, watcher: Watcher
) -> AsyncIterator[bytes]:
    # A first comment, so that a client sees the stream open before the first write.
    yield KEEP_ALIVE
    while True:
        if watcher.resync:
            broker.skip_all(watcher)
            yield b": this client fell behind: some summaries were skipped\n\n"
        chunk = await _pending(settings, broker, watcher)
        if chunk is None:
            return
        if chunk:
            yield chunk


async def _pending(settings: Settings, broker: EventBroker, watcher: Watcher) -> bytes | None:
    """The next chunk a stream's task sends: what its watcher lacks, as one chunk however many
    changes, or a keep-alive after a silence; b"" when there is nothing yet (it must resync,
    or it was woken); None when the stream is over."""
    events = broker.take(watcher)
    if events or watcher.resync:
        return events
    if watcher.closed:
        return None
    broker.attach(watcher)
    if not await watcher.wait(settings.events_keepalive):
        return KEEP_ALIVE
    return b""
