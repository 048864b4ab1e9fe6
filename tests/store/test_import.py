"""``runstore import``: a database written by the original TypeScript ``makeSqlitePersistence``.

The ``agent_runs`` table is made here with that code's DDL and filled the way its ``write``
does (JSON.stringify into text columns, null for absent optionals); the import runs as the
command a user types, and the runs are read back through the HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import in_process_app, make_snapshot

from runstore.service import Settings

pytestmark = pytest.mark.anyio

# The DDL of makeSqlitePersistence, as it runs on a new file.
LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_runs (
  run_id TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  completed_at INTEGER,
  input TEXT NOT NULL,
  history TEXT,
  plan TEXT,
  trace TEXT NOT NULL,
  usage TEXT NOT NULL,
  step_index INTEGER NOT NULL,
  iterations INTEGER NOT NULL,
  revisions INTEGER NOT NULL,
  result_text TEXT,
  error TEXT
);
CREATE INDEX IF NOT EXISTS agent_runs_started_at_idx ON agent_runs (started_at DESC);
"""
LEGACY_UPSERT = """
INSERT INTO agent_runs
  (run_id, status, started_at, completed_at, input, history, plan, trace, usage,
   step_index, iterations, revisions, result_text, error)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(run_id) DO UPDATE SET
  status = excluded.status,
  completed_at = excluded.completed_at,
  history = excluded.history,
  plan = excluded.plan,
  trace = excluded.trace,
  usage = excluded.usage,
  step_index = excluded.step_index,
  iterations = excluded.iterations,
  revisions = excluded.revisions,
  result_text = excluded.result_text,
  error = excluded.error
"""

RUNSTORE = str(Path(sys.executable).with_name("runstore"))


def stringify(value: Any) -> str:
    """JSON.stringify: compact, non-ASCII as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def legacy_row(s: dict[str, Any]) -> tuple[Any, ...]:
    """The parameters ``write(s)`` binds: ``x ? JSON.stringify(x) : null``, ``x ?? null``."""
    return (
        s["runId"],
        s["status"],
        s["startedAt"],
        s.get("completedAt"),
        s["input"],
        stringify(s["history"]) if s.get("history") is not None else None,
        stringify(s["plan"]) if s.get("plan") is not None else None,
        stringify(s["trace"]),
        stringify(s["usage"]),
        s["stepIndex"],
        s["iterations"],
        s["revisions"],
        s.get("text"),
        s.get("error"),
    )


def write_legacy(path: Path, rows: Iterable[tuple[Any, ...]]) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executescript(LEGACY_SCHEMA)
        with connection:
            connection.executemany(LEGACY_UPSERT, rows)
    finally:
        connection.close()


LEGACY_RUNS = [
    make_snapshot(
        "run-completed",
        steps=3,
        status="completed",
        completedAt=1_700_000_060_000,
        history=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "Sunny, 18°C."},
        ],
        plan={"steps": [{"id": 1, "tool": "weather"}], "status": "done"},
        text="Sunny, 18°C.",
    ),
    make_snapshot("run-running", steps=2, startedAt=1_700_000_100_000),
    make_snapshot(
        "run-failed",
        steps=1,
        status="failed",
        completedAt=1_700_000_200_000,
        error="tool timed out",
        history=[],
        plan={},
    ),
    make_snapshot(
        "run-unicode",
        input="Wie wird das Wetter in Zürich? 日本語 🌤",
        trace=[{"tool": "wetter", "result": {"temp": 21.5, "big": 2**60, "list": [None, True]}}],
        usage={"inputTokens": 12345678901, "cost": 0.0125},
        text="",
    ),
    make_snapshot("run-cancelled", status="cancelled", completedAt=1_700_000_000_001),
]


def as_read_back(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in snapshot.items() if value is not None}


def run_import(source: Path, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNSTORE, "import", str(source), "--db", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def legacy_db(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.db"
    write_legacy(path, (legacy_row(snapshot) for snapshot in LEGACY_RUNS))
    return path


@pytest.fixture
def store_db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@contextlib.asynccontextmanager
async def open_api(store: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API over the store, in process."""
    settings = Settings(db=str(store), tokens=None, database_url=None)
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://runstore"
        ) as http,
    ):
        yield http


async def stored_runs(store: Path) -> dict[str, tuple[str, Any]]:
    """Every run in the store: ETag and snapshot, read through the API."""
    runs: dict[str, tuple[str, Any]] = {}
    async with open_api(store) as http:
        listed = (await http.get("/runs", params={"limit": 1000})).json()
        for summary in listed["runs"]:
            response = await http.get(f"/runs/{summary['runId']}")
            runs[summary["runId"]] = (response.headers["etag"], response.json())
    return runs


async def test_every_run_is_imported_as_it_was_written(legacy_db: Path, store_db: Path) -> None:
    result = run_import(legacy_db, store_db)

    assert result.returncode == 0, result.stderr
    assert "imported 5" in result.stdout
    runs = await stored_runs(store_db)
    assert sorted(runs) == sorted(snapshot["runId"] for snapshot in LEGACY_RUNS)
    for snapshot in LEGACY_RUNS:
        etag, stored = runs[snapshot["runId"]]
        assert etag == '"1"'
        expected = as_read_back(snapshot)
        assert json.dumps(stored, sort_keys=True) == json.dumps(expected, sort_keys=True)


async def test_importing_twice_changes_nothing(legacy_db: Path, store_db: Path) -> None:
    assert run_import(legacy_db, store_db).returncode == 0
    first = await stored_runs(store_db)

    again = run_import(legacy_db, store_db)

    assert again.returncode == 0, again.stderr
    assert "imported 0" in again.stdout
    assert "unchanged 5" in again.stdout
    assert await stored_runs(store_db) == first


