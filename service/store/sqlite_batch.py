"""PUTs and PATCHes applied as a group, inside the writer thread's transaction.

The writer thread gives up the GIL around every SQLite statement and must win it back before the
next one, while the event loop holds it to parse requests. So the fewer statements a group
commit runs, the sooner it commits. A group of writes is applied in memory, in order, against
the stored state of the runs it touches (read with one SELECT), then written with a handful of
statements whatever its size: one INSERT for new runs, one UPDATE for changed ones, and
multi-row INSERTs for steps and history turns.

Each write is judged by :mod:`.rules` against the run's state as the group has left it, before
it changes anything, so a refused write (a RunStoreError) leaves nothing behind and its neighbours
go on; writes to the same run in one group see each other, exactly as if they had run one after
another. This module only reads, holds and writes rows.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from runstore.client.problems import RunStoreError

from . import rules
from .base import Lease, WriteResult
from .changes import Change, Committed
from .records import PatchRecord, SnapshotRecord
from .rules import RunChange, RunState
from .tally import TallyDelta

__all__ = ["AcquireLease", "PatchRun", "PutRun", "ReleaseLease", "apply_writes", "now_ms"]

# Rows in one INSERT: well under SQLite's limit of bound parameters.
ROWS_PER_INSERT: Final = 64
# A run's state as the rules see it, its content, and when it was written: _Run.values().
_RUN_COLUMNS: Final = ("run_id", "run_key", *RunState._fields, "doc", "plan", "updated_at")
# What an update that leaves the indexed columns (status, started_at, completed_at) alone
# writes: most PATCHes. Setting an indexed column, even to its own value, rewrites its index
# entries, and each index page so touched is one more page in the WAL at commit.
_CONTENT_COLUMNS: Final = (
    "run_key",
    "version",
    "trace_length",
    "history_length",
    *rules.LEASE_COLUMNS,
    "doc",
    "plan",
    "updated_at",
)
_ITEM_COLUMNS: Final = ("run_key", "idx", "item")


# The store's clock follows the wall clock but never goes back: a step back of the system clock
# (NTP, an operator) holds it still until the wall clock catches up, so a lease never expires
# twice and expiry times only grow. Fencing goes by lease number, so no clock step can let a
# superseded writer in.
_last_ms = 0


def now_ms() -> int:
    """The store's clock, in ms since the Unix epoch."""
    global _last_ms
    _last_ms = max(_last_ms, time.time_ns() // 1_000_000)
    return _last_ms


@dataclass(slots=True)
class _Run:
    """A run's row as the group goes."""

    run_id: str
    key: int
    state: RunState
    doc: str
    plan: str | None
    # (status, started_at, completed_at) as the file has them; None while the row is not in it.
    indexed: tuple[str, int, int | None] | None
    changed: bool = False
    # The lease expiry the file has, for the count of live leases (.tally).
    lease_expires_at: int | None = None

    @property
    def stored(self) -> bool:
        """Whether the row exists in the file."""
        return self.indexed is not None

    def index_key(self) -> tuple[str, int, int | None]:
        """The values of the indexed columns (status, started_at, completed_at) now."""
        state = self.state
        return (state.status, state.started_at, state.completed_at)

    def moved(self) -> bool:
        """Whether an indexed column differs from the file's."""
        return self.indexed != self.index_key()

    def content_values(self, updated_at: int) -> tuple[object, ...]:
        """The values of _CONTENT_COLUMNS."""
        state = self.state
        return (
            self.key,
            state.version,
            state.trace_length,
            state.history_length,
            state.lease,
            state.lease_holder,
            state.lease_expires_at,
            state.lease_ttl_ms,
            self.doc,
            self.plan,
            updated_at,
        )

    def values(self, updated_at: int) -> tuple[object, ...]:
        """The values of _RUN_COLUMNS."""
        return (self.run_id, self.key, *self.state, self.doc, self.plan, updated_at)


def _rows_sql(columns: tuple[str, ...], rows: int) -> str:
    return ", ".join(["(" + ", ".join("?" * len(columns)) + ")"] * rows)


@functools.cache
def _select_runs_sql(runs: int) -> str:
    marks = ", ".join("?" * runs)
    return (
        f"SELECT run_id, run_key, {rules.STATE_COLUMNS}, doc, plan FROM runs "
        f"WHERE run_id IN ({marks})"
    )


@functools.cache
def _insert_runs_sql(rows: int) -> str:
    return f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES {_rows_sql(_RUN_COLUMNS, rows)}"


@functools.cache
def _update_runs_sql(columns: tuple[str, ...], rows: int) -> str:
    """One UPDATE of ``rows`` runs, setting ``columns`` (the first is run_key, the key)."""
    assignments = ", ".join(f"{column} = v.{column}" for column in columns[1:])
    return (
        f"WITH v ({', '.join(columns)}) AS (VALUES {_rows_sql(columns, rows)}) "
        f"UPDATE runs SET {assignments} FROM v WHERE runs.run_key = v.run_key"
    )


@functools.cache
def _upsert_items_sql(table: str, rows: int) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(_ITEM_COLUMNS)}) VALUES {_rows_sql(_ITEM_COLUMNS, rows)} "
        "ON CONFLICT (run_key, idx) DO UPDATE SET item = excluded.item WHERE item != excluded.item"
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

    def __init__(
        self, connection: sqlite3.Connection, run_ids: set[str], tally: TallyDelta | None = None
    ) -> None:
        self.connection = connection
        # Told what each flush changes in runs by status and leases.
        self.tally = tally
        self.now = now_ms()
        ids = list(run_ids)
        rows = connection.execute(_select_runs_sql(len(ids)), ids).fetchall()
        width = len(RunState._fields)
        self.runs: dict[str, _Run] = {}
        for row in rows:
            state = RunState._make(row[2 : 2 + width])
            self.runs[row[0]] = _Run(
                row[0],
                row[1],
                state,
                row[2 + width],
                row[3 + width],
                indexed=(state.status, state.started_at, state.completed_at),
                lease_expires_at=state.lease_expires_at,
            )
        # The key of the next new run (see _next_key), once the group creates one.
        self._next_key: int | None = None
        # Pending items, flat: run key, position, JSON text, run key, ... (bound as they are).
        self.items: dict[str, list[object]] = {"steps": [], "turns": []}

    def _new_key(self) -> int:
        """A key no run has had: past the largest given (AUTOINCREMENT's record of it, which an
        explicit key also moves on). Read inside the group's transaction, which holds the
        database's write lock, so no other writer takes the same."""
        if self._next_key is None:
            row = self.connection.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'runs'"
            ).fetchone()
            self._next_key = 1 if row is None else int(row[0]) + 1
        key = self._next_key
        self._next_key += 1
        return key

    def stored(self, run_id: str) -> tuple[RunState | None, str | None]:
        """The run's state and doc as the group has left them so far; Nones for no run."""
        run = self.runs.get(run_id)
        return (None, None) if run is None else (run.state, run.doc)

    def store_lease(self, run_id: str, state: RunState) -> None:
        """The run's new lease (``state`` differs from the stored one in its lease only)."""
        run = self.runs[run_id]
        run.state = state
        run.changed = True

    def store(self, run_id: str, change: RunChange) -> WriteResult:
        """Apply a change the rules accepted to the run's row; its items are queued."""
        run = self.runs.get(run_id)
        if run is None:
            old_trace_length = old_history_length = 0
            run = self.runs[run_id] = _Run(
                run_id, self._new_key(), change.state, "", None, indexed=None
            )
        else:
            old_trace_length = run.state.trace_length
            old_history_length = run.state.history_length or 0
            run.state = change.state
        if change.doc is not None:
            run.doc = change.doc
        if change.set_plan:
            run.plan = change.plan
        run.changed = True
        state = change.state
        self._write_items(
            "steps", run.key, change.trace_from, change.trace, state.trace_length, old_trace_length
        )
        self._write_items(
            "turns",
            run.key,
            change.history_from,
            change.history,
            state.history_length or 0,
            old_history_length,
        )
        return change.result(run_id)

    def _write_items(
        self,
        table: str,
        key: int,
        start: int,
        items: list[str],
        new_length: int,
        old_length: int,
    ) -> None:
        """Items ``start...`` replace what is there; stored items from ``new_length`` on go."""
        if items:
            count = len(items)
            flat: list[object] = [key] * (3 * count)
            flat[1::3] = range(start, start + count)
            flat[2::3] = items
            self.items[table] += flat
        if new_length < old_length:
            # Rare (an If-Match write that shortens, a shorter or cleared history): write what
            # is pending first, to keep the order.
            self.flush()
            self.connection.execute(
                f"DELETE FROM {table} WHERE run_key = ? AND idx >= ?", (key, new_length)
            )

    def flush(self) -> None:
        """Write every changed run, then the pending items (which refer to the runs); what
        that changed in runs by status and leases goes to the tally."""
        changed = [run for run in self.runs.values() if run.changed]
        tally = self.tally
        if tally is not None:
            for run in changed:
                tally.moved(None if run.indexed is None else run.indexed[0], run.state.status)
                if run.state.lease_expires_at != run.lease_expires_at:
                    tally.leased(run.run_id, run.state.lease_expires_at)
        new: list[tuple[object, ...]] = []
        moved: list[tuple[object, ...]] = []
        in_place: list[tuple[object, ...]] = []
        for run in changed:
            if not run.stored:
                new.append(run.values(self.now))
            elif run.moved():
                moved.append(run.values(self.now)[1:])
            else:
                in_place.append(run.content_values(self.now))
        for rows, params in _chunks(new):
            self.connection.execute(_insert_runs_sql(rows), params)
        for rows, params in _chunks(moved):
            self.connection.execute(_update_runs_sql(_RUN_COLUMNS[1:], rows), params)
        for rows, params in _chunks(in_place):
            self.connection.execute(_update_runs_sql(_CONTENT_COLUMNS, rows), params)
        for run in changed:
            run.changed = False
            run.indexed = run.index_key()
            run.lease_expires_at = run.state.lease_expires_at
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
    ) -> list[Committed | RunStoreError]:
        # One entry per accepted write: its change, or None for a lease's (no event).
        changes: list[Change | None] = []
        tally = TallyDelta()
        outcomes = apply_writes(connection, writes, changes=changes, tally=tally)
        made = iter(changes)
        committed: list[Committed | RunStoreError] = []
        for outcome in outcomes:
            if isinstance(outcome, RunStoreError):
                committed.append(outcome)
            else:
                change = next(made)
                # The group's tally goes with its first accepted write (it is one delta).
                committed.append(
                    Committed(outcome, [] if change is None else [change], tally or None)
                )
                tally = TallyDelta()
        return committed

    def __call__(self, connection: sqlite3.Connection) -> Committed:
        (outcome,) = self.group(connection, [self])  # type: ignore[list-item]
        if isinstance(outcome, RunStoreError):
            raise outcome
        return outcome


