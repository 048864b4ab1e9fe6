"""Event streams (docs/api.md, "Events"): ``GET /runs/{runId}/events`` and ``GET /events``.

Server-sent events (the HTML Living Standard's ``text/event-stream``) on Starlette's
``StreamingResponse``, which already ends the stream when the client goes away (it listens for
``http.disconnect`` under uvicorn's ASGI 2.3); the framing is a few lines here. Why not
sse-starlette's ``EventSourceResponse``: what it adds beyond that (pings, framing) is as short
as this, and it learns of a shutdown by patching uvicorn's signal handler process-wide, where
the broker here is closed by the server's own stop (``cli``) and by the app's lifespan.

Each stream holds a watcher of :class:`~..events.EventBroker` for as long as it is open, and
gives it back however it ends (:class:`EventStream`), before the body ever started included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from itertools import count
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from runstore.client.models import STATUS_PATTERN
from runstore.client.problems import BadRequest, RunNotFound

from ..config import Settings
from ..events import EventBroker, Watcher
from ..store.base import RunStore, StoredRun
from ..store.records import is_finished
from .headers import header
from .openapi import RUN_ID_PARAM, problem_responses
from .request_state import broker_of, run_id_of, settings_of, store_of

__all__ = ["EVENT_STREAM", "STREAM_HEADERS", "EventStream", "events_router", "sse_frame"]

EVENT_STREAM: Final = "text/event-stream"
KEEP_ALIVE: Final = b": keep-alive\n\n"

events_router = APIRouter(tags=["events"])

# No caching of a live stream, and no proxy buffering (nginx's X-Accel-Buffering).
STREAM_HEADERS: Final = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse_frame(event: str, data: bytes, event_id: str | int | None = None) -> bytes:
    """One event: ``event:``, ``id:`` (if any) and ``data:`` lines (one per line of data)."""
    head = b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: " + str(event_id).encode() + b"\n"
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


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
    watching = broker.watch_run(run_id)
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
    version = stored.version
    if resume != version:
        yield sse_frame("run", stored.body, version)
    if is_finished(stored.body):
        return
    while True:
        if not await watcher.wait(settings.events_keepalive):
            yield KEEP_ALIVE
            continue
        after = watcher.resync_after
        changes, resync = watcher.take()
        if resync:
            # The queue overflowed: what it held is gone; the run as it is now replaces it.
            fresh = await broker.resync_read(run_id, after, store.get_run)
            if fresh is None:
                yield sse_frame("deleted", b'{"runId":"%s"}' % run_id.encode())
                return
            if fresh.version != version:
                version = fresh.version
                yield sse_frame("run", fresh.body, version)
            if is_finished(fresh.body):
                return
        # What the wake-up brought goes out as one chunk: one send, however many changes.
        frames: list[bytes] = []
        for change in changes:
            if change.kind == "deleted":
                frames.append(sse_frame("deleted", change.data))
                yield b"".join(frames)
                return
            if change.version <= version:
                continue  # already in what was sent
            version = change.version
            frames.append(change.frame)
            if change.finished:
                yield b"".join(frames)
                return
        if frames:
            yield b"".join(frames)
        if watcher.closed:
            return


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
    watching = broker_of(request).watch_all(status or ())
    watcher = watching.__enter__()
    events = _all_events(settings_of(request), watcher)
    return EventStream(events, lambda: watching.__exit__(None, None, None))


_EVENT_IDS = count(1)


async def _all_events(settings: Settings, watcher: Watcher) -> AsyncIterator[bytes]:
    # A first comment, so that a client sees the stream open before the first write.
    yield KEEP_ALIVE
    while True:
        if not await watcher.wait(settings.events_keepalive):
            yield KEEP_ALIVE
            continue
        changes, skipped = watcher.take()
        if skipped:
            yield b": this client fell behind: some summaries were skipped\n\n"
        frames: list[bytes] = []
        for change in changes:
            if change.kind == "deleted":
                frames.append(sse_frame("deleted", change.data, next(_EVENT_IDS)))
            elif change.summary is not None:
                frames.append(sse_frame("summary", change.summary.encode(), next(_EVENT_IDS)))
        if frames:
            yield b"".join(frames)
        if watcher.closed:
            return