async def test_a_run_that_went_further_in_the_store_is_kept(
    legacy_db: Path, store_db: Path
) -> None:
    assert run_import(legacy_db, store_db).returncode == 0
    async with open_api(store_db) as http:
        response = await http.patch(
            "/runs/run-running", json={"trace": [{"step": 2, "new": True}], "traceFrom": 2}
        )
        assert response.status_code == 200
    newer = (await stored_runs(store_db))["run-running"]

    again = run_import(legacy_db, store_db)

    assert again.returncode == 0, again.stderr
    assert "kept newer stored 1" in again.stdout
    assert (await stored_runs(store_db))["run-running"] == newer


async def test_rows_changed_in_the_legacy_database_are_imported_again(
    legacy_db: Path, store_db: Path
) -> None:
    assert run_import(legacy_db, store_db).returncode == 0
    grown = make_snapshot("run-running", steps=4, startedAt=1_700_000_100_000)
    write_legacy(legacy_db, [legacy_row(grown)])

    again = run_import(legacy_db, store_db)

    assert "imported 1" in again.stdout
    assert "unchanged 4" in again.stdout
    etag, stored = (await stored_runs(store_db))["run-running"]
    assert etag == '"2"'
    assert stored == grown


INVALID_ROWS = {
    "bad-trace-json": {"trace": "[{not json"},
    "bad-status": {"status": "Not A Status"},
    "bad-step-index": {"step_index": -1},
    "bad-usage": {"usage": "[1, 2]"},
    "bad id": {},
    "bad-history": {"history": '{"role": "user"}'},
}
COLUMNS = (
    "run_id",
    "status",
    "started_at",
    "completed_at",
    "input",
    "history",
    "plan",
    "trace",
    "usage",
    "step_index",
    "iterations",
    "revisions",
    "result_text",
    "error",
)


def invalid_row(run_id: str, changes: dict[str, Any]) -> tuple[Any, ...]:
    row = dict(zip(COLUMNS, legacy_row(make_snapshot(run_id, steps=1)), strict=True))
    row.update(changes)
    return tuple(row[column] for column in COLUMNS)


async def test_invalid_rows_are_reported_and_skipped(legacy_db: Path, store_db: Path) -> None:
    write_legacy(legacy_db, [invalid_row(run_id, c) for run_id, c in INVALID_ROWS.items()])

    result = run_import(legacy_db, store_db)

    assert result.returncode != 0
    assert "imported 5" in result.stdout
    assert f"invalid {len(INVALID_ROWS)}" in result.stdout
    for run_id in INVALID_ROWS:
        assert f"not imported: {run_id}:" in result.stderr
    runs = await stored_runs(store_db)
    assert sorted(runs) == sorted(snapshot["runId"] for snapshot in LEGACY_RUNS)


def test_the_legacy_database_is_left_as_it_was(legacy_db: Path, store_db: Path) -> None:
    before = legacy_db.read_bytes()

    assert run_import(legacy_db, store_db).returncode == 0

    assert legacy_db.read_bytes() == before


# Values the json module would read and the store could not keep as written (issue 14): each
# is refused with the run id and the reason, and the other rows are imported.
CHANGED_VALUES = {
    "nan-usage": ({"usage": '{"cost": NaN}'}, "NaN"),
    "infinity-trace": ({"trace": '[{"x": Infinity}]'}, "Infinity"),
    "huge-number": ({"usage": '{"cost": 1e400}'}, "too large"),
    "tiny-number": ({"trace": '[{"x": 1e-400}]'}, "too small"),
    "duplicate-key": ({"usage": '{"a": 1, "a": 2}'}, "duplicate key"),
    "deep-plan": ({"plan": "[" * 300 + "]" * 300}, "nest deeper"),
    "bad-utf8-trace": ({"trace": b'[{"x": "\xff"}]'}, "UTF-8"),
    "bad-utf8-input": ({"input": b"caf\xe9"}, "input is not valid UTF-8"),
}


async def test_values_that_would_be_changed_are_refused_by_run_id_and_reason(
    legacy_db: Path, store_db: Path
) -> None:
    write_legacy(
        legacy_db,
        [invalid_row(run_id, changes) for run_id, (changes, _) in CHANGED_VALUES.items()],
    )
    result = run_import(legacy_db, store_db)
    assert result.returncode == 1
    assert "imported 5" in result.stdout
    assert f"invalid {len(CHANGED_VALUES)}" in result.stdout
    for run_id, (_, reason) in CHANGED_VALUES.items():
        line = next(line for line in result.stderr.splitlines() if f" {run_id}: " in line)
        assert reason in line
    assert sorted(await stored_runs(store_db)) == sorted(s["runId"] for s in LEGACY_RUNS)
    # Again: the good rows are unchanged, the bad ones refused again, no version moves.
    again = run_import(legacy_db, store_db)
    assert "imported 0, unchanged 5" in again.stdout
    assert again.returncode == 1


async def test_a_row_whose_run_id_is_not_utf8_is_named_escaped(
    legacy_db: Path, store_db: Path
) -> None:
    write_legacy(legacy_db, [invalid_row("bad-id", {"run_id": b"run-\xff"})])
    result = run_import(legacy_db, store_db)
    assert result.returncode == 1
    assert "not imported: run-\\xff: column run_id is not valid UTF-8" in result.stderr
    assert "imported 5" in result.stdout
