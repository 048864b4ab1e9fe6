"""The persistence hooks, one behavioural suite for the sync client, the async client and
embedded mode (the app in process; see client_rig.client_rig)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from client_rig import (
    HTTP_MODES,
    MODES,
    Rig,
    agent_snapshot,
    client_rig,
    finish,
    take_step,
    wire,
)

from runstore.client import (
    InvalidRun,
    PreconditionFailed,
    RunSnapshot,
    StaleWrite,
    StoreUnavailable,
)
from runstore.service import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=MODES)
async def rig(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Rig]:
    async with client_rig(settings, request.param) as rig:
        yield rig


@pytest.fixture(params=HTTP_MODES)
async def http_rig(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Rig]:
    async with client_rig(settings, request.param) as rig:
        yield rig


async def run_steps(hooks: Any, snapshot: dict[str, Any], steps: int) -> dict[str, Any]:
    for _ in range(steps):
        await hooks.on_step_complete(take_step(snapshot))
    return snapshot


async def started(rig: Rig, run_id: str, steps: int = 0) -> dict[str, Any]:
    snapshot = agent_snapshot(run_id)
    await rig.hooks.on_run_start(snapshot)
    return await run_steps(rig.hooks, snapshot, steps)


@pytest.mark.parametrize("shape", ["mapping", "model"])
async def test_a_run_reads_back_as_the_agent_last_held_it(rig: Rig, shape: str) -> None:
    snapshot = agent_snapshot("trip-1", labels={"team": "travel"})

    def given(current: dict[str, Any]) -> Any:
        # A framework with immutable snapshots hands over a new object at every hook.
        return RunSnapshot.model_validate(copy.deepcopy(current)) if shape == "model" else current

    await rig.hooks.on_run_start(given(snapshot))
    for _ in range(20):
        await rig.hooks.on_step_complete(given(take_step(snapshot)))
        assert await rig.stored("trip-1") == wire(snapshot)
    await rig.hooks.on_run_complete(given(finish(snapshot)))

    assert await rig.stored("trip-1") == wire(snapshot)
    loaded = await rig.hooks.load_run("trip-1")
    assert isinstance(loaded, RunSnapshot)
    assert loaded.to_wire() == wire(snapshot)
    assert loaded.finished


async def test_load_run_of_an_unknown_run_is_none(rig: Rig) -> None:
    assert await rig.hooks.load_run("never-started") is None


async def test_step_bodies_stay_flat_as_the_run_grows(http_rig: Rig) -> None:
    snapshot = await started(http_rig, "long-run")
    sizes = {}
    for step in range(1, 301):
        await http_rig.hooks.on_step_complete(take_step(snapshot))
        sizes[step] = http_rig.writes("long-run")[-1].size
    await http_rig.hooks.on_run_complete(finish(snapshot))

    writes = http_rig.writes("long-run")
    assert [w.method for w in writes] == ["PUT"] + ["PATCH"] * 301
    # Only digits grow (traceFrom, step numbers, token counts): a few bytes, not a trace.
    assert abs(sizes[300] - sizes[10]) <= 16, (sizes[10], sizes[300])
    whole = len(str(wire(snapshot)))
    assert sizes[300] * 20 < whole
    step_300 = writes[300].json()
    assert step_300["traceFrom"] == 299
    assert step_300["trace"] == [snapshot["trace"][299]]
    assert step_300["historyFrom"] == 300
    assert step_300["history"] == [snapshot["history"][300]]
    assert set(step_300) == {
        "traceFrom",
        "trace",
        "historyFrom",
        "history",
        "usage",
        "stepIndex",
        "iterations",
    }
    assert await http_rig.stored("long-run") == wire(snapshot)


async def test_a_hook_with_nothing_new_sends_nothing(http_rig: Rig) -> None:
    snapshot = await started(http_rig, "idle", steps=2)
    await http_rig.hooks.on_step_complete(snapshot)
    await http_rig.hooks.on_step_complete(copy.deepcopy(snapshot))
    assert len(http_rig.writes("idle")) == 3


async def test_a_resumed_run_continues_with_deltas(rig: Rig) -> None:
    crashed = await started(rig, "resume-me", steps=5)  # this worker then dies mid-run
    worker = rig.new_hooks()
    loaded = await worker.load_run("resume-me")
    assert loaded.to_wire() == wire(crashed)
    snapshot = loaded.to_wire()
    await run_steps(worker, snapshot, 5)
    await worker.on_run_complete(finish(snapshot))

    assert await rig.stored("resume-me") == wire(snapshot)
    assert len(snapshot["trace"]) == 10
    if rig.mode != "embedded":
        resumed = rig.writes("resume-me")[6:]
        assert [w.method for w in resumed] == ["PATCH"] * 6
        assert [w.json().get("traceFrom") for w in resumed[:5]] == [5, 6, 7, 8, 9]


async def test_a_deleted_run_is_put_whole_again(rig: Rig) -> None:
    snapshot = await started(rig, "deleted", steps=3)
    await rig.other.delete_run("deleted")
    await rig.hooks.on_step_complete(take_step(snapshot))

    assert await rig.stored("deleted") == wire(snapshot)
    if rig.mode != "embedded":
        last = rig.writes("deleted")[-2:]
        assert [(w.method, w.status) for w in last] == [("PATCH", 404), ("PUT", 201)]


async def test_a_trace_gap_falls_back_to_a_whole_put(rig: Rig) -> None:
    snapshot = await started(rig, "gap", steps=5)
    # Another writer replaces the run with a shorter one (If-Match lets it).
    stored = await rig.other.get_run("gap")
    shorter = {**wire(snapshot), "trace": snapshot["trace"][:2]}
    await rig.other.put_run(shorter, if_match=await version_of(rig, "gap"))
    assert stored is not None
    await rig.hooks.on_step_complete(take_step(snapshot))

    assert await rig.stored("gap") == wire(snapshot)
    if rig.mode != "embedded":
        last = rig.writes("gap")[-2:]
        assert [(w.method, w.status) for w in last] == [("PATCH", 409), ("PUT", 200)]


async def version_of(rig: Rig, run_id: str) -> int:
    response = await rig.raw.head(f"/runs/{run_id}")
    return int(response.headers["etag"].strip('"'))


async def test_a_rewritten_last_step_is_sent_again(rig: Rig) -> None:
    snapshot = await started(rig, "revise", steps=4)
    snapshot["trace"][-1]["output"] = "a better result"
    await run_steps(rig.hooks, snapshot, 1)

    assert await rig.stored("revise") == wire(snapshot)
    if rig.mode != "embedded":
        body = rig.writes("revise")[-1].json()
        assert body["traceFrom"] == 3
        assert len(body["trace"]) == 2


async def test_a_rewritten_earlier_step_is_stored_by_completion(rig: Rig) -> None:
    snapshot = await started(rig, "early-rewrite", steps=6)
    snapshot["trace"][1]["output"] = "corrected"
    await run_steps(rig.hooks, snapshot, 2)
    await rig.hooks.on_run_complete(finish(snapshot))
    assert await rig.stored("early-rewrite") == wire(snapshot)


async def test_an_agent_may_rewind_its_own_trace(rig: Rig) -> None:
    snapshot = await started(rig, "rewind", steps=6)
    del snapshot["trace"][3:]
    snapshot["stepIndex"] = 3
    await rig.hooks.on_step_complete(snapshot)
    assert await rig.stored("rewind") == wire(snapshot)
    await run_steps(rig.hooks, snapshot, 2)
    assert await rig.stored("rewind") == wire(snapshot)


async def test_a_rewind_after_another_writer_is_a_precondition_failure(rig: Rig) -> None:
    snapshot = await started(rig, "contended", steps=4)
    await rig.other.patch_run("contended", {"revisions": 1})
    before = await rig.stored("contended")
    del snapshot["trace"][2:]
    with pytest.raises(PreconditionFailed) as caught:
        await rig.hooks.on_step_complete(snapshot)
    assert caught.value.status == 412
    assert caught.value.type == "urn:runstore:problem:precondition-failed"
    assert await rig.stored("contended") == before


async def test_a_worker_behind_another_gets_stale_write(rig: Rig) -> None:
    zombie = await started(rig, "taken-over", steps=5)
    worker = rig.new_hooks()
    snapshot = (await worker.load_run("taken-over")).to_wire()
    await run_steps(worker, snapshot, 3)

    for _ in range(2):  # the second time as a whole PUT: the zombie's ledger forgot the run
        with pytest.raises(StaleWrite) as caught:
            await rig.hooks.on_step_complete(take_step(zombie))
        assert caught.value.status == 409
        assert caught.value.type == "urn:runstore:problem:stale-write"
        assert "trace" in caught.value.detail
    assert await rig.stored("taken-over") == wire(snapshot)


async def test_a_history_summarised_shorter_is_stored(rig: Rig) -> None:
    snapshot = await started(rig, "summarised", steps=6)
    snapshot["history"] = [{"role": "system", "content": "summary of 6 steps"}]
    await run_steps(rig.hooks, snapshot, 1)
    assert await rig.stored("summarised") == wire(snapshot)
    snapshot["history"] = None
    await rig.hooks.on_step_complete(snapshot)
    assert await rig.stored("summarised") == wire(snapshot)


async def test_fields_set_cleared_and_unknown_fields_follow_the_agent(rig: Rig) -> None:
    snapshot = await started(rig, "fields", steps=1)
    changes: list[dict[str, Any]] = [
        {"error": "rate limited", "x-framework": {"attempt": 1}},
        {"error": None, "x-framework": {"attempt": 2}, "plan": None},
        {"x-framework": None},
        {"x-framework": "gone"},
    ]
    for change in changes:
        snapshot.update(change)
        await run_steps(rig.hooks, snapshot, 1)
        assert await rig.stored("fields") == wire(snapshot)
    del snapshot["x-framework"]
    await run_steps(rig.hooks, snapshot, 1)
    assert await rig.stored("fields") == wire(snapshot)


async def test_an_invalid_snapshot_is_refused_and_the_store_untouched(rig: Rig) -> None:
    snapshot = await started(rig, "strict", steps=2)
    before = await rig.stored("strict")
    bad = take_step(copy.deepcopy(snapshot))
    bad["status"] = "Not A Status"
    with pytest.raises(InvalidRun) as caught:
        await rig.hooks.on_step_complete(bad)
    assert caught.value.status == 422
    assert [error["path"] for error in caught.value.errors] == ["$.status"]
    assert await rig.stored("strict") == before
    # The next good snapshot is stored whole (what the store holds was in doubt).
    await rig.hooks.on_step_complete(take_step(snapshot))
    assert await rig.stored("strict") == wire(snapshot)


@pytest.mark.parametrize(
    ("snapshot", "path"),
    [
        ({"status": "running"}, "$.runId"),
        ({"runId": "no/slash", "trace": []}, "$.runId"),
        ({"runId": "ok", "trace": "not a list"}, "$.trace"),
        ({"runId": "ok", "trace": [], "history": {"a": 1}}, "$.history"),
        ({"runId": "ok", "trace": [float("nan")]}, "$.trace[0]"),
    ],
)
async def test_a_snapshot_that_cannot_be_sent_is_invalid(
    rig: Rig, snapshot: dict[str, Any], path: str
) -> None:
    with pytest.raises(InvalidRun) as caught:
        await rig.hooks.on_run_start(snapshot)
    assert caught.value.errors[0]["path"] == path
    assert rig.writes("ok") == []


async def test_a_lost_answer_to_a_step_is_retried_safely(http_rig: Rig) -> None:
    snapshot = await started(http_rig, "lost", steps=3)
    http_rig.faults.fail(1, status=504, forward=True, method="PATCH")
    await run_steps(http_rig.hooks, snapshot, 1)
    writes = http_rig.writes("lost")
    assert [(w.method, w.status) for w in writes[-2:]] == [("PATCH", 504), ("PATCH", 200)]
    assert writes[-1].body == writes[-2].body
    assert await http_rig.stored("lost") == wire(snapshot)


async def test_after_retries_give_up_the_next_hook_sends_everything_since(http_rig: Rig) -> None:
    snapshot = await started(http_rig, "outage", steps=2)
    http_rig.faults.fail(4, status=503, retry_after="0", method="PATCH")
    with pytest.raises(StoreUnavailable) as caught:
        await http_rig.hooks.on_step_complete(take_step(snapshot))
    assert caught.value.attempts == 4
    assert caught.value.status == 503
    take_step(snapshot)
    await http_rig.hooks.on_step_complete(snapshot)
    body = http_rig.writes("outage")[-1].json()
    assert (body["traceFrom"], len(body["trace"])) == (2, 2)
    assert await http_rig.stored("outage") == wire(snapshot)
