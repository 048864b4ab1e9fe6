"""The write rules on their own: given a stored state and a request, the new state or the refusal.

Every case is a table row; the rules do no I/O, so nothing here needs a database. That the
backends store what the rules decide is ``test_store_follows_rules``.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import make_snapshot

from runstore.client.problems import PreconditionFailed, RunNotFound, StaleWrite, TraceGap
from runstore.service.store import rules
from runstore.service.store.base import WriteResult
from runstore.service.store.records import patch_record, snapshot_record
from runstore.service.store.rules import RunChange, RunState

# A stored run at version 3: running, three steps, two turns.
RUNNING = RunState(
    version=3,
    status="running",
    started_at=1,
    completed_at=None,
    trace_length=3,
    history_length=2,
)
FINISHED = RUNNING._replace(status="completed", completed_at=9)
NO_HISTORY = RUNNING._replace(history_length=None)
DOC = '{"runId":"r","status":"running","startedAt":1,"input":"q","note":"kept"}'


def put(stored: RunState | None, if_match: int | None = None, **fields: Any) -> RunChange:
    if_none_match = fields.pop("if_none_match", False)
    record = snapshot_record(make_snapshot("r", **fields))
    return rules.put(stored, record, if_match, if_none_match)


def patch(stored: RunState | None, body: dict[str, Any], if_match: int | None = None) -> RunChange:
    return rules.patch("r", stored, None if stored is None else DOC, patch_record(body), if_match)


STEPS = [{"n": 0}, {"n": 1}, {"n": 2}]

# (what, the call, the refusal it raises and a part of its message)
REFUSALS = [
    (
        "If-Match on a PUT of no run",
        lambda: put(None, if_match=1),
        PreconditionFailed,
        "does not exist",
    ),
    (
        "If-None-Match on a stored run",
        lambda: put(RUNNING, if_none_match=True, trace=STEPS),
        PreconditionFailed,
        "If-None-Match",
    ),
    (
        "If-None-Match is judged before If-Match",
        lambda: put(RUNNING, if_match=1, if_none_match=True),
        PreconditionFailed,
        "exists already",
    ),
    (
        "If-Match of another version, PUT",
        lambda: put(RUNNING, if_match=2, trace=STEPS),
        PreconditionFailed,
        "at version 3, not 2",
    ),
    (
        "a PUT that un-finishes",
        lambda: put(FINISHED, trace=STEPS),
        StaleWrite,
        "un-finish",
    ),
    (
        "a PUT with a shorter trace",
        lambda: put(RUNNING, trace=STEPS[:2]),
        StaleWrite,
        "has 3 steps; this write has 2",
    ),
    (
        "a PATCH of no run",
        lambda: patch(None, {"status": "failed"}),
        RunNotFound,
        "PUT it first",
    ),
    (
        "If-Match of another version, PATCH",
        lambda: patch(RUNNING, {"status": "failed"}, if_match=4),
        PreconditionFailed,
        "at version 3, not 4",
    ),
    (
        "If-Match is judged before a gap",
        lambda: patch(RUNNING, {"trace": [1], "traceFrom": 9}, if_match=4),
        PreconditionFailed,
        "at version 3",
    ),
    (
        "a trace gap",
        lambda: patch(RUNNING, {"trace": [1], "traceFrom": 4}),
        TraceGap,
        "traceFrom is 4 but the stored trace has 3 steps",
    ),
    (
        "a history gap",
        lambda: patch(RUNNING, {"history": [{}], "historyFrom": 3}),
        TraceGap,
        "historyFrom is 3 but the stored history has 2 turns",
    ),
    (
        "a history gap on a run without history",
        lambda: patch(NO_HISTORY, {"history": [{}], "historyFrom": 1}),
        TraceGap,
        "has 0 turns",
    ),
    (
        "a gap is judged before staleness",
        lambda: patch(FINISHED, {"completedAt": None, "trace": [], "traceFrom": 4}),
        TraceGap,
        "traceFrom is 4",
    ),
    (
        "a PATCH that clears completedAt",
        lambda: patch(FINISHED, {"completedAt": None}),
        StaleWrite,
        "clearing completedAt",
    ),
    (
        "a PATCH that shortens the trace",
        lambda: patch(RUNNING, {"trace": [1], "traceFrom": 1}),
        StaleWrite,
        "would leave 2",
    ),
    (
        "a DELETE of no run",
        lambda: rules.delete("r", None, None),
        RunNotFound,
        "No run is stored under 'r'.",
    ),
    (
        "If-Match of another version, DELETE",
        lambda: rules.delete("r", RUNNING, 1),
        PreconditionFailed,
        "at version 3, not 1",
    ),
]


@pytest.mark.parametrize(
    ("call", "refusal", "message"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
def test_a_refused_write_raises_its_refusal(call: Any, refusal: type, message: str) -> None:
    with pytest.raises(refusal) as caught:
        call()
    assert type(caught.value) is refusal
    assert message in caught.value.detail


def test_a_put_of_a_new_run_creates_it_at_version_1() -> None:
    change = put(None, trace=STEPS, history=[{"t": 0}], status="completed", completedAt=5)
    assert change.state == RunState(1, "completed", 1_700_000_000_000, 5, 3, 1)
    assert change.created
    assert (change.trace_from, change.trace) == (0, ['{"n":0}', '{"n":1}', '{"n":2}'])
    assert (change.history_from, change.history) == (0, ['{"t":0}'])
    assert change.set_plan
    assert change.doc is not None
    assert change.result("r") == WriteResult("r", 1, 3, created=True)


def test_a_put_replaces_every_part_of_a_stored_run() -> None:
    change = put(RUNNING, trace=[*STEPS, {"n": 3}])
    assert change.state.version == 4
    assert not change.created
    assert change.state.trace_length == 4
    # No history sent: every stored turn is cut.
    assert (change.state.history_length, change.history) == (None, [])
    assert change.set_plan
    assert change.plan is None
    assert change.result("r") == WriteResult("r", 4, 4)


@pytest.mark.parametrize("stored", [RUNNING, FINISHED], ids=["running", "finished"])
def test_if_match_on_the_stored_version_lets_a_put_move_the_run_back(stored: RunState) -> None:
    change = put(stored, if_match=3, trace=STEPS[:1])
    assert (change.state.version, change.state.trace_length) == (4, 1)
    assert change.state.completed_at is None


def test_a_put_that_finishes_the_run_with_as_many_steps_is_accepted() -> None:
    change = put(FINISHED, trace=STEPS, status="completed", completedAt=10)
    assert (change.state.version, change.state.completed_at) == (4, 10)


def test_an_append_writes_only_the_new_items_and_keeps_the_doc() -> None:
    change = patch(RUNNING, {"trace": [{"n": 3}], "traceFrom": 3})
    assert change.state == RUNNING._replace(version=4, trace_length=4)
    assert (change.trace_from, change.trace) == (3, ['{"n":3}'])
    assert (change.history_from, change.history) == (0, [])
    # Nothing sent for the doc or the plan: the stored ones stay, unwritten.
    assert change.doc is None
    assert not change.set_plan
    assert change.result("r") == WriteResult("r", 4, 4)


def test_an_append_may_rewrite_the_last_items() -> None:
    change = patch(RUNNING, {"trace": [{"n": 2}, {"n": 3}], "traceFrom": 2})
    assert change.state.trace_length == 4
    assert change.trace_from == 2


def test_fields_are_merged_into_the_doc_and_the_indexed_columns() -> None:
    change = patch(RUNNING, {"status": "completed", "completedAt": 7, "note": None, "extra": 1})
    assert change.state == RUNNING._replace(version=4, status="completed", completed_at=7)
    assert change.doc == (
        '{"runId":"r","status":"completed","startedAt":1,"input":"q","note":null,'
        '"completedAt":7,"extra":1}'
    )


def test_clearing_completed_at_under_if_match_un_finishes_the_run() -> None:
    change = patch(FINISHED, {"completedAt": None, "status": "running"}, if_match=3)
    assert change.state == RUNNING._replace(version=4)
    assert change.doc is not None
    assert "completedAt" not in change.doc


def test_a_shorter_trace_under_if_match_is_cut() -> None:
    change = patch(RUNNING, {"trace": [], "traceFrom": 1}, if_match=3)
    assert change.state.trace_length == 1
    assert (change.trace_from, change.trace) == (1, [])


@pytest.mark.parametrize(
    ("body", "length", "written"),
    [
        ({"history": [{"t": 2}], "historyFrom": 2}, 3, (2, ['{"t":2}'])),
        ({"history": [{"t": 1}], "historyFrom": 1}, 2, (1, ['{"t":1}'])),
        # A shorter history is no stale write: only the trace and the finish are guarded.
        ({"history": [], "historyFrom": 0}, 0, (0, [])),
        ({"history": None}, None, (0, [])),
    ],
    ids=["append", "rewrite the last", "empty", "cleared"],
)
def test_history_writes(body: dict[str, Any], length: int | None, written: Any) -> None:
    change = patch(RUNNING, body)
    assert change.state.history_length == length
    assert (change.history_from, change.history) == written


def test_a_plan_is_set_or_cleared_only_when_sent() -> None:
    set_plan = patch(RUNNING, {"plan": {"p": 1}})
    assert (set_plan.set_plan, set_plan.plan) == (True, '{"p":1}')
    cleared = patch(RUNNING, {"plan": None})
    assert (cleared.set_plan, cleared.plan) == (True, None)


def test_a_delete_of_the_stored_version_is_allowed() -> None:
    rules.delete("r", RUNNING, None)
    rules.delete("r", RUNNING, 3)
