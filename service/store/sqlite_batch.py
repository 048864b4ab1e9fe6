"""PUTs and PATCHes applied as a group, inside the writer thread's transaction.

The writer thread gives up the GIL around every SQLite statement and must win it back before the
next one, while the event loop holds it to parse requests. So the fewer statements a group
commit runs, the sooner it commits. A group of writes is applied in memory, in order, against
the stored state of the runs it touches (read with one SELECT), then written with a handful of
statements whatever its size: one INSERT for new runs, one UPDATE for changed ones, and
multi-row INSERTs for steps and history turns.

Each write checks everything before it changes the state, so a refused write (a RunStoreError)
leaves nothing behind and its neighbours go on; writes to the same run in one group see each
other, exactly as if they had run one after another.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from runstore.client.problems import (
    PreconditionFailed,
    RunNotFound,
    RunStoreError,
    StaleWrite,
    TraceGap,
)

from .base import WriteResult
from .records import PatchRecord, SnapshotRecord, merge_doc

__all__ = ["PatchRun", "PutRun", "apply_writes", "check_version", "now_ms"]

# Rows in one INSERT: well under SQLite's limit of bound parameters.
ROWS_PER_INSERT: Final = 64
_RUN_COLUMNS: Final = (
    "run_id",
    "status",
    "started_at",
    "completed_at",
    "version",
    "updated_at",
    "trace_length",
    "history_length",
    "doc",
    "plan",
)
# What an update that leaves the indexed columns (status, started_at, completed_at) alone
# writes: most PATCHes. Setting an indexed column, even to its own value, rewrites its index
# entries, and each index page so touched is one more page in the WAL at commit.
_CONTENT_COLUMNS: Final = (_RUN_COLUMNS[0], *_RUN_COLUMNS[4:])
_ITEM_COLUMNS: Final = ("run_id", "idx", "item")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Run:
    """A run's row as the group goes."""

    run_id: str
    status: str
    started_at: int
    completed_at: int | None
    version: int
    trace_length: int
    history_length: int | None
    doc: str
    plan: str | None
    # (status, started_at, completed_at) as the file has them; None while the row is not in it.
    indexed: tuple[str, int, int | None] | None
    changed: bool = False

    @property
    def stored(self) -> bool:
        """Whether the row exists in the file."""
        return self.indexed is not None

    def moved(self) -> bool:
        """Whether an indexed column differs from the file's."""
        return self.indexed != (self.status, self.started_at, self.completed_at)

    def content_values(self, updated_at: int) -> tuple[object, ...]:
        """The values of _CONTENT_COLUMNS."""
        values = self.values(updated_at)
        return (values[0], *values[4:])

    def values(self, updated_at: int) -> tuple[object, ...]:
        """The values of _RUN_COLUMNS."""
        return (
            self.run_id,
            self.status,
            self.started_at,
            self.completed_at,
            self.version,
            updated_at,
            self.trace_length,
            self.history_length,
            self.doc,
            self.plan,
        )


def _rows_sql(columns: tuple[str, ...], rows: int) -> str:
    return ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * rows)


@functools.cache
def _insert_runs_sql(rows: int) -> str:
    return f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES {_rows_sql(_RUN_COLUMNS, rows)}"


@functools.cache
def _update_runs_sql(columns: tuple[str, ...], rows: int) -> str:
    """One UPDATE of ``rows`` runs, setting ``columns`` (the first is run_id, the key)."""
    assignments = ", ".join(f"{column} = v.{column}" for column in columns[1:])
    return (
        f"WITH v ({', '.join(columns)}) AS (VALUES {_rows_sql(columns, rows)}) "
        f"UPDATE runs SET {assignments} FROM v WHERE runs.run_id = v.run_id"
    )


@functools.cache
def _upsert_items_sql(table: str, rows: int) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(_ITEM_COLUMNS)}) VALUES {_rows_sql(_ITEM_COLUMNS, rows)} "
        "ON CONFLICT (run_id, idx) DO UPDATE SET item = excluded.item WHERE item != excluded.item"
    )


def _chunks(rows: Sequence[tuple[object, ...]]) -> list[tuple[int, list[object]]]:
    """Rows in groups of ROWS_PER_INSERT, each flattened into one parameter list."""
    chunks = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        chunks.append((len(chunk), [value for row in chunk for value in row]))
    return chunks


