"""The SQLite backend's deletes: a run, a batch of bulk retention, and the purge of the items of
deleted runs.

A deleted run's row goes in the delete's transaction, and with it the items of a run that holds
few; a larger run's items are left under its key (which no run gets again) and recorded in
``deleted_runs``, and :func:`purge_batch` deletes them, a bounded batch per transaction, so the
writes queued meanwhile go between the batches (issue 14). Each function is a writer op: it runs
inside the writer thread's transaction.
"""

from __future__ import annotations

import sqlite3

from . import rules
from .base import (
    PURGE_BATCH_ROWS,
    RETENTION_BATCH_ROWS,
    retention_batch,
    retention_candidates_sql,
    retention_filter,
)
from .changes import Change, Committed
from .rules import RunState
from .sqlite_batch import now_ms
from .tally import TallyDelta

__all__ = ["delete_batch", "delete_run", "purge_batch"]


def _drop_runs(connection: sqlite3.Connection, runs: list[tuple[int, int, int]]) -> None:
    """Delete the runs of ``runs`` (key, steps, turns): their rows at once, and the items of
    each that holds at most PURGE_BATCH_ROWS too; a larger one goes to ``deleted_runs``, whose
    items :func:`purge_batch` deletes in batches."""
    connection.executemany("DELETE FROM runs WHERE run_key = ?", [(run[0],) for run in runs])
    small = [(key,) for key, steps, turns in runs if steps + turns <= PURGE_BATCH_ROWS]
    for table in ("steps", "turns"):
        connection.executemany(f"DELETE FROM {table} WHERE run_key = ?", small)
    connection.executemany(
        "INSERT INTO deleted_runs (run_key, steps_end, turns_end) VALUES (?, ?, ?)",
        [run for run in runs if run[1] + run[2] > PURGE_BATCH_ROWS],
    )


def purge_batch(connection: sqlite3.Connection) -> bool:
    """Delete up to PURGE_BATCH_ROWS items of a deleted run, the last positions first (a run's
    items are at positions 0 to its length); False when no run had items left."""
    row = connection.execute(
        "SELECT run_key, steps_end, turns_end FROM deleted_runs LIMIT 1"
    ).fetchone()
    if row is None:
        return False
    key, *ends = row
    left = PURGE_BATCH_ROWS
    for index, table in enumerate(("steps", "turns")):
        start = max(0, ends[index] - left)
        connection.execute(
            f"DELETE FROM {table} WHERE run_key = ? AND idx >= ? AND idx < ?",
            (key, start, ends[index]),
        )
        left -= ends[index] - start
        ends[index] = start
    if ends == [0, 0]:
        connection.execute("DELETE FROM deleted_runs WHERE run_key = ?", (key,))
    else:
        connection.execute(
            "UPDATE deleted_runs SET steps_end = ?, turns_end = ? WHERE run_key = ?",
            (*ends, key),
        )
    return True


def delete_run(
    run_id: str, if_match: int | None, lease: int | None, connection: sqlite3.Connection
) -> Committed:
    row = connection.execute(
        f"SELECT run_key, {rules.STATE_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    state = None if row is None else RunState._make(row[1:])
    rules.delete(run_id, state, if_match, lease, now_ms())
    assert state is not None
    _drop_runs(connection, [(row[0], state.trace_length, state.history_length or 0)])
    tally = TallyDelta()
    tally.moved(state.status, None)
    tally.leased(run_id, None)
    return Committed(None, [Change.of_delete(run_id)], tally)


def delete_batch(
    completed_before: int | None, started_before: int | None, connection: sqlite3.Connection
) -> Committed:
    """One retention batch (see RunStore.delete_runs): how many runs it deleted, with their
    deletions for the watchers."""
    where, params = retention_filter(completed_before, started_before, "?")
    candidates = connection.execute(
        retention_candidates_sql(where, "?"), (*params, RETENTION_BATCH_ROWS)
    ).fetchall()
    picked = retention_batch(candidates, RETENTION_BATCH_ROWS)
    dropped = [(key, steps, turns) for _, _, key, steps, turns in candidates[: len(picked)]]
    # What the deleted runs were, for the metrics' tally (.tally).
    tally = TallyDelta()
    for run_id, (key, _, _) in zip(picked, dropped, strict=True):
        (status,) = connection.execute(
            "SELECT status FROM runs WHERE run_key = ?", (key,)
        ).fetchone()
        tally.moved(status, None)
        tally.leased(run_id, None)
    _drop_runs(connection, dropped)
    return Committed(len(picked), [Change.of_delete(run_id) for run_id in picked], tally)
