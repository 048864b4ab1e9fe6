"""The run-key migration (issue 14): steps, turns and events keyed by the run's integer key.

A file (SQLite schema 3) and a database (PostgreSQL schema 4) written by the version before,
holding runs with items, history, a lease, a 200-character id and events, are opened by this
runstore: every run reads back as the old schema read it, every row keeps its values, writes go
on, the version moves on once, a second opening changes nothing, and a migration that fails or
is killed half-way leaves the old database as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import make_snapshot
from test_postgres_store import empty_database, query

from runstore.client.problems import StoreUnavailable
from runstore.service.store import RunQuery, RunStore, SQLiteStore
from runstore.service.store.postgres import PostgresStore
from runstore.service.store.postgres_schema import MIGRATIONS as PG_MIGRATIONS
from runstore.service.store.reads import stored_run
from runstore.service.store.records import patch_record, snapshot_record
from runstore.service.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from runstore.service.store.sqlite_schema import connect, migrate

pytestmark = pytest.mark.anyio
__all__ = ["empty_database"]  # a fixture, imported for the tests below

SQLITE_BEFORE = 3
PG_BEFORE = 4
LONG_ID = "r" * 200

# How the schema before read a run (reads.GET_COLUMNS, then the items joined).
SQLITE_OLD_GET = """
SELECT version, doc, plan, history_length,
    (SELECT group_concat(item, ',') FROM (SELECT item FROM steps WHERE run_id = ?1 ORDER BY idx)),
    (SELECT group_concat(item, ',') FROM (SELECT item FROM turns WHERE run_id = ?1 ORDER BY idx))
FROM runs WHERE run_id = ?1
"""
PG_OLD_GET = """
SELECT version, doc, plan, history_length,
    (SELECT string_agg(item, ',' ORDER BY idx) FROM steps WHERE run_id = %(run_id)s),
    (SELECT string_agg(item, ',' ORDER BY idx) FROM turns WHERE run_id = %(run_id)s)
FROM runs WHERE run_id = %(run_id)s
"""
# The runs' rows, the same columns in either schema.
RUN_ROWS = (
    "SELECT run_id, status, started_at, completed_at, version, updated_at, trace_length, "
    "history_length, doc, plan, lease, lease_holder, lease_expires_at, lease_ttl_ms "
    "FROM runs ORDER BY run_id"
)
# The old schema's rows, as the old schema wrote them.
OLD_RUN_INSERT = (
    "INSERT INTO runs (run_id, status, started_at, completed_at, version, updated_at, "
    "trace_length, history_length, doc, plan, lease, lease_holder, lease_expires_at, "
    "lease_ttl_ms) VALUES ({})"
)


def old_runs() -> list[tuple[tuple[Any, ...], list[str], list[str] | None]]:
    """The runs the old database holds: each run's row values (for OLD_RUN_INSERT), its steps
    and its turns."""
    first = make_snapshot("first", steps=4) | {"history": [{"role": "user", "content": "hi"}]}
    first["trace"][3] = {"n": 3}
    snapshots = [
        (first, 2, (3, "w1", 4_000_000_000_000, 60_000)),
        (make_snapshot("second", steps=2, plan={"steps": ["a", "b"]}), 1, (0, None, None, None)),
        (make_snapshot(LONG_ID, steps=50) | {"history": []}, 7, (1, "w2", 1, 5_000)),
        (
            make_snapshot("done", status="completed", completedAt=1_700_000_500_000),
            1,
            (0, None, None, None),
        ),
    ]
    runs = []
    for snapshot, version, lease in snapshots:
        record = snapshot_record(snapshot)
        history = record.history
        values = (
            record.run_id,
            record.status,
            record.started_at,
            record.completed_at,
            version,
            1_700_000_900_000 + version,
            len(record.trace),
            None if history is None else len(history),
            record.doc,
            record.plan,
            *lease,
        )
        runs.append((values, record.trace, history))
    return runs


def sqlite_before(path: Path) -> None:
    """A file at schema 3 with the old runs, as that version left it."""
    connection = connect(str(path))
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("BEGIN IMMEDIATE")
    for step in SQLITE_MIGRATIONS[:SQLITE_BEFORE]:
        for statement in step.split(";"):
            if statement.strip():
                connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {SQLITE_BEFORE}")
    for values, trace, history in old_runs():
        connection.execute(OLD_RUN_INSERT.format(", ".join("?" * len(values))), values)
        for table, items in (("steps", trace), ("turns", history or [])):
            connection.executemany(
                f"INSERT INTO {table} (run_id, idx, item) VALUES (?, ?, ?)",
                [(values[0], index, item) for index, item in enumerate(items)],
            )
    connection.execute("COMMIT")
    connection.close()


def sqlite_reads(path: Path) -> dict[str, Any]:
    """Each run as the old schema reads it, and the runs' rows; read with the old SQL."""
    connection = sqlite3.connect(path)
    try:
        ids = [row[0] for row in connection.execute("SELECT run_id FROM runs")]
        return {
            "runs": {
                run_id: stored_run(connection.execute(SQLITE_OLD_GET, (run_id,)).fetchone())
                for run_id in ids
            },
            "rows": connection.execute(RUN_ROWS).fetchall(),
        }
    finally:
        connection.close()


