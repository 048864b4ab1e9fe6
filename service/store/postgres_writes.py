"""The write transactions of the PostgreSQL backend, and their SQL.

A replica's concurrent writes are applied as a group in one transaction (:func:`apply_group`),
run by the store inside ``BEGIN ... COMMIT`` on one connection in pipeline mode. The group's
rows are locked with one ``SELECT ... FOR UPDATE`` in run id order (so replicas whose groups
share runs take turns and never deadlock), and that is the only answer waited for: each write is
then judged by :mod:`.rules` against the locked state as the group has left it, and what it
writes only queued, so every write of the group travels with COMMIT in one round trip. The
group's PUTs and PATCHes are written with a statement or two whatever their number
(:mod:`.postgres_batch`); deletes and leases with one statement each. A write the rules refuse
writes nothing and its neighbours go on; writes to one run in a group see each other, as if
they had run one after another. A failed statement makes PostgreSQL refuse the COMMIT, so
nothing half-done is kept. This module only locks, reads and writes rows.

Every accepted write also tells the other replicas (and its own) what it changed, in the
statement that writes it: it adds a row to ``run_events`` (a PATCH's delta; a PUT's mark), cuts
its run's rows to the last :data:`EVENTS_KEPT`, and calls
``pg_notify('runstore_events', '<runId>:<version>')`` (``'<runId>:deleted'`` for a delete).
PostgreSQL delivers a transaction's notices to every listener when, and only if, it commits, so
a group's notices go out together with its COMMIT and a refused write sends none. The payload is
never the data: it stays far within NOTIFY's 8000-byte limit (:mod:`.postgres_events` reads the
rest). PostgreSQL sends identical notices of one transaction once, where first sent: a group
that creates a run, deletes it and creates it again (version 1 both times) ends its notices
with the delete, though the run exists; such a group is rare and left so for now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from runstore.client.problems import RunStoreError

from . import rules
from .base import (
    PURGE_BATCH_ROWS,
    RETENTION_BATCH_ROWS,
    ClaimedRun,
    ClaimQuery,
    Lease,
    WriteResult,
    retention_batch,
    retention_candidates_sql,
    retention_filter,
)
from .postgres_batch import CHANNEL, EVENTS_KEPT, NOW_MS, RunRows
from .reads import GET_COLUMNS, stored_run
from .records import PatchRecord, SnapshotRecord
from .rules import RunState

__all__ = [
    "CHANNEL",
    "CLOCK_MS",
    "EVENTS_KEPT",
    "GET_RUN",
    "NOW_MS",
    "AcquireLease",
    "Connection",
    "DeleteRun",
    "Outcome",
    "PatchRun",
    "PutRun",
    "ReleaseLease",
    "Write",
    "apply_group",
    "claim_run",
    "delete_runs_batch",
    "fetch_one",
    "purge_batch",
]

Connection = AsyncConnection[TupleRow]

_TOLD_DELETED: Final = f"pg_notify('{CHANNEL}', run_id || ':deleted')"

# The store's clock for leases: the database's, read when the statement reaches it (not when
# its transaction began), so replicas with skewed clocks agree. Read with the group's lock, it
# may be read before a wait for a lock; an early "now" only makes a lease look live longer and
# a run orphaned later, and fencing itself goes by lease number, not by time.
CLOCK_MS: Final = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

GET_RUN: Final = f"""
SELECT {GET_COLUMNS},
    (SELECT string_agg(item, ',' ORDER BY idx) FROM steps WHERE steps.run_key = runs.run_key),
    (SELECT string_agg(item, ',' ORDER BY idx) FROM turns WHERE turns.run_key = runs.run_key)
FROM runs WHERE run_id = %(run_id)s
"""

# The group's runs, locked in run id order, with the clock. A PUT replaces the doc whatever it
# holds, so only the runs a PATCH writes bring theirs.
_LOCK: Final = f"""
SELECT run_id, {rules.STATE_COLUMNS}, CASE WHEN run_id = ANY(%(patched)s) THEN doc END,
    {CLOCK_MS}
FROM runs WHERE run_id = ANY(%(run_ids)s) ORDER BY run_id FOR UPDATE
"""
# The clock alone, for a group none of whose runs exists.
_CLOCK: Final = f"SELECT {CLOCK_MS}"
_SET_LEASE: Final = """
UPDATE runs SET lease = %(lease)s, lease_holder = %(holder)s, lease_expires_at = %(expires_at)s,
    lease_ttl_ms = %(ttl_ms)s, updated_at = %(now)s
