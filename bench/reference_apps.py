"""The reference servers the HTTP benchmark measures runstore against.

- ``floor``: FastAPI endpoints that read the body and answer 204: the framework's own cost, the
  most any endpoint on this stack can do.
- ``naive``: what a first version of the service looks like: every request opens a sqlite3
  connection to a WAL database and upserts the whole snapshot as one JSON text.

Run one with ``python bench/reference_apps.py floor|naive --port N [--db PATH]``; it is served by
uvicorn with the same options as ``runstore serve``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["floor", "naive"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", default="naive.db")
    args = parser.parse_args()
    app = floor_app() if args.kind == "floor" else naive_app(args.db)
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