def sqlite_dump(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


async def check_migrated(store: RunStore, before: dict[str, Any]) -> None:
    """The runs read back as before, and writes go on."""
    for run_id, run in before["runs"].items():
        assert await store.get_run(run_id) == run, run_id
    page = await store.list_runs(RunQuery())
    assert len(page.summaries) == len(before["runs"])
    step = patch_record({"trace": [{"n": 4}], "traceFrom": 4})
    assert (await store.patch_run("first", step, lease=3)).trace_length == 5
    await store.delete_run("second")
    # A run re-created under a deleted id holds only what it was given.
    await store.put_run(snapshot_record(make_snapshot("second", steps=1)))
    again = await store.get_run("second")
    assert again is not None
    assert again.version == 1
    assert b'"trace":[{"step":0,"output":"result 0"}]' in again.body
    await store.put_run(snapshot_record(make_snapshot("new", steps=3)))
    assert (await store.patch_run(LONG_ID, patch_record({"status": "failed"}))).version == 8


async def test_a_sqlite_file_of_schema_3_is_migrated_with_every_run_identical(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    sqlite_before(path)
    before = sqlite_reads(path)
    async with SQLiteStore(path) as store:
        # The rows, leases included, are as they were; then writes go on.
        connection = sqlite3.connect(path)
        assert connection.execute(RUN_ROWS).fetchall() == before["rows"]
        connection.close()
        await check_migrated(store, before)
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone() == (len(SQLITE_MIGRATIONS),)
    assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    columns = [row[1] for row in connection.execute("PRAGMA table_info(steps)")]
    assert columns == ["run_key", "idx", "item"]
    connection.close()


async def test_opening_a_migrated_file_again_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    sqlite_before(path)
    async with SQLiteStore(path):
        pass
    migrated = hashlib.sha256(path.read_bytes()).hexdigest()
    async with SQLiteStore(path) as store:
        assert await store.get_run("first") is not None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == migrated


def progress_calls(path: Path) -> int:
    """How many times the migration of a copy of ``path`` calls a progress handler."""
    copy = path.with_name("count.db")
    shutil.copy(path, copy)
    connection = connect(str(copy))
    calls = 0

    def count() -> int:
        nonlocal calls
        calls += 1
        return 0

    connection.set_progress_handler(count, 100)
    migrate(connection)
    connection.close()
    return calls


_KILLED_HALF_WAY = """
import os, signal, sys
from runstore.service.store.sqlite_schema import connect, migrate
connection = connect(sys.argv[1])
calls = 0
def kill_at_half():
    global calls
    calls += 1
    if calls == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return 0
connection.set_progress_handler(kill_at_half, 100)
migrate(connection)
"""


@pytest.mark.parametrize("how", ["error", "killed"])
async def test_a_sqlite_migration_stopped_half_way_leaves_the_old_file_intact(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "v3.db"
    sqlite_before(path)
    dump = sqlite_dump(path)
    half = progress_calls(path) // 2
    assert half > 10  # the migration is long enough to stop in its middle
    if how == "error":
        connection = connect(str(path))
        calls = 0

        def abort_at_half() -> int:
            nonlocal calls
            calls += 1
            return int(calls >= half)

        connection.set_progress_handler(abort_at_half, 100)
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            migrate(connection)
        connection.close()
    else:
        killed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", textwrap.dedent(_KILLED_HALF_WAY), str(path), str(half)],
            check=False,
        )
        assert killed.returncode == -signal.SIGKILL
    assert sqlite_dump(path) == dump
    # The next opening migrates it.
    before = sqlite_reads(path)
    async with SQLiteStore(path) as store:
        await check_migrated(store, before)


# PostgreSQL.


@pytest.fixture
def database_before(request: pytest.FixtureRequest) -> str:
    """A PostgreSQL database at schema 4 with the old runs and their events."""
    url: str = request.getfixturevalue("empty_database")
    query(
        url,
        "CREATE TABLE schema_version (version integer PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())",
    )
    for version, statements in enumerate(PG_MIGRATIONS[:PG_BEFORE], start=1):
        for statement in statements:
            query(url, statement)
        query(url, "INSERT INTO schema_version (version) VALUES (%s)", (version,))
    for values, trace, history in old_runs():
        query(url, OLD_RUN_INSERT.format(", ".join(["%s"] * len(values))), values)
        for table, items in (("steps", trace), ("turns", history or [])):
            for index, item in enumerate(items):
                query(
                    url,
                    f"INSERT INTO {table} (run_id, idx, item) VALUES (%s, %s, %s)",
                    (values[0], index, item),
                )
        query(
            url,
            "INSERT INTO run_events (run_id, version, kind, finished, data) "
            "VALUES (%s, %s, 'patch', false, %s)",
            (values[0], values[4], '{"v":1}'),
        )
    return url


PG_EVENTS_BEFORE = "SELECT run_id, version, kind, finished, data FROM run_events ORDER BY 1, 2"
PG_EVENTS_AFTER = (
    "SELECT run_id, run_events.version, kind, finished, data "
    "FROM run_events JOIN runs USING (run_key) ORDER BY 1, 2"
)


def pg_reads(url: str) -> dict[str, Any]:
    ids = [row[0] for row in query(url, "SELECT run_id FROM runs")]
    return {
        "runs": {
            run_id: stored_run(query(url, PG_OLD_GET, {"run_id": run_id})[0]) for run_id in ids
        },
        "rows": query(url, RUN_ROWS),
        "events": query(url, PG_EVENTS_BEFORE),
    }


def pg_schema(url: str) -> list[tuple[Any, ...]]:
    """The schema's versions (with when each was applied) and the tables' identities."""
    return query(url, "SELECT version, applied_at FROM schema_version ORDER BY 1") + query(
        url,
        "SELECT relname, oid::bigint FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "ORDER BY 1",
    )


@pytest.mark.postgres
async def test_a_postgres_database_of_schema_4_is_migrated_with_every_run_identical(
    database_before: str,
) -> None:
    before = pg_reads(database_before)
    async with PostgresStore(database_before) as store:
        assert query(database_before, RUN_ROWS) == before["rows"]
        assert query(database_before, PG_EVENTS_AFTER) == before["events"]
        await check_migrated(store, before)
    versions = query(database_before, "SELECT version FROM schema_version ORDER BY 1")
    assert versions == [(version,) for version in range(1, len(PG_MIGRATIONS) + 1)]
    columns = query(
        database_before,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'steps' "
        "ORDER BY ordinal_position",
    )
    assert columns == [("run_key",), ("idx",), ("item",)]
    # Opening again changes nothing.
    schema = pg_schema(database_before)
    rows = query(database_before, RUN_ROWS)
    async with PostgresStore(database_before):
        pass
    assert pg_schema(database_before) == schema
    assert query(database_before, RUN_ROWS) == rows


@pytest.mark.postgres
async def test_a_postgres_migration_that_fails_leaves_the_old_database_intact(
    database_before: str,
) -> None:
    before = pg_reads(database_before)
    schema = pg_schema(database_before)
    # A table in the way of the migration's last statement: it fails after all the others.
    query(database_before, "CREATE TABLE deleted_runs (in_the_way integer)")
    with pytest.raises(StoreUnavailable, match="deleted_runs"):
        async with PostgresStore(database_before, startup_timeout=5):
            pass
    query(database_before, "DROP TABLE deleted_runs")
    assert pg_schema(database_before) == schema
    assert pg_reads(database_before) == before
    async with PostgresStore(database_before) as store:
        await check_migrated(store, before)
