"""The write transactions of the PostgreSQL backend, and their SQL.

Each function runs inside ``BEGIN ... COMMIT`` on one connection in pipeline mode (the store
opens and ends the transaction) and returns its result with the transaction's id, which tells a
lost COMMIT's outcome. A statement whose answer decides what comes next (the locked row) is
fetched at once; the final write is only queued, so it travels with COMMIT, and its errors
surface when the pipeline ends: a failed statement makes PostgreSQL refuse the COMMIT, so nothing
half-done is kept. Rows are locked with ``SELECT ... FOR UPDATE`` before any rule is judged, so
replicas writing one run take turns and every rule is checked against what the database holds.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from runstore.client.problems import PreconditionFailed, RunNotFound, StaleWrite, TraceGap

from .base import WriteResult, retention_filter
from .records import PatchRecord, SnapshotRecord, merge_doc

__all__ = [
    "NOW_MS",
    "Connection",
    "delete_run",
    "delete_runs",
    "fetch_one",
    "patch_run",
    "put_run",
]

Connection = AsyncConnection[TupleRow]

NOW_MS: Final = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
XID: Final = "pg_current_xact_id()::text"

_LOCK_FOR_PUT: Final = (
    f"SELECT version, completed_at, trace_length, history_length, {XID} FROM runs "
    "WHERE run_id = %s FOR UPDATE"
)
_LOCK_FOR_PATCH: Final = (
    "SELECT version, completed_at, trace_length, history_length, status, started_at, doc, "
    f"{XID} FROM runs WHERE run_id = %s FOR UPDATE"
)

# A new run and its items in one statement; nothing is written if another transaction created
# the run first (the caller then locks that run and replaces it).
_CREATE: Final = f"""
WITH run AS (
    INSERT INTO runs (run_id, status, started_at, completed_at, version, updated_at,
                      trace_length, history_length, doc, plan)
    VALUES (%(run_id)s, %(status)s, %(started_at)s, %(completed_at)s, 1, {NOW_MS},
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
        version = version + 1
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

_DELETE: Final = f"DELETE FROM runs WHERE run_id = %s RETURNING version, {XID}"


def _check_version(stored: int, if_match: int | None) -> None:
    if if_match is not None and if_match != stored:
        raise PreconditionFailed(
            f"The run is at version {stored}, not {if_match}; read it again before writing."
        )


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
    connection: Connection, record: SnapshotRecord, if_match: int | None, if_none_match: bool
) -> tuple[WriteResult, str]:
    """PUT: create the run, or replace it under its row lock (RunStore.put_run's rules)."""
    run_id = record.run_id
    trace_length = len(record.trace)
    history_length = None if record.history is None else len(record.history)
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": record.status,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "trace_length": trace_length,
        "history_length": history_length,
        "doc": record.doc,
        "set_plan": True,
        "plan": record.plan,
        "trace": record.trace,
        "trace_from": 0,
        "trace_end": trace_length,
        "history": record.history or [],
        "history_from": 0,
        "history_end": history_length or 0,
    }
    for _ in range(_CREATE_RACE_LIMIT):
        cursor = await connection.execute(_LOCK_FOR_PUT, (run_id,))
        row = await cursor.fetchone()
        if row is not None:
            break
        if if_match is not None:
            raise PreconditionFailed("The run does not exist, so no version can match If-Match.")
        cursor = await connection.execute(_CREATE, values)
        created = await cursor.fetchone()
        if created is not None:
            return WriteResult(run_id, 1, trace_length, created=True), str(created[0])
        # Another transaction created the run after the lock found nothing: lock that one.
    else:
        raise psycopg.errors.SerializationFailure("the run was created and deleted repeatedly")
    version, stored_completed_at, stored_trace_length, _, xid = row
    if if_none_match:
        raise PreconditionFailed("The run exists already (If-None-Match: *).")
    _check_version(version, if_match)
    if if_match is None:
        if stored_completed_at is not None and record.completed_at is None:
            raise StaleWrite("The run is finished; a write without completedAt would un-finish it.")
        if trace_length < stored_trace_length:
            raise StaleWrite(
                f"The stored trace has {stored_trace_length} steps; this write has {trace_length}."
            )
    await connection.execute(_UPDATE, values)
    # The row is locked: no other write can come between, so the new version is known.
    return WriteResult(run_id, version + 1, trace_length), str(xid)


async def patch_run(
    connection: Connection, run_id: str, patch: PatchRecord, if_match: int | None
) -> tuple[WriteResult, str]:
    """PATCH: judge the patch against the locked row, then write only what it sends."""
    cursor = await connection.execute(_LOCK_FOR_PATCH, (run_id,))
    row = await cursor.fetchone()
    if row is None:
        raise RunNotFound(f"No run is stored under {run_id!r}; PUT it first.")
    version, completed_at, trace_length, history_length, status, started_at, doc, xid = row
    _check_version(version, if_match)
    new_trace_length = trace_length
    if patch.trace is not None:
        if patch.trace_from > trace_length:
            raise TraceGap(
                f"traceFrom is {patch.trace_from} but the stored trace has {trace_length} steps."
            )
        new_trace_length = patch.trace_from + len(patch.trace)
    new_history_length = history_length
    if patch.history is not None:
        if patch.history_from > (history_length or 0):
            raise TraceGap(
                f"historyFrom is {patch.history_from} but the stored history has "
                f"{history_length or 0} turns."
            )
        new_history_length = patch.history_from + len(patch.history)
    elif patch.clear_history:
        new_history_length = None
    if if_match is None:
        if patch.clears_completed_at and completed_at is not None:
            raise StaleWrite("The run is finished; clearing completedAt would un-finish it.")
        if new_trace_length < trace_length:
            raise StaleWrite(
                f"The stored trace has {trace_length} steps; this write would leave "
                f"{new_trace_length}."
            )
    new_doc: str | None = None
    if patch.fields:
        new_doc, merged = merge_doc(doc, patch.fields)
        status, started_at = merged["status"], merged["startedAt"]
        completed_at = merged.get("completedAt")
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "started_at": started_at,
        "completed_at": completed_at,
        "trace_length": new_trace_length,
        "history_length": new_history_length,
        "doc": new_doc,
        "set_plan": patch.set_plan,
        "plan": patch.plan,
        "trace": patch.trace or [],
        "trace_from": patch.trace_from if patch.trace is not None else 0,
        # Without a trace in the patch this is the stored length, so nothing is cut.
        "trace_end": new_trace_length,
        "history": patch.history or [],
        "history_from": patch.history_from if patch.history is not None else 0,
        # Unless the patch changes the history, its new length is the stored one: nothing cut.
        "history_end": new_history_length or 0,
    }
    await connection.execute(_UPDATE, values)
    return WriteResult(run_id, version + 1, new_trace_length), str(xid)


async def delete_run(connection: Connection, run_id: str, if_match: int | None) -> tuple[None, str]:
    """DELETE one run; a refused precondition rolls the delete back."""
    cursor = await connection.execute(_DELETE, (run_id,))
    row = await cursor.fetchone()
    if row is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    # A refused precondition raises here, and leaving the transaction rolls the delete back.
    _check_version(int(row[0]), if_match)
    return None, str(row[1])
