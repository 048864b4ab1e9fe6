"""The write transactions of the PostgreSQL backend, and their SQL.

Each function runs inside ``BEGIN ... COMMIT`` on one connection in pipeline mode (the store
opens and ends the transaction) and returns its result with the transaction's id, which tells a
lost COMMIT's outcome. A statement whose answer decides what comes next (the locked row) is
fetched at once; the final write is only queued, so it travels with COMMIT, and its errors
surface when the pipeline ends: a failed statement makes PostgreSQL refuse the COMMIT, so nothing
half-done is kept. Rows are locked with ``SELECT ... FOR UPDATE`` before :mod:`.rules` judges
the write, so replicas writing one run take turns and every rule is checked against what the
database holds; this module only locks, reads and writes rows.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from . import rules
from .base import ClaimedRun, ClaimQuery, Lease, WriteResult, retention_filter
from .reads import GET_COLUMNS, stored_run
from .records import PatchRecord, SnapshotRecord
from .rules import RunChange, RunState

__all__ = [
    "CLOCK_MS",
    "GET_RUN",
    "NOW_MS",
    "Connection",
    "acquire_lease",
    "claim_run",
    "delete_run",
    "delete_runs",
    "fetch_one",
    "patch_run",
    "put_run",
    "release_lease",
]

Connection = AsyncConnection[TupleRow]

NOW_MS: Final = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
XID: Final = "pg_current_xact_id()::text"
# The store's clock for leases: the database's, read when the statement reaches it (not when
# its transaction began), so replicas with skewed clocks agree. Selected with a locked row, it
# may be read before a wait for the lock; an early "now" only makes a lease look live longer
# and a run orphaned later, and fencing itself goes by lease number, not by time.
CLOCK_MS: Final = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

GET_RUN: Final = f"""
SELECT {GET_COLUMNS},
    (SELECT string_agg(item, ',' ORDER BY idx) FROM steps WHERE run_id = %(run_id)s),
    (SELECT string_agg(item, ',' ORDER BY idx) FROM turns WHERE run_id = %(run_id)s)
FROM runs WHERE run_id = %(run_id)s
"""

# A locked row: the run's state, the transaction id and the clock (STATE_COLUMNS first). A PUT
# replaces the doc whatever it holds, so only a PATCH reads it.
_LOCK: Final = (
    f"SELECT {rules.STATE_COLUMNS}, {XID}, {CLOCK_MS} FROM runs WHERE run_id = %s FOR UPDATE"
)
_LOCK_FOR_PATCH: Final = (
    f"SELECT {rules.STATE_COLUMNS}, {XID}, {CLOCK_MS}, doc FROM runs WHERE run_id = %s FOR UPDATE"
)
_SET_LEASE: Final = """
UPDATE runs SET lease = %(lease)s, lease_holder = %(holder)s, lease_expires_at = %(expires_at)s,
    lease_ttl_ms = %(ttl_ms)s, updated_at = %(now)s
WHERE run_id = %(run_id)s
"""
# One clock value for the choice and the grant; SKIP LOCKED passes over runs other claimers
# (or writers) hold, so concurrent claimers take different runs without waiting on each other.
_CLAIM: Final = f"""
SELECT runs.run_id, runs.updated_at, {", ".join(f"runs.{c}" for c in rules.RunState._fields)},
    {XID}, clock.now
FROM runs, (SELECT {CLOCK_MS} AS now) AS clock
WHERE runs.status = ANY(%(statuses)s)
    AND {rules.ORPHANED_SQL.format(now="clock.now", stale="%(stale)s")}
