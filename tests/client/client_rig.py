"""What the client tests share (a helper module: it holds no tests).

- :func:`client_rig`: the app in process on a SQLite file, and the hooks under test in one of
  three modes (the sync client, the async client, embedded mode on the same file), all driven
  from async tests: blocking objects are called in a worker thread (:class:`Blocking`), and the
  sync client reaches the app through :class:`BlockingASGITransport`.
- :class:`Faults`: an ASGI layer in front of the real app that fails chosen requests as a proxy
  or a network would (503 with Retry-After, or an answer lost after the app applied the write).
- Every request the clients send is recorded (:class:`Sent`), to measure bodies.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from support import in_process_app

from runstore.client import (
    AsyncRunStoreClient,
    RetryPolicy,
    RunStoreClient,
    embedded_persistence,
)
from runstore.service import Settings

MODES = ("sync", "async", "embedded")
HTTP_MODES = ("sync", "async")
BASE_URL = "http://runstore"
# Fast retries for tests: they still back off, but briefly.
QUICK_RETRIES = RetryPolicy(max_attempts=4, first_delay=0.01, max_delay=0.05, total=10.0)


@dataclass(frozen=True)
class Sent:
    method: str
    path: str
    body: bytes
    status: int

    @property
    def size(self) -> int:
        return len(self.body)

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on and records each with the status it got."""

    def __init__(self, inner: httpx.AsyncBaseTransport, sent: list[Sent]) -> None:
        self.inner = inner
        self.sent = sent

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        response = await self.inner.handle_async_request(request)
        self.sent.append(Sent(request.method, request.url.path, body, response.status_code))
        return response


class BlockingASGITransport(httpx.BaseTransport):
    """A sync transport onto an async one running on the test's event loop.

    The sync client must be called from a worker thread that anyio started (see
    :class:`Blocking`); each request is handed to the loop and waited for.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def forward() -> tuple[int, httpx.Headers, bytes]:
            copy = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await self.inner.handle_async_request(copy)
            return response.status_code, response.headers, await response.aread()

        status, headers, content = anyio.from_thread.run(forward)
        return httpx.Response(status, headers=headers, content=content, request=request)


class Blocking:
    """An async face on a blocking object: every method call runs in a worker thread."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.target, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(attribute, *args, **kwargs))

        return call

    async def collect_runs(self, **filters: Any) -> list[Any]:
        return await anyio.to_thread.run_sync(lambda: list(self.target.list_runs(**filters)))


async def collect_runs(client: Any, **filters: Any) -> list[Any]:
    """Every summary ``list_runs`` yields, from either client."""
    if isinstance(client, Blocking):
        return await client.collect_runs(**filters)
    return [summary async for summary in client.list_runs(**filters)]


@dataclass
class _Fault:
    status: int
    retry_after: str | None
    forward: bool
    matches: Callable[[Scope], bool]