WHERE run_id = %(run_id)s
"""
# One clock value for the choice and the grant; SKIP LOCKED passes over runs other claimers
# (or writers) hold, so concurrent claimers take different runs without waiting on each other.
_CLAIM: Final = f"""
SELECT runs.run_id, runs.updated_at, {", ".join(f"runs.{c}" for c in rules.RunState._fields)},
    clock.now
FROM runs, (SELECT {CLOCK_MS} AS now) AS clock
WHERE runs.status = ANY(%(statuses)s)
    AND {rules.ORPHANED_SQL.format(now="clock.now", stale="%(stale)s")}
ORDER BY {rules.CLAIM_ORDER}
LIMIT 1
FOR UPDATE OF runs SKIP LOCKED
"""

# What follows a ``gone`` CTE of deleted run rows (run_key, run_id, held: the items they held):
# the items of each run that held at most PURGE_BATCH_ROWS go with it; a larger run's key goes
# to deleted_runs, whose items _PURGE deletes in batches.
_GONE: Final = (
    "RETURNING run_key, run_id, trace_length AS steps, coalesce(history_length, 0) AS turns, "
    "trace_length + coalesce(history_length, 0) AS held"
)
_ITEMS_GONE: Final = f"""
steps_gone AS (
    DELETE FROM steps WHERE run_key IN (SELECT run_key FROM gone WHERE held <= {PURGE_BATCH_ROWS})
), turns_gone AS (
    DELETE FROM turns WHERE run_key IN (SELECT run_key FROM gone WHERE held <= {PURGE_BATCH_ROWS})
), purge_later AS (
    INSERT INTO deleted_runs (run_key, steps_end, turns_end)
    SELECT run_key, steps, turns FROM gone WHERE held > {PURGE_BATCH_ROWS}
)"""
_DELETE: Final = (
    f"WITH gone AS (DELETE FROM runs WHERE run_id = %s {_GONE}), {_ITEMS_GONE} "
    f"SELECT {_TOLD_DELETED} FROM gone"
)
# One purge batch: up to PURGE_BATCH_ROWS steps and as many turns of one deleted run, the last
# positions first (a run's items are at positions 0 to its length), by a range of its index
# that holds only live rows; the run's entry goes once no item is left. SKIP LOCKED: replicas
# purging at once take different runs. Says whether it found a run to purge.
_PURGE: Final = f"""
WITH doomed AS (
    SELECT run_key, steps_end, turns_end,
        greatest(steps_end - {PURGE_BATCH_ROWS}, 0) AS steps_from,
        greatest(turns_end - {PURGE_BATCH_ROWS}, 0) AS turns_from
    FROM deleted_runs ORDER BY run_key LIMIT 1 FOR UPDATE SKIP LOCKED
), steps_gone AS (
    DELETE FROM steps USING doomed
    WHERE steps.run_key = doomed.run_key
        AND steps.idx >= doomed.steps_from AND steps.idx < doomed.steps_end
), turns_gone AS (
    DELETE FROM turns USING doomed
    WHERE turns.run_key = doomed.run_key
        AND turns.idx >= doomed.turns_from AND turns.idx < doomed.turns_end
), finished AS (
    DELETE FROM deleted_runs USING doomed
    WHERE deleted_runs.run_key = doomed.run_key AND doomed.steps_from = 0
        AND doomed.turns_from = 0
), moved AS (
    UPDATE deleted_runs SET steps_end = doomed.steps_from, turns_end = doomed.turns_from
    FROM doomed
    WHERE deleted_runs.run_key = doomed.run_key
        AND (doomed.steps_from > 0 OR doomed.turns_from > 0)
)
SELECT count(*) FROM doomed
"""
_STATE_WIDTH: Final = len(RunState._fields)


async def fetch_one(connection: Connection, sql: str, params: Any) -> TupleRow:
    """The one row a statement returns."""
    cursor = await connection.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return row


async def delete_runs_batch(
    connection: Connection, completed_before: int | None, started_before: int | None
) -> tuple[int, bool]:
    """One batch of bulk retention (see RunStore.delete_runs): how many runs it deleted, and
    whether it found any to delete (when none, the job is done). A run written meanwhile is
    deleted only if it still matches under its lock."""
    where, params = retention_filter(completed_before, started_before, "%s")
    cursor = await connection.execute(
        retention_candidates_sql(where, "%s"), (*params, RETENTION_BATCH_ROWS)
    )
    picked = retention_batch(await cursor.fetchall(), RETENTION_BATCH_ROWS)
    sql = (
        f"WITH gone AS (DELETE FROM runs {where} AND run_id = ANY(%s) {_GONE}), {_ITEMS_GONE}, "
        f"told AS (SELECT {_TOLD_DELETED} FROM gone) "
        "SELECT count(*) FROM told"
    )
    row = await fetch_one(connection, sql, (*params, picked))
    return int(row[0]), bool(picked)


async def purge_batch(connection: Connection) -> bool:
    """Delete a batch of the items deleted runs left (see base.PURGE_BATCH_ROWS); False when
    there was none to delete."""
    return bool((await fetch_one(connection, _PURGE, ()))[0])


@dataclass(frozen=True, slots=True)
class PutRun:
    record: SnapshotRecord
    if_match: int | None
    if_none_match: bool
    lease: int | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id


@dataclass(frozen=True, slots=True)
class PatchRun:
    run_id: str
    patch: PatchRecord
    if_match: int | None
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class DeleteRun:
    run_id: str
    if_match: int | None
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class AcquireLease:
    run_id: str
    holder: str
    ttl_ms: int
    lease: int | None


@dataclass(frozen=True, slots=True)
class ReleaseLease:
    run_id: str
    lease: int


Write = PutRun | PatchRun | DeleteRun | AcquireLease | ReleaseLease
# What each write of a group answers once the group commits: its result, or its refusal (or,
# applied alone after its group failed, what it failed with).
Outcome = WriteResult | Lease | None | Exception


@dataclass(slots=True)
class _Run:
    """A locked run as the group leaves it: None for no run."""

    state: RunState | None
    doc: str | None


async def apply_group(connection: Connection, group: Sequence[Write]) -> list[Outcome]:
    """Lock the group's runs, judge each write in order and queue what it writes."""
    cursor = await connection.execute(
        _LOCK,
        {
            "run_ids": sorted({write.run_id for write in group}),
            "patched": [write.run_id for write in group if isinstance(write, PatchRun)],
        },
    )
    runs = {run_id: _Run(None, None) for run_id in (write.run_id for write in group)}
    rows = await cursor.fetchall()
    for row in rows:
        runs[row[0]] = _Run(RunState._make(row[1 : _STATE_WIDTH + 1]), row[-2])
    now = int(rows[0][-1]) if rows else int((await fetch_one(connection, _CLOCK, ()))[0])
    batch = RunRows()
    outcomes: list[Outcome] = []
    for write in group:
        run = runs[write.run_id]
        if write.run_id in batch:  # one write per run in a batch: this one goes in the next
            await batch.flush(connection)
        try:
            outcomes.append(await _apply(connection, write, run, now, batch))
        except RunStoreError as refusal:
            outcomes.append(refusal)
    await batch.flush(connection)
    return outcomes