ORDER BY {rules.CLAIM_ORDER}
LIMIT 1
FOR UPDATE OF runs SKIP LOCKED
"""

# A new run and its items in one statement; nothing is written if another transaction created
# the run first (the caller then locks that run and replaces it).
_CREATE: Final = f"""
WITH run AS (
    INSERT INTO runs (run_id, status, started_at, completed_at, version, updated_at,
                      trace_length, history_length, doc, plan)
    VALUES (%(run_id)s, %(status)s, %(started_at)s, %(completed_at)s, %(version)s, {NOW_MS},
            %(trace_length)s, %(history_length)s, %(doc)s, %(plan)s)
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
), steps_written AS (
    INSERT INTO steps (run_id, idx, item)
    SELECT run.run_id, item.ord - 1, item.text
    FROM run, unnest(%(trace)s::text[]) WITH ORDINALITY AS item (text, ord)
), turns_written AS (
    INSERT INTO turns (run_id, idx, item)
    SELECT run.run_id, item.ord - 1, item.text
    FROM run, unnest(%(history)s::text[]) WITH ORDINALITY AS item (text, ord)
)
SELECT {XID} FROM run
"""

# An update of a locked run. Items from *_from on are upserted (unchanged ones are not
# rewritten) and items from *_end on are cut. A NULL doc keeps the stored one, so a PATCH that
# sends no field does not rewrite it: its cost stays that of what it sends.
_UPDATE: Final = f"""
WITH run AS (
    UPDATE runs SET
        status = %(status)s,
        started_at = %(started_at)s,
        completed_at = %(completed_at)s,
        doc = coalesce(%(doc)s, doc),
        plan = CASE WHEN %(set_plan)s THEN %(plan)s::text ELSE plan END,
        trace_length = %(trace_length)s,
        history_length = %(history_length)s,
        updated_at = {NOW_MS},
        version = %(version)s
    WHERE run_id = %(run_id)s
    RETURNING version
), steps_written AS (
    INSERT INTO steps (run_id, idx, item)
    SELECT %(run_id)s, %(trace_from)s + item.ord - 1, item.text
    FROM unnest(%(trace)s::text[]) WITH ORDINALITY AS item (text, ord)
    ON CONFLICT (run_id, idx) DO UPDATE SET item = excluded.item
    WHERE steps.item <> excluded.item
), steps_cut AS (
    DELETE FROM steps WHERE run_id = %(run_id)s AND idx >= %(trace_end)s
), turns_written AS (
    INSERT INTO turns (run_id, idx, item)
    SELECT %(run_id)s, %(history_from)s + item.ord - 1, item.text
    FROM unnest(%(history)s::text[]) WITH ORDINALITY AS item (text, ord)
    ON CONFLICT (run_id, idx) DO UPDATE SET item = excluded.item
    WHERE turns.item <> excluded.item
), turns_cut AS (
    DELETE FROM turns WHERE run_id = %(run_id)s AND idx >= %(history_end)s
)
SELECT version FROM run
"""

_DELETE: Final = (
    f"DELETE FROM runs WHERE run_id = %s RETURNING {rules.STATE_COLUMNS}, {XID}, {CLOCK_MS}"
)
_STATE_WIDTH: Final = len(RunState._fields)


def _locked(row: TupleRow | None) -> RunState | None:
    """The state at the head of a row that selects STATE_COLUMNS first."""
    return None if row is None else RunState._make(row[:_STATE_WIDTH])


def _xid(row: TupleRow) -> str:
    """The transaction id that follows STATE_COLUMNS in a row."""
    return str(row[_STATE_WIDTH])


def _now(row: TupleRow | None) -> int:
    """The clock that follows the transaction id in a row (0 for no row: no lease to judge)."""
    return 0 if row is None else int(row[_STATE_WIDTH + 1])


def _values(run_id: str, change: RunChange) -> dict[str, Any]:
    """The parameters of _CREATE and _UPDATE for a change the rules accepted."""
    state = change.state
    return {
        "run_id": run_id,
        "version": state.version,
        "status": state.status,
        "started_at": state.started_at,
        "completed_at": state.completed_at,
        "trace_length": state.trace_length,
        "history_length": state.history_length,
        "doc": change.doc,
        "set_plan": change.set_plan,
        "plan": change.plan,
        "trace": change.trace,
        "trace_from": change.trace_from,
        "trace_end": state.trace_length,
        "history": change.history,
        "history_from": change.history_from,
        # A cleared history (None) keeps no turn.
        "history_end": state.history_length or 0,
    }


async def fetch_one(connection: Connection, sql: str, params: Any) -> TupleRow:
    """The one row a statement returns."""
    cursor = await connection.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return row


async def delete_runs(
    connection: Connection, completed_before: int | None, started_before: int | None
) -> tuple[int, str]:
    """Bulk retention: delete every run matching all the given bounds; returns how many."""
    where, params = retention_filter(completed_before, started_before, "%s")
    sql = f"WITH gone AS (DELETE FROM runs {where} RETURNING 1) SELECT count(*), {XID} FROM gone"

    row = await fetch_one(connection, sql, params)
    return int(row[0]), str(row[1])


_CREATE_RACE_LIMIT: Final = 8


async def put_run(
    connection: Connection,
    record: SnapshotRecord,
    if_match: int | None,
    if_none_match: bool,
    lease: int | None,
) -> tuple[WriteResult, str]:
    """PUT: create the run, or replace it under its row lock."""
    run_id = record.run_id
    for _ in range(_CREATE_RACE_LIMIT):
        cursor = await connection.execute(_LOCK, (run_id,))
        row = await cursor.fetchone()
        change = rules.put(_locked(row), record, if_match, if_none_match, lease, _now(row))
        if row is not None:
            break
        cursor = await connection.execute(_CREATE, _values(run_id, change))
        created = await cursor.fetchone()
        if created is not None:
            return change.result(run_id), str(created[0])
        # Another transaction created the run after the lock found nothing: lock that one.
    else:
        raise psycopg.errors.SerializationFailure("the run was created and deleted repeatedly")
    # The row is locked: no other write can come between, so the new version is the rules'.
    await connection.execute(_UPDATE, _values(run_id, change))
    return change.result(run_id), _xid(row)


async def patch_run(
    connection: Connection,
    run_id: str,
    patch: PatchRecord,
    if_match: int | None,
    lease: int | None,
) -> tuple[WriteResult, str]:
    """PATCH: judge the patch against the locked row, then write only what it sends."""
    cursor = await connection.execute(_LOCK_FOR_PATCH, (run_id,))
    row = await cursor.fetchone()
    doc = None if row is None else row[-1]
    change = rules.patch(run_id, _locked(row), doc, patch, if_match, lease, _now(row))
    assert row is not None
    await connection.execute(_UPDATE, _values(run_id, change))
    return change.result(run_id), _xid(row)


async def delete_run(
    connection: Connection, run_id: str, if_match: int | None, lease: int | None
) -> tuple[None, str]:
    """DELETE one run; a refused precondition rolls the delete back."""
    cursor = await connection.execute(_DELETE, (run_id,))
    row = await cursor.fetchone()
    # A refusal raises here, and leaving the transaction rolls the delete back.
    rules.delete(run_id, _locked(row), if_match, lease, _now(row))
    assert row is not None
    return None, _xid(row)


def _lease_values(run_id: str, state: rules.RunState, now: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "lease": state.lease,
        "holder": state.lease_holder,
        "expires_at": state.lease_expires_at,
        "ttl_ms": state.lease_ttl_ms,
        "now": now,
    }


async def acquire_lease(
    connection: Connection, run_id: str, holder: str, ttl_ms: int, lease: int | None
) -> tuple[Lease, str]:
    """Take or renew a lease under the run's row lock."""
    cursor = await connection.execute(_LOCK, (run_id,))
    row = await cursor.fetchone()
    now = _now(row)
    state, granted = rules.acquire(run_id, _locked(row), holder, ttl_ms, lease, now)
    assert row is not None
    await connection.execute(_SET_LEASE, _lease_values(run_id, state, now))
    return granted, _xid(row)