class Faults:
    """The real app behind a layer that fails the next requests it is told to.

    ``fail(n, status=503, retry_after="0")`` answers the next ``n`` matching requests itself;
    with ``forward=True`` the request reaches the app first and its answer is replaced (a
    gateway timeout after the write was applied: the answer is lost, not the write).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._faults: list[_Fault] = []
        self.failed = 0

    def fail(
        self,
        times: int = 1,
        *,
        status: int = 503,
        retry_after: str | None = None,
        forward: bool = False,
        method: str | None = None,
    ) -> None:
        def matches(scope: Scope) -> bool:
            return method is None or scope["method"] == method

        self._faults += [_Fault(status, retry_after, forward, matches) for _ in range(times)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = None
        if scope["type"] == "http":
            fault = next((f for f in self._faults if f.matches(scope)), None)
        if fault is None:
            await self.app(scope, receive, send)
            return
        self._faults.remove(fault)
        self.failed += 1
        if fault.forward:

            async def discard(message: Message) -> None:
                pass

            await self.app(scope, receive, discard)
        headers = [(b"content-type", b"text/plain")]
        if fault.retry_after is not None:
            headers.append((b"retry-after", fault.retry_after.encode()))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"upstream trouble"})


@dataclass
class Rig:
    """The hooks under test and the ways a test looks at the store behind them."""

    mode: str
    hooks: Any  # awaitable hooks (AsyncRunPersistence, or a Blocking RunPersistence)
    client: Any  # the HTTP client under test (async face), None in embedded mode
    other: AsyncRunStoreClient  # another writer on the same store, through the app
    raw: httpx.AsyncClient  # plain HTTP to the app, to read what is stored
    faults: Faults
    db: str
    sent: list[Sent] = field(default_factory=list)
    _extra_hooks: list[Any] = field(default_factory=list)

    async def stored(self, run_id: str) -> dict[str, Any] | None:
        """The stored snapshot as the server sends it."""
        response = await self.raw.get(f"/runs/{run_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def writes(self, run_id: str) -> list[Sent]:
        return [s for s in self.sent if s.path == f"/runs/{run_id}" and s.method != "GET"]

    def new_hooks(self) -> Any:
        """Fresh hooks of the same mode, as another worker process would have."""
        if self.mode == "embedded":
            hooks: Any = Blocking(embedded_persistence(self.db))
        elif self.mode == "async":
            hooks = self.client.persistence()
        else:
            hooks = Blocking(self.client.target.persistence())
        self._extra_hooks.append(hooks)
        return hooks


def make_client(mode: str, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> Any:
    """The client under test with an async face: the async client, or the sync one (Blocking)."""
    kwargs.setdefault("retries", QUICK_RETRIES)
    if mode == "async":
        return AsyncRunStoreClient(BASE_URL, transport=transport, **kwargs)
    return Blocking(RunStoreClient(BASE_URL, transport=BlockingASGITransport(transport), **kwargs))


@contextlib.asynccontextmanager
async def client_rig(settings: Settings, mode: str, **client_kwargs: Any) -> AsyncIterator[Rig]:
    """The app on ``settings.db`` and the hooks of ``mode`` on the same store."""
    async with in_process_app(settings) as app:
        faults = Faults(app)
        sent: list[Sent] = []
        transport = RecordingTransport(httpx.ASGITransport(app=faults), sent)
        client = None if mode == "embedded" else make_client(mode, transport, **client_kwargs)
        other = AsyncRunStoreClient(
            BASE_URL, transport=httpx.ASGITransport(app=app), retries=QUICK_RETRIES
        )
        raw = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
        rig = Rig(mode, None, client, other, raw, faults, settings.db, sent)
        rig.hooks = rig.new_hooks()
        try:
            yield rig
        finally:
            for hooks in rig._extra_hooks:
                await hooks.close()
            if client is not None:
                await client.close()
            await other.close()
            await raw.aclose()


def agent_snapshot(run_id: str, **fields: Any) -> dict[str, Any]:
    """A run as an agent holds it when it starts, with a history and a plan."""
    snapshot: dict[str, Any] = {
        "runId": run_id,
        "status": "running",
        "startedAt": 1_700_000_000_000,
        "input": "Plan a three-day trip to Lisbon.",
        "history": [{"role": "user", "content": "Plan a three-day trip to Lisbon."}],
        "plan": {"steps": ["flights", "hotel", "itinerary"]},
        "trace": [],
        "usage": {"inputTokens": 0, "outputTokens": 0},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    snapshot.update(fields)
    return snapshot


def take_step(snapshot: dict[str, Any], *, note: str = "") -> dict[str, Any]:
    """Advance a run by one step, in place, as an agent loop would."""
    index = len(snapshot["trace"])
    snapshot["trace"].append(
        {"step": index, "tool": "search", "output": f"result {index}{note}", "ok": True}
    )
    snapshot["history"].append({"role": "assistant", "content": f"step {index}"})
    snapshot["usage"] = {"inputTokens": 100 * (index + 1), "outputTokens": 20 * (index + 1)}
    snapshot["stepIndex"] = index + 1
    snapshot["iterations"] = index + 1
    return snapshot


def finish(snapshot: dict[str, Any], *, at: int = 1_700_000_060_000) -> dict[str, Any]:
    snapshot.update(status="completed", completedAt=at, text="Day 1: Alfama ...")
    return snapshot


def wire(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as the store returns it: optional fields that are None left out."""
    optional = {"completedAt", "history", "plan", "text", "error"}
    return {k: v for k, v in snapshot.items() if not (v is None and k in optional)}
