"""What the event-stream tests share: a reader of one stream in a thread, a writer whose every
version is read back, a uvicorn server in this process (to look at its broker), and the check
that a stream's events rebuild the run at every version."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from httpx_sse import connect_sse

from runstore.client._events import apply_event
from runstore.client.models import RunEvent
from runstore.service import Settings
from runstore.service.app import create_app
from runstore.service.connections import guarded_protocol


@dataclass
class StreamReader:
    """Reads one event stream in a thread: every event, in order, until the stream ends."""

    url: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[RunEvent] = field(default_factory=list)
    comments: int = 0
    ended = False
    error: BaseException | None = None
    opened: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> StreamReader:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.opened.wait(30), f"the stream {self.path} did not open"
        if self.error is not None:
            raise self.error
        return self

    def _read(self) -> None:
        try:
            with (
                httpx.Client(base_url=self.url, timeout=httpx.Timeout(30, read=120)) as http,
                connect_sse(http, "GET", self.path, headers=dict(self.headers)) as source,
            ):
                assert source.response.status_code == 200, source.response.read()
                self.opened.set()
                for sse in source.iter_sse():
                    data = json.loads(sse.data)
                    version = int(sse.id) if sse.event == "run" else data.get("version")
                    self.events.append(RunEvent(kind=sse.event, version=version, data=data))
            self.ended = True
        except BaseException as exc:
            self.error = exc
        finally:
            self.opened.set()

    def join(self, timeout: float = 60) -> StreamReader:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the stream {self.path} did not end"
        if self.error is not None:
            raise self.error
        return self

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"{len(self.events)} events of {count}"
            assert self.error is None, self.error
            time.sleep(0.01)


def random_patch(rng: random.Random, run: dict[str, Any], index: int) -> dict[str, Any]:
    """A PATCH of one of the shapes agents send: steps appended (sometimes the last one
    re-sent), history turns, fields set and cleared, a plan."""
    patch: dict[str, Any] = {}
    trace_length = len(run["trace"])
    choice = rng.random()
    if choice < 0.6:
        start = max(0, trace_length - rng.choice((0, 0, 0, 1)))
        patch["traceFrom"] = start
        patch["trace"] = [{"step": start + n, "out": "é" * rng.randrange(3)} for n in range(2)]
        patch["stepIndex"] = start + 2
    elif choice < 0.75:
        history = run.get("history") or []
        patch["historyFrom"] = len(history)
        patch["history"] = [{"role": "tool", "content": f"turn {index}"}]
    elif choice < 0.85:
        patch["text"] = None if rng.random() < 0.5 else f"draft {index}"
        patch["usage"] = {"tokens": index}
    elif choice < 0.95:
        patch["plan"] = None if rng.random() < 0.3 else {"steps": [index, "next"]}
    else:
        patch["history"] = None
    return patch


def write_patches(
    http: httpx.Client, run_id: str, patches: int, seed: int = 7, finish: bool = True
) -> dict[int, dict[str, Any]]:
    """PATCH the stored run ``patches`` times (the last finishes it, if ``finish``); returns the
    stored run at every version from the current one on, read back after each write (the test
    is the run's only writer)."""
    rng = random.Random(seed)
    answer = http.get(f"/runs/{run_id}")
    stored = {int(answer.headers["etag"].strip('"')): answer.json()}
    for index in range(patches):
        patch = random_patch(rng, stored[max(stored)], index)
        if finish and index == patches - 1:
            patch.update(status="completed", completedAt=1_700_000_000_000 + index, text="done")
        written = http.patch(f"/runs/{run_id}", json=patch)
        assert written.status_code == 200, written.text
        stored[written.json()["version"]] = http.get(f"/runs/{run_id}").json()
    return stored


def check_rebuilds(events: list[RunEvent], stored: dict[int, dict[str, Any]]) -> None:
    """The events rebuild the run at each version they name, in order: a ``patch`` always
    follows on from the version before, a ``run`` may skip ahead (a resync)."""
    assert events, "no event"
    run: dict[str, Any] | None = None
    version = 0
    for event in events:
        assert event.version is not None, event
        assert event.version > version, (event, version)
        if event.kind == "patch":
            assert event.version == version + 1, f"patch {event.version} after {version}"
        else:
            assert event.kind == "run", event
        run = apply_event(run, event)
        version = event.version
        assert run == stored[version], f"version {version}"


@contextmanager
def uvicorn_in_thread(settings: Settings, *, guarded: bool) -> Iterator[tuple[str, FastAPI]]:
    """The app under a real uvicorn on a free port, in this process, so a test can look at its
    broker; yields the base URL and the app. ``guarded``: with ``runstore serve``'s protocol,
    which lets the broker write to streams' connections itself; otherwise uvicorn's own, where
    every event goes through the streams' tasks."""
    app = create_app(settings)
    protocol: Any = "httptools"
    if guarded:
        protocol = guarded_protocol(
            max_head_bytes=settings.max_head_bytes,
            head_timeout=settings.head_timeout,
            max_connections=settings.max_connections,
        )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", http=protocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        app.state.events.close_threadsafe()  # as the CLI's server does on a stop signal
        server.should_exit = True
        thread.join(30)
