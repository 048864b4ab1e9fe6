"""The SQLite schema: created at the current version, migrated forward from older files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from support import make_snapshot

from runstore.service.store.records import patch_record, snapshot_record
from runstore.service.store.sqlite import SQLiteEngine
from runstore.service.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate


def _table_sql(connection: sqlite3.Connection, name: str) -> str:
    (sql,) = connection.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return str(sql)


def old_database(path: Path, version: int) -> None:
    """A file as runstore with schema ``version`` left it, holding two runs, written as that
    version wrote rows (the columns of version 1, which later versions only add to)."""
    connection = connect(str(path))
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("BEGIN IMMEDIATE")
    for step in MIGRATIONS[:version]:
        for statement in step.split(";"):
            if statement.strip():
                connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {version}")
    first = make_snapshot("first", steps=4) | {"history": [{"role": "user", "content": "hi"}]}
    first["trace"][3] = {"n": 3}
    for snapshot, version_of_run in ((first, 2), (make_snapshot("second", steps=2), 1)):
        record = snapshot_record(snapshot)
        history = record.history
        connection.execute(
            "INSERT INTO runs (run_id, status, started_at, completed_at, version, updated_at, "
            "trace_length, history_length, doc, plan) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?)",
            (
                record.run_id,
                record.status,
                record.started_at,
                record.completed_at,
                version_of_run,
                len(record.trace),
                None if history is None else len(history),
                record.doc,
                record.plan,
            ),
        )
        for table, items in (("steps", record.trace), ("turns", history or [])):
            connection.executemany(
                f"INSERT INTO {table} (run_id, idx, item) VALUES (?, ?, ?)",
                [(record.run_id, index, item) for index, item in enumerate(items)],
            )
    connection.execute("COMMIT")
    connection.close()


def _v1_database(path: Path) -> None:
    """A file as runstore with schema version 1 left it, holding two runs."""
    old_database(path, 1)


def test_a_new_database_is_created_at_the_current_version(tmp_path: Path) -> None:
    connection = connect(str(tmp_path / "new.db"))
    migrate(connection)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    for table in ("steps", "turns"):
        assert "WITHOUT ROWID" not in _table_sql(connection, table).upper()
    connection.close()


def test_a_version_1_database_is_migrated_with_every_run_intact(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_database(path)
    with sqlite3.connect(path) as before:
        assert "WITHOUT ROWID" in _table_sql(before, "steps").upper()
    before.close()

    with SQLiteEngine(path) as engine:
        first = engine.get_run("first")
        second = engine.get_run("second")
        assert first is not None
        assert second is not None
        snapshot = json.loads(first.body)
        assert snapshot["trace"][-1] == {"n": 3}
        assert len(snapshot["trace"]) == 4
        assert snapshot["history"] == [{"role": "user", "content": "hi"}]
        assert first.version == 2
        assert len(json.loads(second.body)["trace"]) == 2
        # The migrated tables keep their rules: positions are unique, a run's rows go with it.
        engine.patch_run("second", patch_record({"trace": [{"n": 9}], "traceFrom": 1}))
        assert json.loads(engine.get_run("second").body)["trace"][1:] == [{"n": 9}]  # type: ignore[union-attr]
        engine.delete_run("first")

    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    # Only the second run's rows are left.
    assert connection.execute("SELECT count(*) FROM steps").fetchone() == (2,)
    assert connection.execute("SELECT count(*) FROM turns").fetchone() == (0,)
    assert connection.execute("SELECT count(*) FROM deleted_runs").fetchone() == (0,)
    for table in ("steps", "turns"):
        assert "WITHOUT ROWID" not in _table_sql(connection, table).upper()
    connection.close()


def test_a_database_from_a_newer_runstore_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    connection = connect(str(path))
    migrate(connection)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer than this runstore"):
        SQLiteEngine(path)
