"""Test support: the app in process, a real uvicorn server in a subprocess, and snapshots."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from runstore.service import Settings, create_app

__all__ = [
    "BACKENDS",
    "PROBLEM_MEDIA_TYPE",
    "ServerProcess",
    "StoreLocation",
    "assert_problem",
    "damage_database",
    "empty_postgres_database",
    "in_process_app",
    "make_snapshot",
    "store_location",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:runstore:problem:"

_LISTENING = re.compile(r"Uvicorn running on (http://\S+)")


def make_snapshot(run_id: str = "run-1", steps: int = 0, **fields: Any) -> dict[str, Any]:
    """A valid camelCase snapshot with ``steps`` trace items; ``fields`` override."""
    snapshot: dict[str, Any] = {
        "runId": run_id,
        "status": "running",
        "startedAt": 1_700_000_000_000,
        "input": "What is the weather in Paris?",
        "trace": [{"step": i, "output": f"result {i}"} for i in range(steps)],
        "usage": {"inputTokens": 10 * steps, "outputTokens": 5 * steps},
        "stepIndex": steps,
        "iterations": steps,
        "revisions": 0,
    }
    snapshot.update(fields)
    return snapshot


def damage_database(path: Path, pages: int = 4, page_size: int = 4096) -> None:
    """Overwrite ``pages`` whole pages in the middle of a database file, as a bad disk would."""
    size = path.stat().st_size
    assert size >= 4 * pages * page_size, "a database this small has no middle to damage"
    with path.open("r+b") as damaged:
        damaged.seek(size // 2 // page_size * page_size)
        damaged.write(b"\xa5" * page_size * pages)


def assert_problem(response: httpx.Response, status: int, slug: str | None = None) -> Any:
    """Check an RFC 9457 answer (media type, type, title, status, detail; ``errors`` on 422).

    ``slug`` is the end of the problem ``type`` (``stale-write``); returns the parsed body.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_TYPE_PREFIX)
    if slug is not None:
        assert body["type"] == PROBLEM_TYPE_PREFIX + slug, body
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if status == 422:
        assert body["errors"], body
        for error in body["errors"]:
            assert {"path", "message", "type"} <= error.keys()
            assert all(isinstance(error[key], str) for key in ("path", "message", "type"))
    return body


@contextlib.asynccontextmanager
async def in_process_app(settings: Settings) -> AsyncIterator[ASGIApp]:
    """The app with its lifespan running, as an ASGI callable for ``httpx.ASGITransport``.

    httpx's ASGI transport does not run lifespans; this does, and hands each request the
    lifespan state as a server would.
    """
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        yield with_state(app, state)


def with_state(app: ASGIApp, state: Mapping[str, Any] | None) -> ASGIApp:
    """``app`` handing each request the lifespan's ``state``, as a server would."""

    async def app_with_state(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(state or {})
        await app(scope, receive, send)

    return app_with_state


def empty_postgres_database(url: str) -> str:
    """``url``'s database with no runs in it (the schema, if any, kept); returns ``url``."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "DO $$ BEGIN IF to_regclass('runs') IS NOT NULL THEN "
            "TRUNCATE runs, steps, turns, probe CASCADE; END IF; END $$"
        )
    return url


class ServerProcess:
    """``runstore serve`` in a subprocess on a free port (or a given one, to restart)."""

    def __init__(
        self,
        db: str | Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
        database_url: str | None = None,
    ) -> None:
        self.db = str(db) if db is not None else None
        # Set: the server stores in this PostgreSQL database, not in ``db``.
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.port = port
        self.args = args
        # A command the server runs under, such as setpriv to drop a capability.
        self.prefix = prefix
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {**os.environ, "RUNSTORE_ACCESS_LOG": "false", **self.extra_env}
        command = [
            *self.prefix,
            *(sys.executable, "-m", "runstore.service", "serve", "--port", str(self.port)),
        ]
        if self.db is not None:
            command += ["--db", self.db]
        if self.database_url is not None:
            command += ["--database-url", self.database_url]
        command += list(self.args)
        self.output = []
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # A group of its own: a signal reaches the server under a prefix (strace) as well.
            start_new_session=True,
        )
        found = threading.Event()

        def pump(stream: Any) -> None:
            # Closed here, at the end of the output, so no test leaks the pipe.
            with stream:
                for line in stream:
                    self.output.append(line)
                    match = _LISTENING.search(line)
                    if match and not found.is_set():
                        self.url = match.group(1)
                        self.port = int(self.url.rsplit(":", 1)[1])
                        found.set()

        threading.Thread(target=pump, args=(self.process.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("runstore serve did not start:\n" + "".join(self.output))
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the crash a power cut or an OOM killer gives."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def _signal(self, number: int) -> None:
        """``number`` to the server's process group: the server, and a prefix's command."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, number)

    def restart(self) -> ServerProcess:
        """Start again on the same port (after kill or terminate)."""
        return self.start()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **kwargs)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class StoreLocation:
    """Where a server keeps its runs: a SQLite file, or the PostgreSQL ``database_url``."""

    backend: str
    db: Path
    database_url: str | None = None

    def server(self, **kwargs: Any) -> ServerProcess:
        """A server (not started) on this store; ``kwargs`` as ServerProcess takes them."""
        if self.database_url is None:
            return ServerProcess(self.db, **kwargs)
        return ServerProcess(database_url=self.database_url, **kwargs)


# Parameters for a fixture that runs its tests once on each backend.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def store_location(request: pytest.FixtureRequest, directory: Path) -> StoreLocation:
    """The store for a fixture parametrized with BACKENDS: a SQLite file in ``directory``, or
    the session's PostgreSQL database (fixture ``postgres_url``) emptied of runs."""
    backend: str = request.param
    if backend == "postgres":
        url = empty_postgres_database(request.getfixturevalue("postgres_url"))
        return StoreLocation(backend, directory / "runs.db", url)
    return StoreLocation(backend, directory / "runs.db")
