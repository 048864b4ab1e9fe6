"""The reference servers the HTTP benchmark measures runstore against.

- ``floor``: FastAPI endpoints that read the body and answer 204: the framework's own cost, the
  most any endpoint on this stack can do.
- ``naive``: what a first version of the service looks like: every request opens a sqlite3
  connection to a WAL database and upserts the whole snapshot as one JSON text.
- ``durable``: the floor plus the least a store must do before it may acknowledge a write: the
  body, unparsed, goes to one writer thread that appends it in a group commit (SQLite WAL,
  ``synchronous = FULL``), and the answer waits for the commit. No parsing, no checks, no
  version rules: what durability alone costs on this stack, an upper bound for any durable
  store served through FastAPI's request path.

Run one with ``python bench/reference_apps.py floor|naive|durable --port N [--db PATH]``; it is
served by uvicorn with the same options as ``runstore serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sqlite3
import threading
from typing import Any

import uvicorn
from fastapi import Body, FastAPI, Request
from starlette.responses import Response


def floor_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/runs/{run_id}", methods=["PUT", "PATCH", "GET"])
    async def run(run_id: str, request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    return app


def naive_app(db: str) -> FastAPI:
    setup = sqlite3.connect(db)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute(
        "CREATE TABLE IF NOT EXISTS agent_runs (run_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL)"
    )
    setup.close()
    app = FastAPI()

    @app.put("/runs/{run_id}")
    def put_run(run_id: str, snapshot: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        connection = sqlite3.connect(db)
        try:
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute(
                "INSERT INTO agent_runs (run_id, snapshot) VALUES (?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET snapshot = excluded.snapshot",
                (run_id, json.dumps(snapshot)),
            )
            connection.commit()
        finally:
            connection.close()
        return {"runId": run_id}

    @app.get("/runs/{run_id}")
    def get_run(run_id: str) -> Response:
        connection = sqlite3.connect(db)
        try:
            row = connection.execute(
                "SELECT snapshot FROM agent_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        finally:
            connection.close()
        if row is None:
            return Response(status_code=404)
        return Response(row[0], media_type="application/json")

    return app


Append = tuple[str, bytes, "asyncio.Future[None]"]


def _append_in_groups(db: str, appends: queue.SimpleQueue[Append]) -> None:
    """The writer thread: whatever is queued when a commit starts shares it; each write is
    answered once its group is on disk."""
    connection = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS bodies (run_id TEXT NOT NULL, body BLOB)")
    while True:
        group = [appends.get()]
        while not appends.empty():
            group.append(appends.get_nowait())
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO bodies (run_id, body) VALUES (?, ?)", [item[:2] for item in group]
        )
        connection.execute("COMMIT")

        def answer(group: list[Append] = group) -> None:
            for _, _, done in group:
                if not done.done():  # its request may have been cancelled (client gone)
                    done.set_result(None)

        # One wake-up of the event loop per group, not per write.
        group[0][2].get_loop().call_soon_threadsafe(answer)


def durable_app(db: str) -> FastAPI:
    appends: queue.SimpleQueue[Append] = queue.SimpleQueue()
    threading.Thread(target=_append_in_groups, args=(db, appends), daemon=True).start()
    app = FastAPI()

    @app.api_route("/runs/{run_id}", methods=["PUT", "PATCH"])
    async def run(run_id: str, request: Request) -> Response:
        done = asyncio.get_running_loop().create_future()
        appends.put((run_id, await request.body(), done))
        await done
        return Response(status_code=204)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["floor", "naive", "durable"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", default="naive.db")
    args = parser.parse_args()
    apps = {
        "floor": floor_app,
        "naive": lambda: naive_app(args.db),
        "durable": lambda: durable_app(args.db),
    }
    app = apps[args.kind]()
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
