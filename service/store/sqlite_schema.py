"""The SQLite schema, its version in ``PRAGMA user_version``, and forward migrations.

Steps and history turns live one row each, keyed by (run key, position), so that appending a
step writes one row and reading a run concatenates stored JSON text in order. The run key is the
runs table's integer primary key; the run id text is kept once, in the run's row.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Final

__all__ = ["SCHEMA_VERSION", "CorruptDatabase", "ForeignDatabase", "connect", "migrate", "verify"]

BUSY_TIMEOUT_MS: Final = 5000

_V1: Final = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    completed_at INTEGER,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    trace_length INTEGER NOT NULL,
    history_length INTEGER,
    doc TEXT NOT NULL,
    plan TEXT
);
CREATE INDEX runs_by_start ON runs (started_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, started_at DESC, run_id DESC);
CREATE INDEX runs_by_completion ON runs (completed_at) WHERE completed_at IS NOT NULL;
CREATE TABLE steps (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE turns (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
"""


# Steps and turns as rowid tables. Clustered by (run, position), as v1 kept them, a group
# commit that appends one step to each of many runs rewrote a page per run; with rowids the new
# rows go to the end of the table and only the small (run, position) index entries scatter.
# That took about a third off the writer's CPU time for a group of 16 PATCHes.
def _as_rowid_table(table: str) -> str:
    return f"""
CREATE TABLE {table}_v2 (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
INSERT INTO {table}_v2 (run_id, idx, item)
    SELECT run_id, idx, item FROM {table} ORDER BY run_id, idx;
DROP TABLE {table};
ALTER TABLE {table}_v2 RENAME TO {table};
"""


_V2: Final = _as_rowid_table("steps") + _as_rowid_table("turns")

# Leases (issue 12): columns of the run's row, so the write they guard reads them with the row it
# reads anyway, in the same transaction, and a claim selects and updates one row.
_V3: Final = """
ALTER TABLE runs ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_holder TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE runs ADD COLUMN lease_ttl_ms INTEGER;
"""

# Version 4 (issue 14): steps and turns keyed by the run's integer key, not by its id repeated in
# every row (a 200-character id made each one-character step cost over 400 bytes, in the table
# and in its index). AUTOINCREMENT: a key is never given again, so a run re-created under the id
# of a deleted one never meets rows of the old run still waiting to be purged. Deleting the run
# row no longer cascades: a large run's items are purged in bounded batches (``deleted_runs``
# holds the keys whose items remain, and the positions below which they do), so the delete
# does not hold the writer for seconds.
_V4: Final = """
CREATE TABLE runs_v4 (
    run_key INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    completed_at INTEGER,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    trace_length INTEGER NOT NULL,
    history_length INTEGER,
    doc TEXT NOT NULL,
    plan TEXT,
    lease INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT,
    lease_expires_at INTEGER,
    lease_ttl_ms INTEGER
);
INSERT INTO runs_v4 (run_id, status, started_at, completed_at, version, updated_at, trace_length,
                     history_length, doc, plan, lease, lease_holder, lease_expires_at,
                     lease_ttl_ms)
    SELECT run_id, status, started_at, completed_at, version, updated_at, trace_length,
           history_length, doc, plan, lease, lease_holder, lease_expires_at, lease_ttl_ms
    FROM runs ORDER BY run_id;
CREATE TABLE steps_v4 (
    run_key INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (run_key, idx)
);
INSERT INTO steps_v4 (run_key, idx, item)
    SELECT runs_v4.run_key, steps.idx, steps.item FROM steps JOIN runs_v4 USING (run_id)
    ORDER BY runs_v4.run_key, steps.idx;
CREATE TABLE turns_v4 (
    run_key INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (run_key, idx)
);
INSERT INTO turns_v4 (run_key, idx, item)
    SELECT runs_v4.run_key, turns.idx, turns.item FROM turns JOIN runs_v4 USING (run_id)
    ORDER BY runs_v4.run_key, turns.idx;
DROP TABLE steps;
DROP TABLE turns;
DROP TABLE runs;
ALTER TABLE runs_v4 RENAME TO runs;
ALTER TABLE steps_v4 RENAME TO steps;
ALTER TABLE turns_v4 RENAME TO turns;
CREATE INDEX runs_by_start ON runs (started_at DESC, run_id DESC);
CREATE INDEX runs_by_status ON runs (status, started_at DESC, run_id DESC);
CREATE INDEX runs_by_completion ON runs (completed_at) WHERE completed_at IS NOT NULL;
CREATE TABLE deleted_runs (
    run_key INTEGER PRIMARY KEY,
    steps_end INTEGER NOT NULL,
    turns_end INTEGER NOT NULL
)
"""

# MIGRATIONS[n] takes a database from user_version n to n + 1.
MIGRATIONS: Final = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class CorruptDatabase(Exception):
    """``PRAGMA quick_check`` found damage; the store refuses to serve the file."""


class ForeignDatabase(sqlite3.DatabaseError):
    """The file holds tables but is no runstore store (such as a legacy ``agent_runs`` file):
    it is not converted into one."""


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection set up as every connection of the store must be."""
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA foreign_keys = ON")
    # FULL: a commit returns after the WAL is fsync'd, so an answered write survives power loss.
    connection.execute("PRAGMA synchronous = FULL")
    # A multi-row statement inside a transaction keeps the pages it changes in a statement
    # journal (to undo itself alone); past 64 KiB SQLite spills that journal to a temporary
    # file created and unlinked on every group commit: a file-system transaction and a copy of
    # each page more per commit. In memory, a commit writes only its WAL frames.
    connection.execute("PRAGMA temp_store = MEMORY")
    if readonly:
        connection.execute("PRAGMA query_only = ON")
    return connection


def _refuse_foreign(connection: sqlite3.Connection) -> None:
    if connection.execute("PRAGMA user_version").fetchone()[0] != 0:
        return
    tables = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    if tables:
        raise ForeignDatabase(
            f"the file is not a runstore store: it has tables ({', '.join(tables[:5])}) "
            "and no runstore schema version"
        )


def _switch_to_wal(connection: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the lock it needs.

    The switch needs an exclusive lock, and when several processes open a new file at once SQLite
    can answer "database is locked" without waiting in the busy handler, so the wait is here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode: str = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            return mode
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def migrate(connection: sqlite3.Connection) -> None:
    """Turn on WAL and bring the schema up to SCHEMA_VERSION (creating it on first open);
    ForeignDatabase, with the file left as it was, if it holds tables of something else."""
    _refuse_foreign(connection)
    mode = _switch_to_wal(connection)
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch the database to WAL (journal_mode={mode})")
    if connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        # Nothing to do, so nothing written: a read-only database still opens and serves reads.
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"the database has schema version {version}, newer than this runstore "
                f"({SCHEMA_VERSION}); upgrade runstore"
            )
        for step in MIGRATIONS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        # Some errors (an interrupt, a full disk) have rolled the transaction back already.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def verify(connection: sqlite3.Connection) -> None:
    """Raise CorruptDatabase unless ``PRAGMA quick_check`` says ok."""
    try:
        rows = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise CorruptDatabase(str(exc)) from exc
    problems = [row[0] for row in rows if row[0] != "ok"]
    if problems:
        raise CorruptDatabase("; ".join(problems[:10]))
