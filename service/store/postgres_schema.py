"""The PostgreSQL schema, its version in the ``schema_version`` table, and forward migrations.

The tables mirror the SQLite ones: a row per run, and a row per trace step and per history turn
keyed by (run key, position), each item kept as the JSON text it was sent as (``text``, not
``jsonb``, so numbers and key order come back exactly and a read splices text). Identifiers and
items use the "C" collation: run ids then sort byte by byte, as SQLite sorts them, whatever the
database's default collation is.

Every replica migrates at start-up; a transaction-scoped advisory lock makes replicas that start
together take turns, and the one that comes second finds the work done.
"""

from __future__ import annotations

from typing import Final

from psycopg import AsyncConnection

from runstore.client.problems import StoreUnavailable

__all__ = ["MIGRATION_LOCK", "SCHEMA_VERSION", "migrate"]

# An arbitrary 64-bit key, the same in every replica: "runstore" in ASCII.
MIGRATION_LOCK: Final = 0x72756E73746F7265

_V1: Final = (
    """
    CREATE TABLE runs (
        run_id text COLLATE "C" PRIMARY KEY,
        status text COLLATE "C" NOT NULL,
        started_at bigint NOT NULL,
        completed_at bigint,
        version bigint NOT NULL,
        updated_at bigint NOT NULL,
        trace_length integer NOT NULL,
        history_length integer,
        doc text NOT NULL,
        plan text
    )
    """,
    "CREATE INDEX runs_by_start ON runs (started_at DESC, run_id DESC)",
    "CREATE INDEX runs_by_status ON runs (status, started_at DESC, run_id DESC)",
    "CREATE INDEX runs_by_completion ON runs (completed_at) WHERE completed_at IS NOT NULL",
    """
    CREATE TABLE steps (
        run_id text COLLATE "C" NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        idx integer NOT NULL,
        item text COLLATE "C" NOT NULL,
        PRIMARY KEY (run_id, idx)
    )
    """,
    """
    CREATE TABLE turns (
        run_id text COLLATE "C" NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        idx integer NOT NULL,
        item text COLLATE "C" NOT NULL,
        PRIMARY KEY (run_id, idx)
    )
    """,
    "CREATE TABLE probe (id integer PRIMARY KEY CHECK (id = 1), at bigint NOT NULL)",
)

# Every write transaction inserts a row here with a token of its own, so the outcome of a COMMIT
# whose connection was lost is read from the data: a transaction id cannot tell it after crash
# recovery, which may hand a lost transaction's id to another (issue 19). Rows older than a few
# minutes are deleted: an outcome is asked for within seconds.
_V2: Final = (
    "CREATE TABLE commit_marks (token uuid PRIMARY KEY, at bigint NOT NULL)",
    "CREATE INDEX commit_marks_by_age ON commit_marks (at)",
)

# Version 3: what each recent write changed, for the event streams of the other replicas
# (postgres_events): a PATCH's delta (``data``), or a PUT's mark (kind 'run', no data: the run
# itself is read). Each write keeps its run's last EVENTS_KEPT rows (postgres_writes).
_V3: Final = (
    """
    CREATE TABLE run_events (
        run_id text COLLATE "C" NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        version bigint NOT NULL,
        kind text NOT NULL,
        finished boolean NOT NULL,
        data text,
        PRIMARY KEY (run_id, version)
    )
    """,
)

# Version 4, leases (issue 12): columns of the run's row, locked with it by the writes they
# guard and by claims (FOR UPDATE SKIP LOCKED), so no second lock is taken. Adding columns with
# constant defaults rewrites no table (PostgreSQL 11 and later).
_V4: Final = (
    "ALTER TABLE runs ADD COLUMN lease bigint NOT NULL DEFAULT 0",
    'ALTER TABLE runs ADD COLUMN lease_holder text COLLATE "C"',
    "ALTER TABLE runs ADD COLUMN lease_expires_at bigint",
    "ALTER TABLE runs ADD COLUMN lease_ttl_ms integer",
)


