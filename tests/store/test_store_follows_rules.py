"""Each backend stores exactly what the write rules decide.

A model store, a dict kept by applying :mod:`runstore.service.store.rules` and nothing else, and
a real backend take the same random sequence of PUTs, PATCHes and DELETEs: every write must get
the same result or the same refusal (class and message), and every run must read back as the
same bytes at the same version. As both backends are held to the same model, they also agree with
each other.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_writes import patch_bodies, snapshot_bodies

from runstore.client.problems import RunStoreError
from runstore.service.store import RunStore, SQLiteStore, StoredRun, rules
from runstore.service.store.records import (
    PatchRecord,
    SnapshotRecord,
    patch_record,
    render_snapshot,
    snapshot_record,
)
from runstore.service.store.rules import RunChange, RunState

T = TypeVar("T")


@dataclass
class ModelRun:
    state: RunState
    doc: str = ""
    plan: str | None = None
    steps: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)

    def apply(self, change: RunChange) -> None:
        self.state = change.state
        if change.doc is not None:
            self.doc = change.doc
        if change.set_plan:
            self.plan = change.plan
        for items, start, written, end in (
            (self.steps, change.trace_from, change.trace, change.state.trace_length),
            (self.turns, change.history_from, change.history, change.state.history_length or 0),
        ):
            items[start : start + len(written)] = written
            del items[end:]

    def read(self) -> StoredRun:
        history = None if self.state.history_length is None else ",".join(self.turns)
        return StoredRun(
            self.state.version,
            render_snapshot(self.doc, self.plan, ",".join(self.steps), history),
        )


class Model:
    """Runs kept in memory by the rules alone."""

    def __init__(self) -> None:
        self.runs: dict[str, ModelRun] = {}

    def _store(self, run_id: str, change: RunChange) -> Any:
        run = self.runs.get(run_id)
        if run is None:
            run = self.runs[run_id] = ModelRun(change.state)
        run.apply(change)
        return change.result(run_id)

    def put(self, record: SnapshotRecord, if_match: int | None, if_none_match: bool) -> Any:
        run = self.runs.get(record.run_id)
        stored = None if run is None else run.state
        return self._store(record.run_id, rules.put(stored, record, if_match, if_none_match))

    def patch(self, run_id: str, record: PatchRecord, if_match: int | None) -> Any:
        run = self.runs.get(run_id)
        stored, doc = (None, None) if run is None else (run.state, run.doc)
        return self._store(run_id, rules.patch(run_id, stored, doc, record, if_match))

    def delete(self, run_id: str, if_match: int | None) -> None:
        run = self.runs.get(run_id)
        rules.delete(run_id, None if run is None else run.state, if_match)
        del self.runs[run_id]

    def resolve(self, run_id: str, body: Any, if_match: Any) -> tuple[Any, int | None]:
        """The body and If-Match with "current", "end" and "before end" made numbers."""
        run = self.runs.get(run_id)
        if if_match == "current":
            if_match = 1 if run is None else run.state.version
        if isinstance(body, dict):
            body = dict(body)
            for start, stored in (
                ("traceFrom", [] if run is None else run.steps),
                ("historyFrom", [] if run is None else run.turns),
            ):
                if body.get(start) == "end":
                    body[start] = len(stored)
                elif body.get(start) == "before end":
                    body[start] = max(0, len(stored) - 1)
        return body, if_match

    def get(self, run_id: str) -> StoredRun | None:
        run = self.runs.get(run_id)
        return None if run is None else run.read()


class StoreOnLoop:
    """A store opened on an event loop of its own, driven from plain (hypothesis) tests."""

    def __init__(self, store: RunStore) -> None:
        self.runner = asyncio.Runner()
        self.store = store
        self.run(store.open())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    def close(self) -> None:
        self.run(self.store.close())
        self.runner.close()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreOnLoop]:
    if request.param == "postgres":
        from runstore.service.store.postgres import PostgresStore

        opened = StoreOnLoop(PostgresStore(request.getfixturevalue("postgres_url")))
    else:
        opened = StoreOnLoop(SQLiteStore(tmp_path_factory.mktemp("rules") / "runs.db"))
    try:
        yield opened
    finally:
        opened.close()


# "current": the stored version, so that conditional writes pass too and may move a run back.
if_matches = st.sampled_from([None, None, None, "current", "current", 1, 3])
# Where a PATCH's items start: mostly at the stored end, or one before it (a rewrite, or under
# If-Match a cut), sometimes at a fixed position that may leave a gap.
starts = st.sampled_from(["end", "end", "end", "before end"]) | st.integers(0, 4)
puts = st.tuples(st.just("PUT"), snapshot_bodies(), if_matches, st.booleans())
patches = st.tuples(st.just("PATCH"), patch_bodies(starts), if_matches, st.just(False))
deletes = st.tuples(st.just("DELETE"), st.none(), if_matches, st.just(False))
writes = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), puts | patches | patches | deletes),
    min_size=1,
    max_size=20,
)

_examples = itertools.count()
_session = secrets.token_hex(3)


def _outcome(call: Any) -> Any:
    try:
        return call()
    except RunStoreError as exc:
        return type(exc).__name__, exc.detail


def _step(
    store: StoreOnLoop,
    model: Model,
    run_id: str,
    method: str,
    body: dict[str, Any] | None,
    if_match: int | None,
    if_none_match: bool,
) -> tuple[Any, Any]:
    """What the model and the store answer to one write."""
    if method == "PUT":
        record = snapshot_record({**(body or {}), "runId": run_id})
        return (
            _outcome(lambda: model.put(record, if_match, if_none_match)),
            _outcome(
                lambda: store.run(
                    store.store.put_run(record, if_match=if_match, if_none_match=if_none_match)
                )
            ),
        )
    if method == "PATCH":
        update = patch_record(body)
        return (
            _outcome(lambda: model.patch(run_id, update, if_match)),
            _outcome(lambda: store.run(store.store.patch_run(run_id, update, if_match=if_match))),
        )
    return (
        _outcome(lambda: model.delete(run_id, if_match)),
        _outcome(lambda: store.run(store.store.delete_run(run_id, if_match=if_match))),
    )


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=writes)
def test_a_backend_stores_what_the_rules_decide(
    store: StoreOnLoop, steps: list[tuple[str, tuple[Any, ...]]]
) -> None:
    # Fresh run ids for each example, whatever earlier ones left in the database.
    prefix = f"rules-{_session}-{next(_examples)}"
    model = Model()
    for name, (method, body, if_match, if_none_match) in steps:
        run_id = f"{prefix}-{name}"
        body, if_match = model.resolve(run_id, body, if_match)
        expected, got = _step(store, model, run_id, method, body, if_match, if_none_match)
        assert got == expected, (method, body, if_match, if_none_match)
        assert store.run(store.store.get_run(run_id)) == model.get(run_id)


def test_the_model_is_the_stores_own_shape() -> None:
    """A sanity check of the model itself: an append after a PUT reads back as one run."""
    model = Model()
    record = snapshot_record(
        {
            "runId": "r",
            "status": "running",
            "startedAt": 1,
            "input": "q",
            "trace": [1],
            "usage": {},
            "stepIndex": 0,
            "iterations": 0,
            "revisions": 0,
            "history": [],
        }
    )
    model.put(record, None, False)
    model.patch("r", patch_record({"trace": [2, 3], "traceFrom": 1}), None)
    read = model.get("r")
    assert read is not None
    assert read.version == 2
    assert read.body == (
        b'{"runId":"r","status":"running","startedAt":1,"input":"q","usage":{},"stepIndex":0,'
        b'"iterations":0,"revisions":0,"history":[],"trace":[1,2,3]}'
    )
