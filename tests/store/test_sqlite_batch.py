"""Writes applied as one group equal the same writes applied one by one.

The writer thread hands consecutive PUTs and PATCHes to ``apply_writes`` together; whatever the
mix (several writes to one run, refused writes in between, If-Match writes that shorten a
trace, cleared histories), the outcomes and the stored rows must be those of running them one
after another.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_writes import patch_bodies, snapshot_bodies

from runstore.client.problems import RunStoreError
from runstore.service.store.records import patch_record, snapshot_record
from runstore.service.store.sqlite_batch import PatchRun, PutRun, RunWrite, apply_writes
from runstore.service.store.sqlite_schema import connect, migrate

RUN_IDS = ("a", "b", "c")


def _open(path: Path) -> sqlite3.Connection:
    connection = connect(str(path))
    migrate(connection)
    return connection


def _rows(connection: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "runs": connection.execute(
            "SELECT run_id, status, started_at, completed_at, version, trace_length, "
            "history_length, doc, plan FROM runs ORDER BY run_id"
        ).fetchall(),
        **{
            table: connection.execute(
                f"SELECT run_id, idx, item FROM {table} JOIN runs USING (run_key) "
                "ORDER BY run_id, idx"
            ).fetchall()
            for table in ("steps", "turns")
        },
    }


def _by_index(connection: sqlite3.Connection, how: str | None = None) -> list[list[str]]:
    """The run ids as each of the runs indexes orders them (or the table, NOT INDEXED)."""
    queries = [
        ("runs_by_start", "", "started_at DESC, run_id DESC"),
        ("runs_by_status", "", "status, started_at DESC, run_id DESC"),
        ("runs_by_completion", "WHERE completed_at IS NOT NULL", "completed_at, run_id"),
    ]
    return [
        [
            row[0]
            for row in connection.execute(
                f"SELECT run_id FROM runs {how or 'INDEXED BY ' + index} {where} ORDER BY {order}"
            )
        ]
        for index, where, order in queries
    ]


def _outcome(value: Any) -> Any:
    return (type(value).__name__, str(value)) if isinstance(value, RunStoreError) else value


put_writes = st.builds(
    lambda run_id, body, if_match, if_none_match: PutRun(
        snapshot_record({**body, "runId": run_id}), if_match, if_none_match
    ),
    st.sampled_from(RUN_IDS),
    snapshot_bodies(),
    st.none() | st.integers(1, 4),
    st.booleans(),
)
patch_writes = st.builds(
    lambda run_id, body, if_match: PatchRun(run_id, patch_record(body), if_match),
    st.sampled_from(RUN_IDS),
    patch_bodies(st.integers(0, 4)),
    st.none() | st.integers(1, 4),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=st.lists(put_writes | patch_writes, min_size=1, max_size=12))
def test_a_group_equals_its_writes_one_by_one(tmp_path: Path, writes: list[RunWrite]) -> None:
    for name in ("one.db", "group.db"):
        (tmp_path / name).unlink(missing_ok=True)
    one, group = _open(tmp_path / "one.db"), _open(tmp_path / "group.db")
    try:
        singly = []
        for write in writes:
            one.execute("BEGIN IMMEDIATE")
            singly.append(_outcome(apply_writes(one, [write])[0]))
            one.execute("COMMIT")
        group.execute("BEGIN IMMEDIATE")
        together = [_outcome(outcome) for outcome in apply_writes(group, writes)]
        group.execute("COMMIT")
        assert together == singly
        assert _rows(group) == _rows(one)
        # The indexes too: an update that leaves the indexed columns alone does not touch them.
        assert _by_index(group) == _by_index(one) == _by_index(one, "NOT INDEXED")
        assert group.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        one.close()
        group.close()


def test_a_refused_write_in_a_group_leaves_its_neighbours(tmp_path: Path) -> None:
    connection = _open(tmp_path / "runs.db")
    base = {
        "status": "running",
        "startedAt": 1,
        "input": "q",
        "trace": [],
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    writes: list[RunWrite] = [
        PutRun(snapshot_record({**base, "runId": "a"})),
        PatchRun("a", patch_record({"trace": [1], "traceFrom": 5})),  # a gap: refused
        PatchRun("missing", patch_record({"status": "failed"})),  # refused
        PatchRun("a", patch_record({"trace": [1, 2], "traceFrom": 0})),
    ]
    connection.execute("BEGIN IMMEDIATE")
    outcomes = apply_writes(connection, writes)
    connection.execute("COMMIT")
    assert [type(outcome).__name__ for outcome in outcomes] == [
        "WriteResult",
        "TraceGap",
        "RunNotFound",
        "WriteResult",
    ]
    assert connection.execute("SELECT version, trace_length FROM runs").fetchall() == [(2, 2)]
    assert connection.execute("SELECT idx, item FROM steps").fetchall() == [(0, "1"), (1, "2")]
    connection.close()


def test_a_shorter_history_drops_turns_appended_earlier_in_the_group(tmp_path: Path) -> None:
    connection = _open(tmp_path / "runs.db")
    base = {
        "runId": "a",
        "status": "running",
        "startedAt": 1,
        "input": "q",
        "trace": [],
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    writes: list[RunWrite] = [
        PutRun(snapshot_record({**base, "history": [{"t": 0}, {"t": 1}]})),
        PatchRun("a", patch_record({"history": [{"t": 2}, {"t": 3}], "historyFrom": 2})),
        PutRun(snapshot_record({**base, "history": [{"t": 9}]})),
    ]
    connection.execute("BEGIN IMMEDIATE")
    apply_writes(connection, writes)
    connection.execute("COMMIT")
    assert connection.execute("SELECT idx, item FROM turns").fetchall() == [(0, '{"t":9}')]
    assert connection.execute("SELECT version, history_length FROM runs").fetchall() == [(3, 1)]
    connection.close()
