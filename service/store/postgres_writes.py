"""The write transactions of the PostgreSQL backend, and their SQL.

Each function runs inside ``BEGIN ... COMMIT`` on one connection in pipeline mode (the store
opens and ends the transaction) and returns its result with the transaction's id, which tells a
lost COMMIT's outcome. A statement whose answer decides what comes next (the locked row) is
fetched at once; the final write is only queued, so it travels with COMMIT, and its errors
surface when the pipeline ends: a failed statement makes PostgreSQL refuse the COMMIT, so nothing
half-done is kept. Rows are locked with ``SELECT ... FOR UPDATE`` before :mod:`.rules` judges
the write, so replicas writing one run take turns and every rule is checked against what the
database holds; this module only locks, reads and writes rows.

Every write also tells the other replicas (and its own) what it changed, in the same statement:
it adds a row to ``run_events`` (a PATCH's delta; a PUT's mark) and calls
``pg_notify('runstore_events', '<runId>:<version>')`` (``'<runId>:deleted'`` for a delete),
which PostgreSQL delivers to every listener when, and only if, the transaction commits. The
payload is never the data: it stays far within NOTIFY's 8000-byte limit (:mod:`.postgres_events`
reads the rest).
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from . import rules
from .base import WriteResult, retention_filter
from .changes import patch_delta
from .records import PatchRecord, SnapshotRecord
from .rules import RunChange, RunState

__all__ = [
    "CHANNEL",
    "EVENTS_KEPT",
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
# The NOTIFY channel of committed writes.
CHANNEL: Final = "runstore_events"
# How many of a run's latest writes keep their event row: a replica further behind than this
# sends its watchers the whole run.
EVENTS_KEPT: Final = 100
_EVENT: Final = f"""
event_written AS (
    INSERT INTO run_events (run_id, version, kind, finished, data)
    SELECT run_id, %(version)s, %(event_kind)s, %(finished)s, %(event_data)s FROM run
), events_cut AS (
    DELETE FROM run_events WHERE run_id = %(run_id)s AND version <= %(version)s - {EVENTS_KEPT}
)"""
_TOLD: Final = f"pg_notify('{CHANNEL}', %(notice)s)"

# A PUT replaces the doc whatever it holds, so only a PATCH reads it.
_LOCK_FOR_PUT: Final = f"SELECT {rules.STATE_COLUMNS}, {XID} FROM runs WHERE run_id = %s FOR UPDATE"
_LOCK_FOR_PATCH: Final = (
    f"SELECT {rules.STATE_COLUMNS}, {XID}, doc FROM runs WHERE run_id = %s FOR UPDATE"
)

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
), {_EVENT}
SELECT {XID}, {_TOLD} FROM run
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
    RETURNING run_id, version
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
), {_EVENT}
SELECT version, {_TOLD} FROM run
"""

_DELETE: Final = f"DELETE FROM runs WHERE run_id = %s RETURNING {rules.STATE_COLUMNS}, {XID}"
_STATE_WIDTH: Final = len(RunState._fields)


def _locked(row: TupleRow | None) -> RunState | None:
    """The state at the head of a row that selects STATE_COLUMNS first."""
    return None if row is None else RunState._make(row[:_STATE_WIDTH])


def _xid(row: TupleRow) -> str:
    """The transaction id that follows STATE_COLUMNS in a row."""
    return str(row[_STATE_WIDTH])


def _values(run_id: str, change: RunChange, patch: PatchRecord | None = None) -> dict[str, Any]:
    """The parameters of _CREATE and _UPDATE for a change the rules accepted (by ``patch``,
    or by a PUT)."""
    state = change.state
    return {
        "event_kind": "run" if patch is None else "patch",
        "event_data": None if patch is None else patch_delta(patch, state.version).decode(),
        "finished": state.completed_at is not None,
        "notice": f"{run_id}:{state.version}",
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
    sql = (
        f"WITH gone AS (DELETE FROM runs {where} RETURNING run_id), "
        f"told AS (SELECT pg_notify('{CHANNEL}', run_id || ':deleted') FROM gone) "
        f"SELECT count(*), {XID} FROM told"
    )

    row = await fetch_one(connection, sql, params)
    return int(row[0]), str(row[1])


_CREATE_RACE_LIMIT: Final = 8


async def put_run(
    connection: Connection, record: SnapshotRecord, if_match: int | None, if_none_match: bool
) -> tuple[WriteResult, str]:
    """PUT: create the run, or replace it under its row lock."""
    run_id = record.run_id
    for _ in range(_CREATE_RACE_LIMIT):
        cursor = await connection.execute(_LOCK_FOR_PUT, (run_id,))
        row = await cursor.fetchone()
        change = rules.put(_locked(row), record, if_match, if_none_match)
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
    connection: Connection, run_id: str, patch: PatchRecord, if_match: int | None
) -> tuple[WriteResult, str]:
    """PATCH: judge the patch against the locked row, then write only what it sends."""
    cursor = await connection.execute(_LOCK_FOR_PATCH, (run_id,))
    row = await cursor.fetchone()
    doc = None if row is None else row[-1]
    change = rules.patch(run_id, _locked(row), doc, patch, if_match)
    assert row is not None
    await connection.execute(_UPDATE, _values(run_id, change, patch))
    return change.result(run_id), _xid(row)


async def delete_run(connection: Connection, run_id: str, if_match: int | None) -> tuple[None, str]:
    """DELETE one run; a refused precondition rolls the delete back."""
    cursor = await connection.execute(_DELETE, (run_id,))
    row = await cursor.fetchone()
    # A refusal raises here, and leaving the transaction rolls the delete back.
    rules.delete(run_id, _locked(row), if_match)
    assert row is not None
    await connection.execute(f"SELECT pg_notify('{CHANNEL}', %s)", (f"{run_id}:deleted",))
    return None, _xid(row)
