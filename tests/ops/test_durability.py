"""Nothing acknowledged is lost: SIGKILL at random moments under load, and damaged files.

The crash test runs a real server (on SQLite and on PostgreSQL) and writer processes that
append steps to many runs, kills the server with SIGKILL at random moments and restarts it on
the same database and port. The writers retry every write until it is acknowledged (a retried
PATCH is idempotent) and report what was acknowledged; afterwards every acknowledged step is
stored exactly as sent, and the SQLite file passes ``PRAGMA integrity_check``. SIGKILL keeps
the page cache, so this cannot catch a commit answered before its fsync: test_fsync.py does.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import StoreLocation, damage_database, make_snapshot

from runstore.service import Settings, create_app
from runstore.service.store.records import snapshot_record
from runstore.service.store.sqlite import SQLiteEngine
from runstore.service.store.sqlite_schema import CorruptDatabase

WRITERS = 3
RUNS_PER_WRITER = 8
KILLS = 12
# A write that finds the server down is retried for this long before the writer gives up.
WRITE_RETRY_SECONDS = 60.0


def step(run_id: str, index: int) -> dict[str, Any]:
    """The step at ``index`` of ``run_id``; both the writers and the checks compute it."""
    return {"run": run_id, "index": index, "tool": "search", "output": f"result {index} " * 8}


@dataclass
class WriterReport:
    """What one writer process saw: acknowledged trace lengths, and writes left unanswered."""

    acknowledged: dict[str, int]
    # Per run, the length its last write would have made, if that write got no answer.
    unanswered: dict[str, int]
    retries: int
    error: str | None = None


def _send_until_acknowledged(
    http: httpx.Client, method: str, path: str, body: dict[str, Any], stop: Any
) -> tuple[int | None, int]:
    """Send until a final answer comes; (status or None if stopped unanswered, retries)."""
    retries = 0
    deadline = time.monotonic() + WRITE_RETRY_SECONDS
    while time.monotonic() < deadline:
        try:
            response = http.request(method, path, json=body)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code != 503:
            return response.status_code, retries
        if stop.is_set():
            return None, retries
        retries += 1
        time.sleep(0.02)
    raise TimeoutError(f"{method} {path} found no server for {WRITE_RETRY_SECONDS} s")


def write_steps(url: str, writer: int, seed: int, stop: Any, reports: Any) -> None:
    """A writer process: create its runs, then append one step at a time to a random one."""
    rng = random.Random(seed)
    run_ids = [f"w{writer}-run-{n}" for n in range(RUNS_PER_WRITER)]
    acknowledged: dict[str, int] = {}
    unanswered: dict[str, int] = {}
    retries = 0
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            for run_id in run_ids:
                status, tries = _send_until_acknowledged(
                    http, "PUT", f"/runs/{run_id}", make_snapshot(run_id), stop
                )
                retries += tries
                if status is None:
                    unanswered[run_id] = 0
                    break
                assert status in (200, 201), f"PUT {run_id}: {status}"
                acknowledged[run_id] = 0
            while not stop.is_set() and len(acknowledged) == len(run_ids):
                run_id = rng.choice(run_ids)
                length = acknowledged[run_id]
                patch = {"trace": [step(run_id, length)], "traceFrom": length}
                patch["stepIndex"] = length + 1
                status, tries = _send_until_acknowledged(
                    http, "PATCH", f"/runs/{run_id}", patch, stop
                )
                retries += tries
                if status is None:
                    unanswered[run_id] = length + 1
                    break
                assert status == 200, f"PATCH {run_id} at {length}: {status}"
                acknowledged[run_id] = length + 1
        reports.put(WriterReport(acknowledged, unanswered, retries))
    except BaseException as exc:
        reports.put(WriterReport(acknowledged, unanswered, retries, error=repr(exc)))


def integrity(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
    connection.close()
    return [row[0] for row in rows]


@pytest.mark.server
@pytest.mark.slow
def test_every_acknowledged_step_survives_sigkill_at_random_moments(
    served_store: StoreLocation,
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    db = served_store.db
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    reports = context.Queue()
    server = served_store.server().start()
    writers = [
        context.Process(target=write_steps, args=(server.url, n, seed + n, stop, reports))
        for n in range(WRITERS)
    ]
    collected: list[WriterReport] = []
    try:
        for writer in writers:
            writer.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.2))
            server.kill()
            time.sleep(rng.uniform(0.0, 0.2))
            server.restart()
        time.sleep(0.5)
        stop.set()
        collected = [reports.get(timeout=WRITE_RETRY_SECONDS + 30) for _ in writers]
        for writer in writers:
            writer.join(30)
        # The last stop is a crash too: recovery must not depend on a clean shutdown.
        server.kill()
    finally:
        stop.set()
        server.stop()
        for writer in writers:
            if writer.is_alive():
                writer.kill()
                writer.join(10)
    context_note = f"(seed {seed})"
    assert all(report.error is None for report in collected), [r.error for r in collected]
    assert sum(report.retries for report in collected) > 0, "no kill met a write " + context_note
    if served_store.backend == "sqlite":
        assert integrity(db) == ["ok"], context_note

    with served_store.server(port=server.port) as restarted, restarted.client() as http:
        stored_runs = 0
        for report in collected:
            for run_id, length in report.acknowledged.items():
                response = http.get(f"/runs/{run_id}")
                assert response.status_code == 200, f"{run_id} lost {context_note}"
                stored = response.json()
                trace = stored["trace"]
                allowed = {length, report.unanswered.get(run_id, length)}
                assert len(trace) in allowed, f"{run_id}: {len(trace)} not in {allowed}"
                assert trace == [step(run_id, index) for index in range(len(trace))]
                # The step and the field sent with it were committed together.
                assert stored["stepIndex"] == len(trace)
                stored_runs += 1
        assert stored_runs == WRITERS * RUNS_PER_WRITER
    assert sum(sum(report.acknowledged.values()) for report in collected) > KILLS


def _damaged_store(db: Path) -> str:
    with SQLiteEngine(db) as engine:
        for number in range(300):
            engine.put_run(snapshot_record(make_snapshot(f"run-{number}", steps=3)))
    damage_database(db)
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.mark.server
def test_serve_refuses_a_damaged_database_with_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    digest = _damaged_store(db)
    done = subprocess.run(
        [sys.executable, "-m", "runstore.service", "serve", "--db", str(db), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output
    assert "Uvicorn running" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert str(db) in lines[0]
    assert "damaged" in lines[0]
    assert "backup" in lines[0]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest, "the refusal changed the file"


@pytest.mark.anyio
async def test_the_app_refuses_a_damaged_database_at_start(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    _damaged_store(db)
    app = create_app(Settings(db=str(db), tokens=None, database_url=None))
    with pytest.raises(CorruptDatabase):
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on a damaged database")


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a database at all, just text " * 200, "not a database"), (None, "unable to open")],
)
def test_serve_names_a_file_it_cannot_open(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    db = tmp_path / "runs.db"
    if content is None:
        db = tmp_path / "missing-directory" / "runs.db"
    else:
        db.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "runstore.service", "serve", "--db", str(db), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert str(db) in done.stderr
    assert message in done.stderr