def _item_chunks(flat: list[object]) -> list[tuple[int, list[object]]]:
    """Items kept flat, a value for each of _ITEM_COLUMNS, in groups of ROWS_PER_INSERT."""
    width = len(_ITEM_COLUMNS)
    step = width * ROWS_PER_INSERT
    chunks = [flat[start : start + step] for start in range(0, len(flat), step)]
    return [(len(chunk) // width, chunk) for chunk in chunks]


class RunWrites:
    """The runs one group touches, and what it has yet to write."""

    def __init__(self, connection: sqlite3.Connection, run_ids: set[str]) -> None:
        self.connection = connection
        self.now = now_ms()
        ids = list(run_ids)
        rows = connection.execute(
            "SELECT run_id, status, started_at, completed_at, version, trace_length, "
            f"history_length, doc, plan FROM runs WHERE run_id IN ({', '.join('?' * len(ids))})",
            ids,
        ).fetchall()
        self.runs: dict[str, _Run] = {
            run_id: _Run(
                run_id,
                status,
                started,
                completed,
                version,
                steps,
                turns,
                doc,
                plan,
                indexed=(status, started, completed),
            )
            for run_id, status, started, completed, version, steps, turns, doc, plan in rows
        }
        # Pending items, flat: run id, position, JSON text, run id, ... (bound as they are).
        self.items: dict[str, list[object]] = {"steps": [], "turns": []}

    def write_items(
        self, table: str, run_id: str, start: int, items: list[str], old_length: int
    ) -> None:
        """Items ``start...`` replace what is there; a shorter list drops the stored tail."""
        count = len(items)
        end = start + count
        flat: list[object] = [run_id] * (3 * count)
        flat[1::3] = range(start, end)
        flat[2::3] = items
        self.items[table] += flat
        if end < old_length:
            # Rare (an If-Match write that shortens, a shorter history): keep the order.
            self.flush()
            self.connection.execute(
                f"DELETE FROM {table} WHERE run_id = ? AND idx >= ?", (run_id, end)
            )

    def clear_items(self, table: str, run_id: str) -> None:
        self.flush()
        self.connection.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    def flush(self) -> None:
        """Write every changed run, then the pending items (which refer to the runs)."""
        changed = [run for run in self.runs.values() if run.changed]
        new: list[tuple[object, ...]] = []
        moved: list[tuple[object, ...]] = []
        in_place: list[tuple[object, ...]] = []
        for run in changed:
            if not run.stored:
                new.append(run.values(self.now))
            elif run.moved():
                moved.append(run.values(self.now))
            else:
                in_place.append(run.content_values(self.now))
        for rows, params in _chunks(new):
            self.connection.execute(_insert_runs_sql(rows), params)
        for rows, params in _chunks(moved):
            self.connection.execute(_update_runs_sql(_RUN_COLUMNS, rows), params)
        for rows, params in _chunks(in_place):
            self.connection.execute(_update_runs_sql(_CONTENT_COLUMNS, rows), params)
        for run in changed:
            run.changed = False
            run.indexed = (run.status, run.started_at, run.completed_at)
        for table, pending in self.items.items():
            for rows, params in _item_chunks(pending):
                self.connection.execute(_upsert_items_sql(table, rows), params)
            pending.clear()


class _GroupedWrite:
    """A write the writer thread applies together with its neighbours (``group``), or on its
    own as a plain writer op (``op(connection)``)."""

    __slots__ = ()

    @staticmethod
    def group(
        connection: sqlite3.Connection, writes: Sequence[RunWrite]
    ) -> list[WriteResult | RunStoreError]:
        return apply_writes(connection, writes)

    def __call__(self, connection: sqlite3.Connection) -> WriteResult:
        (outcome,) = apply_writes(connection, [self])  # type: ignore[list-item]
        if isinstance(outcome, RunStoreError):
            raise outcome
        return outcome


def check_version(stored: int, if_match: int | None) -> None:
    """PreconditionFailed unless ``If-Match`` is absent or names the stored version."""
    if if_match is not None and if_match != stored:
        raise PreconditionFailed(
            f"The run is at version {stored}, not {if_match}; read it again before writing."
        )


@dataclass(frozen=True, slots=True)
class PutRun(_GroupedWrite):
    """Create or replace a whole run."""

    record: SnapshotRecord
    if_match: int | None = None
    if_none_match: bool = False

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def apply(self, writes: RunWrites) -> WriteResult:
        record = self.record
        run = writes.runs.get(record.run_id)
        trace_length = len(record.trace)
        history_length = None if record.history is None else len(record.history)
        if run is None:
            if self.if_match is not None:
                raise PreconditionFailed(
                    "The run does not exist, so no version can match If-Match."
                )
            run = writes.runs[record.run_id] = _Run(
                record.run_id,
                record.status,
                record.started_at,
                record.completed_at,
                1,
                trace_length,
                history_length,
                record.doc,
                record.plan,
                indexed=None,
                changed=True,
            )
            writes.write_items("steps", run.run_id, 0, record.trace, 0)
            writes.write_items("turns", run.run_id, 0, record.history or [], 0)
            return WriteResult(run.run_id, 1, trace_length, created=True)
        if self.if_none_match:
            raise PreconditionFailed("The run exists already (If-None-Match: *).")
        check_version(run.version, self.if_match)
        if self.if_match is None:
            if run.completed_at is not None and record.completed_at is None:
                raise StaleWrite(
                    "The run is finished; a write without completedAt would un-finish it."
                )
            if trace_length < run.trace_length:
                raise StaleWrite(
                    f"The stored trace has {run.trace_length} steps; this write has {trace_length}."
                )
        old_trace_length, old_history_length = run.trace_length, run.history_length or 0
        run.status, run.started_at, run.completed_at = (
            record.status,
            record.started_at,
            record.completed_at,
        )
        run.doc, run.plan = record.doc, record.plan
        run.trace_length, run.history_length = trace_length, history_length
        run.version += 1
        run.changed = True
        writes.write_items("steps", run.run_id, 0, record.trace, old_trace_length)
        writes.write_items("turns", run.run_id, 0, record.history or [], old_history_length)
        return WriteResult(run.run_id, run.version, trace_length)


@dataclass(frozen=True, slots=True)
class PatchRun(_GroupedWrite):
    """Append steps and turns and replace fields of a stored run."""

    run_id: str
    patch: PatchRecord
    if_match: int | None = None

    def apply(self, writes: RunWrites) -> WriteResult:
        patch, if_match = self.patch, self.if_match
        run = writes.runs.get(self.run_id)
        if run is None:
            raise RunNotFound(f"No run is stored under {self.run_id!r}; PUT it first.")
        check_version(run.version, if_match)
        trace_length = run.trace_length
        if patch.trace is not None:
            if patch.trace_from > run.trace_length:
                raise TraceGap(
                    f"traceFrom is {patch.trace_from} but the stored trace has "
                    f"{run.trace_length} steps."
                )
            trace_length = patch.trace_from + len(patch.trace)
        stored_history = run.history_length or 0
        history_length = run.history_length
        if patch.history is not None:
            if patch.history_from > stored_history:
                raise TraceGap(
                    f"historyFrom is {patch.history_from} but the stored history has "
                    f"{stored_history} turns."
                )
            history_length = patch.history_from + len(patch.history)
        elif patch.clear_history:
            history_length = None
        if if_match is None:
            if patch.clears_completed_at and run.completed_at is not None:
                raise StaleWrite("The run is finished; clearing completedAt would un-finish it.")
            if trace_length < run.trace_length:
                raise StaleWrite(
                    f"The stored trace has {run.trace_length} steps; this write would leave "
                    f"{trace_length}."
                )
        if patch.fields:
            run.doc, merged = merge_doc(run.doc, patch.fields)
            run.status, run.started_at = merged["status"], merged["startedAt"]
            run.completed_at = merged.get("completedAt")
        if patch.set_plan:
            run.plan = patch.plan
        old_trace_length = run.trace_length
        run.trace_length, run.history_length = trace_length, history_length
        run.version += 1
        run.changed = True
        if patch.trace is not None:
            writes.write_items("steps", run.run_id, patch.trace_from, patch.trace, old_trace_length)
        if patch.history is not None:
            writes.write_items(
                "turns", run.run_id, patch.history_from, patch.history, stored_history
            )
        elif patch.clear_history:
            writes.clear_items("turns", run.run_id)
        return WriteResult(run.run_id, run.version, trace_length)


RunWrite = PutRun | PatchRun


def apply_writes(
    connection: sqlite3.Connection, writes: Sequence[RunWrite]
) -> list[WriteResult | RunStoreError]:
    """Apply ``writes`` in order inside the caller's transaction; a result or error each."""
    state = RunWrites(connection, {write.run_id for write in writes})
    outcomes: list[WriteResult | RunStoreError] = []
    for write in writes:
        try:
            outcomes.append(write.apply(state))
        except RunStoreError as exc:
            outcomes.append(exc)
    state.flush()
    return outcomes