async def _apply(
    connection: Connection, write: Write, run: _Run, now: int, batch: RunRows
) -> WriteResult | Lease | None:
    """Judge one write against ``run``, queue its statement (or add its rows to ``batch``) and
    move ``run`` on."""
    run_id = write.run_id
    if isinstance(write, DeleteRun):
        rules.delete(run_id, run.state, write.if_match, write.lease, now)
        await connection.execute(_DELETE, (run_id,))
        run.state = run.doc = None
        return None
    if isinstance(write, AcquireLease | ReleaseLease):
        granted: Lease | None = None
        if isinstance(write, AcquireLease):
            state, granted = rules.acquire(
                run_id, run.state, write.holder, write.ttl_ms, write.lease, now
            )
        else:
            state = rules.release(run_id, run.state, write.lease, now)
        await connection.execute(_SET_LEASE, _lease_values(run_id, state, now))
        run.state = state
        return granted
    patch: PatchRecord | None = None
    if isinstance(write, PutRun):
        change = rules.put(
            run.state, write.record, write.if_match, write.if_none_match, write.lease, now
        )
    else:
        patch = write.patch
        change = rules.patch(run_id, run.state, run.doc, patch, write.if_match, write.lease, now)
    stored = run.state
    batch.add(
        run_id,
        change,
        patch,
        None if stored is None else (stored.trace_length, stored.history_length or 0),
    )
    run.state = change.state
    if change.doc is not None:
        run.doc = change.doc
    return change.result(run_id)


def _lease_values(run_id: str, state: RunState, now: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "lease": state.lease,
        "holder": state.lease_holder,
        "expires_at": state.lease_expires_at,
        "ttl_ms": state.lease_ttl_ms,
        "now": now,
    }


async def claim_run(connection: Connection, query: ClaimQuery) -> ClaimedRun | None:
    """Lock the orphaned run that has waited longest (skipping locked ones), grant the lease."""
    cursor = await connection.execute(
        _CLAIM, {"statuses": list(query.statuses), "stale": query.stale_after_ms}
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    run_id, updated_at, now = row[0], row[1], int(row[-1])
    state, lease = rules.claim(
        run_id,
        RunState._make(row[2 : 2 + _STATE_WIDTH]),
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
    return ClaimedRun(run, lease)