@dataclass(frozen=True, slots=True)
class PutRun(_GroupedWrite):
    """Create or replace a whole run."""

    record: SnapshotRecord
    if_match: int | None = None
    if_none_match: bool = False
    lease: int | None = None

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def apply(self, writes: RunWrites) -> tuple[WriteResult, Change]:
        run_id = self.record.run_id
        stored, _ = writes.stored(run_id)
        change = rules.put(
            stored, self.record, self.if_match, self.if_none_match, self.lease, writes.now
        )
        result = writes.store(run_id, change)
        return result, Change.of_put(self.record, change.state, writes.now)


@dataclass(frozen=True, slots=True)
class PatchRun(_GroupedWrite):
    """Append steps and turns and replace fields of a stored run."""

    run_id: str
    patch: PatchRecord
    if_match: int | None = None
    lease: int | None = None

    def apply(self, writes: RunWrites) -> tuple[WriteResult, Change]:
        stored, doc = writes.stored(self.run_id)
        change = rules.patch(
            self.run_id, stored, doc, self.patch, self.if_match, self.lease, writes.now
        )
        result = writes.store(self.run_id, change)
        new_doc = writes.runs[self.run_id].doc
        return result, Change.of_patch(self.run_id, self.patch, change.state, new_doc, writes.now)


