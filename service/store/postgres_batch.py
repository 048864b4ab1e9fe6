"""The PUTs and PATCHes of a PostgreSQL group, written with one multi-row statement per kind.

:func:`.postgres_writes.apply_group` judges each write of a group and hands what the rules
accepted to a :class:`RunRows`, which gathers it column by column: one entry per run in the
arrays of the runs' rows, and the items of every run, flat, in the arrays of the steps and
turns. :meth:`RunRows.flush` queues one statement for the new runs and one for the changed
ones, each taking its rows from ``unnest`` of the arrays (sent in binary), so a group of any
size costs the replica and the database a statement or two, not one per write: psycopg adapts a
handful of arrays instead of some twenty parameters per write, and PostgreSQL starts one
executor instead of one per write.

A statement updates each row once, so a run holds one write in a batch; a second write to the
same run (or a delete or lease of it) flushes the batch first, and goes into the next one.
Writes to one run thus stay in order; writes to different runs commute.

Each statement also adds the event row of every write it applies and notifies
``runstore_events`` with ``<runId>:<version>`` (see :mod:`.postgres_writes` for what the events
and notices are for). An update deletes its run's event row :data:`EVENTS_KEPT` versions back:
every write raises its run's version by one and adds one row, so a run keeps the rows of its
last EVENTS_KEPT writes, and the delete finds its one row by the primary key.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from .changes import patch_delta
from .records import PatchRecord
from .rules import RunChange

__all__ = ["CHANNEL", "EVENTS_KEPT", "NOW_MS", "RunRows"]

NOW_MS: Final = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
# The NOTIFY channel of committed writes.
CHANNEL: Final = "runstore_events"
# How many of a run's latest writes keep their event row: a replica further behind than this
# sends its watchers the whole run.
EVENTS_KEPT: Final = 100

# One row per write: the run's new state, its content and its event. A NULL doc keeps the
# stored one (a PATCH that sends no field does not rewrite it); the plan is replaced only where
# set_plan. Items travel in binary: psycopg's text format escapes each with a regular
# expression, which was most of a 50-step PUT's CPU in the replica.
_WRITES: Final = """
w AS (
    SELECT * FROM unnest(
        %(run_id)b::text[], %(version)b::int8[], %(status)b::text[], %(started_at)b::int8[],
        %(completed_at)b::int8[], %(doc)b::text[], %(set_plan)b::bool[], %(plan)b::text[],
        %(trace_length)b::int4[], %(history_length)b::int4[], %(kind)b::text[],
        %(data)b::text[]
    ) AS w (run_id, version, status, started_at, completed_at, doc, set_plan, plan,
            trace_length, history_length, kind, data)
)"""


def _items(table: str, upsert: bool) -> str:
    """The CTE writing the batch's items of ``table`` (their runs' rows are ``run``)."""
    # Unchanged items of an updated run are not rewritten.
    conflict = (
        f" ON CONFLICT (run_key, idx) DO UPDATE SET item = excluded.item"
        f" WHERE {table}.item <> excluded.item"
        if upsert
        else ""
    )
    return f"""
{table}_written AS (
    INSERT INTO {table} (run_key, idx, item)
    SELECT run.run_key, item.idx, item.text
    FROM unnest(%({table}_run)b::text[], %({table}_idx)b::int4[], %({table}_item)b::text[])
        AS item (run_id, idx, text)
    JOIN run USING (run_id){conflict}
)"""


# Stored items past the new end of a run that got shorter (rare: an If-Match write that
# shortens, a shorter or cleared history), a statement per run: the run's key found by a
# subquery keeps the delete on the primary key's index, where a join with the batch's runs may
# be planned as a scan of the whole table.
_CUT: Final = {
    table: f"DELETE FROM {table} "
    "WHERE run_key = (SELECT run_key FROM runs WHERE run_id = %s) AND idx >= %s"
    for table in ("steps", "turns")
}


# Every applied write's event row, and its notice (PostgreSQL sends a transaction's notices
# when, and only if, it commits).
_TOLD: Final = f"""
event_written AS (
    INSERT INTO run_events (run_key, version, kind, finished, data)
    SELECT run.run_key, w.version, w.kind, w.completed_at IS NOT NULL, w.data
    FROM run JOIN w USING (run_id)
), told AS (
    SELECT pg_notify('{CHANNEL}', run.run_id || ':' || run.version) FROM run
)
SELECT count(*) FROM told
"""

# New runs. If another transaction created one of them after the group's lock found none, the
# insert fails (a unique violation) and the store runs the group again, which then locks it.
_CREATE: Final = f"""
WITH {_WRITES}, run AS (
    INSERT INTO runs (run_id, status, started_at, completed_at, version, updated_at,
                      trace_length, history_length, doc, plan)
    SELECT run_id, status, started_at, completed_at, version, {NOW_MS},
        trace_length, history_length, doc, plan
    FROM w
    RETURNING run_key, run_id, version
), {_items("steps", upsert=False)}, {_items("turns", upsert=False)}, {_TOLD}"""

# Before _UPDATE, for the rest of the group's transaction: its joins with runs and run_events
# then use their primary keys whatever the tables' size. PostgreSQL keeps one plan for a prepared
# statement per connection; made while the tables are small (or have no statistics yet, as
# without autovacuum), it scans them whole, and goes on doing so in every group as they grow:
# on a fresh database the database's CPU per write rose by a third within a minute
# (bench/pg_groups.py, docs/performance.md).
_INDEXES_ONLY: Final = "SET LOCAL enable_seqscan = off"

# Locked runs, changed.
_UPDATE: Final = f"""
WITH {_WRITES}, run AS (
    UPDATE runs SET
        status = w.status,
        started_at = w.started_at,
        completed_at = w.completed_at,
        doc = coalesce(w.doc, runs.doc),
        plan = CASE WHEN w.set_plan THEN w.plan ELSE runs.plan END,
        trace_length = w.trace_length,
        history_length = w.history_length,
        updated_at = {NOW_MS},
        version = w.version
    FROM w
    WHERE runs.run_id = w.run_id
    RETURNING runs.run_key, runs.run_id, runs.version
), {_items("steps", upsert=True)}, {_items("turns", upsert=True)}, events_cut AS (
    DELETE FROM run_events USING run
    WHERE run_events.run_key = run.run_key AND run_events.version = run.version - {EVENTS_KEPT}
), {_TOLD}"""

_RUN_COLUMNS: Final = (
    "run_id",
    "version",
    "status",
    "started_at",
    "completed_at",
    "doc",
    "set_plan",
    "plan",
    "trace_length",
    "history_length",
    "kind",
    "data",
)
_ITEM_COLUMNS: Final = tuple(
    f"{table}_{column}" for table in ("steps", "turns") for column in ("run", "idx", "item")
)


class _Rows:
    """The parameters of one statement: a list per column."""

    __slots__ = ("columns", "cuts")

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in (*_RUN_COLUMNS, *_ITEM_COLUMNS)}
        # (table, run id, new end) of each run whose items past its new end go.
        self.cuts: list[tuple[str, str, int]] = []

    def __bool__(self) -> bool:
        return bool(self.columns["run_id"])

    def add(
        self,
        run_id: str,
        change: RunChange,
        patch: PatchRecord | None,
        old_lengths: tuple[int, int],
    ) -> None:
        state = change.state
        columns = self.columns
        columns["run_id"].append(run_id)
        columns["version"].append(state.version)
        columns["status"].append(state.status)
        columns["started_at"].append(state.started_at)
        columns["completed_at"].append(state.completed_at)
        columns["doc"].append(change.doc)
        columns["set_plan"].append(change.set_plan)
        columns["plan"].append(change.plan)
        columns["trace_length"].append(state.trace_length)
        columns["history_length"].append(state.history_length)
        if patch is None:  # a PUT: its event is a mark, the run itself is read
            columns["kind"].append("run")
            columns["data"].append(None)
        else:
            columns["kind"].append("patch")
            columns["data"].append(patch_delta(patch, state.version).decode())
        self._items("steps", run_id, change.trace_from, change.trace)
        self._items("turns", run_id, change.history_from, change.history)
        # Stored items past the new end go; there are none when the length did not shrink.
        # A cleared history (None) keeps no turn.
        self._cut("steps", run_id, state.trace_length, old_lengths[0])
        self._cut("turns", run_id, state.history_length or 0, old_lengths[1])

    def _items(self, table: str, run_id: str, start: int, items: list[str]) -> None:
        if items:
            columns = self.columns
            columns[f"{table}_run"] += [run_id] * len(items)
            columns[f"{table}_idx"] += range(start, start + len(items))
            columns[f"{table}_item"] += items

    def _cut(self, table: str, run_id: str, new_length: int, old_length: int) -> None:
        if new_length < old_length:
            self.cuts.append((table, run_id, new_length))


class RunRows:
    """What a group's accepted PUTs and PATCHes write, until :meth:`flush` queues it."""

    __slots__ = ("_created", "_run_ids", "_updated")

    def __init__(self) -> None:
        self._run_ids: set[str] = set()
        self._created = _Rows()
        self._updated = _Rows()

    def __contains__(self, run_id: str) -> bool:
        """Whether a write to ``run_id`` waits in this batch (a next one must flush it)."""
        return run_id in self._run_ids

    def add(
        self,
        run_id: str,
        change: RunChange,
        patch: PatchRecord | None,
        old_lengths: tuple[int, int] | None,
    ) -> None:
        """A change the rules accepted (by ``patch``, or by a PUT), of a run stored with
        ``old_lengths`` (trace and history; None: a new run)."""
        assert run_id not in self._run_ids
        self._run_ids.add(run_id)
        if old_lengths is None:
            self._created.add(run_id, change, patch, (0, 0))
        else:
            self._updated.add(run_id, change, patch, old_lengths)

    async def flush(self, connection: AsyncConnection[TupleRow]) -> None:
        """Queue the batch's statements (their answers come with the pipeline's), and start
        an empty batch."""
        if self._created:
            await connection.execute(_CREATE, self._created.columns)
            self._created = _Rows()
        if self._updated:
            await connection.execute(_INDEXES_ONLY, prepare=False)
            await connection.execute(_UPDATE, self._updated.columns)
            for table, run_id, end in self._updated.cuts:
                await connection.execute(_CUT[table], (run_id, end))
            self._updated = _Rows()
        self._run_ids.clear()