def _keyed_by_run(table: str, columns: str, copied: str, key: str = "") -> tuple[str, ...]:
    """``table`` rebuilt with the run's key in place of its id: the rows copied over, the old
    table dropped, the new one and its primary key index renamed to the old names."""
    return (
        f"CREATE TABLE {table}_v5 (run_key bigint NOT NULL{key}, {columns})",
        f"INSERT INTO {table}_v5 (run_key, {copied}) SELECT runs.run_key, "
        + ", ".join(f"{table}.{column.strip()}" for column in copied.split(","))
        + f" FROM {table} JOIN runs USING (run_id) ORDER BY runs.run_key",
        f"DROP TABLE {table}",
        f"ALTER TABLE {table}_v5 RENAME TO {table}",
        f"ALTER INDEX {table}_v5_pkey RENAME TO {table}_pkey",
    )


# Version 5 (issue 14): steps, turns and events keyed by the run's integer key, not by its id
# repeated in every row (a 200-character id made each one-character step cost over 400 bytes, in
# the table and in its index). An identity never gives a key twice, so a run re-created under
# the id of a deleted one never meets rows of the old run still waiting to be purged. Deleting
# the run row no longer cascades to its items: a large run's are purged in bounded batches
# (``deleted_runs`` holds the keys whose items remain, and the positions below which they
# do), so the delete holds no writer for long.
_ITEM_COLUMNS: Final = (
    'idx integer NOT NULL, item text COLLATE "C" NOT NULL, PRIMARY KEY (run_key, idx)'
)
_V5: Final = (
    "ALTER TABLE runs ADD COLUMN run_key bigint GENERATED ALWAYS AS IDENTITY",
    "ALTER TABLE runs ADD CONSTRAINT runs_run_key_key UNIQUE (run_key)",
    *_keyed_by_run("steps", _ITEM_COLUMNS, "idx, item"),
    *_keyed_by_run("turns", _ITEM_COLUMNS, "idx, item"),
    *_keyed_by_run(
        "run_events",
        "version bigint NOT NULL, kind text NOT NULL, finished boolean NOT NULL, data text, "
        "PRIMARY KEY (run_key, version)",
        "version, kind, finished, data",
        " REFERENCES runs (run_key) ON DELETE CASCADE",
    ),
    "CREATE TABLE deleted_runs "
    "(run_key bigint PRIMARY KEY, steps_end integer NOT NULL, turns_end integer NOT NULL)",
)

# MIGRATIONS[n] takes a database from schema version n to n + 1.
MIGRATIONS: Final = (_V1, _V2, _V3, _V4, _V5)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(connection: AsyncConnection[tuple[object, ...]]) -> int:
    """Bring the schema up to SCHEMA_VERSION (creating it on first use); returns the version
    found before. The connection must be in autocommit mode.

    Refuses (StoreUnavailable) a database whose text is not UTF-8, and one whose schema is
    newer than this runstore knows.
    """
    encoding = await _scalar(connection, "SHOW server_encoding")
    if encoding != "UTF8":
        raise StoreUnavailable(
            f"The database's encoding is {encoding}; runstore needs UTF8 "
            "(CREATE DATABASE ... ENCODING 'UTF8')."
        )
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await connection.execute(_VERSION_TABLE)
        found = await _scalar(connection, "SELECT coalesce(max(version), 0) FROM schema_version")
        assert isinstance(found, int)
        if found > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"The database has runstore schema version {found}, newer than this runstore "
                f"({SCHEMA_VERSION}); upgrade runstore."
            )
        for version, statements in enumerate(MIGRATIONS[found:], start=found + 1):
            for statement in statements:
                await connection.execute(statement)
            await connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return found


async def _scalar(connection: AsyncConnection[tuple[object, ...]], sql: str) -> object:
    row = await (await connection.execute(sql)).fetchone()
    assert row is not None
    return row[0]