async def release_lease(connection: Connection, run_id: str, lease: int) -> tuple[None, str]:
    """End a lease now, under the run's row lock."""
    cursor = await connection.execute(_LOCK, (run_id,))
    row = await cursor.fetchone()
    now = _now(row)
    state = rules.release(run_id, _locked(row), lease, now)
    assert row is not None
    await connection.execute(_SET_LEASE, _lease_values(run_id, state, now))
    return None, _xid(row)


async def claim_run(
    connection: Connection, query: ClaimQuery
) -> tuple[ClaimedRun | None, str | None]:
    """Lock the orphaned run that has waited longest (skipping locked ones), grant the lease;
    no transaction id when no run qualifies (nothing is written)."""
    cursor = await connection.execute(
        _CLAIM, {"statuses": list(query.statuses), "stale": query.stale_after_ms}
    )
    row = await cursor.fetchone()
    if row is None:
        return None, None
    run_id, updated_at, rest = row[0], row[1], row[2:]
    now = int(rest[_STATE_WIDTH + 1])
    state, lease = rules.claim(
        run_id,
        RunState._make(rest[:_STATE_WIDTH]),
        updated_at,
        query.holder,
        query.ttl_ms,
        query.stale_after_ms,
        now,
    )
    cursor = await connection.execute(GET_RUN, {"run_id": run_id})
    run = stored_run(await cursor.fetchone())
    assert run is not None
    await connection.execute(_SET_LEASE, _lease_values(run_id, state, now))
    return ClaimedRun(run, lease), str(rest[_STATE_WIDTH])