@dataclass(frozen=True, slots=True)
class AcquireLease(_GroupedWrite):
    """Take or renew a lease on a run (rules.acquire)."""

    run_id: str
    holder: str
    ttl_ms: int
    lease: int | None = None

    def apply(self, writes: RunWrites) -> tuple[Lease, None]:
        # A lease is not a run write: no version, no event.
        stored, _ = writes.stored(self.run_id)
        state, granted = rules.acquire(
            self.run_id, stored, self.holder, self.ttl_ms, self.lease, writes.now
        )
        writes.store_lease(self.run_id, state)
        return granted, None


@dataclass(frozen=True, slots=True)
class ReleaseLease(_GroupedWrite):
    """End a lease now (rules.release)."""

    run_id: str
    lease: int

    def apply(self, writes: RunWrites) -> tuple[None, None]:
        stored, _ = writes.stored(self.run_id)
        writes.store_lease(self.run_id, rules.release(self.run_id, stored, self.lease, writes.now))
        return None, None


RunWrite = PutRun | PatchRun | AcquireLease | ReleaseLease


def apply_writes(
    connection: sqlite3.Connection,
    writes: Sequence[RunWrite],
    *,
    changes: list[Change | None] | None = None,
    tally: TallyDelta | None = None,
) -> list[WriteResult | Lease | RunStoreError | None]:
    """Apply ``writes`` in order inside the caller's transaction; a result or error each. The
    change each accepted write makes (for watchers; None for a lease's) is added to
    ``changes``, and what they change in runs by status and leases to ``tally``."""
    state = RunWrites(connection, {write.run_id for write in writes}, tally)
    outcomes: list[WriteResult | Lease | RunStoreError | None] = []
    for write in writes:
        try:
            result, change = write.apply(state)
        except RunStoreError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(result)
            if changes is not None:
                changes.append(change)
    state.flush()
    return outcomes
