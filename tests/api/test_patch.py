"""PATCH: send only what is new (traceFrom / historyFrom appends, field replacement)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from support import assert_problem, make_snapshot

pytestmark = pytest.mark.anyio

HISTORY = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def step(n: int, **extra: Any) -> dict[str, Any]:
    return {"step": n, "output": f"result {n}", **extra}


async def stored(client: httpx.AsyncClient, run_id: str = "run-1") -> dict[str, Any]:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    run: dict[str, Any] = response.json()
    return run


@pytest.fixture
async def run(client: httpx.AsyncClient) -> dict[str, Any]:
    """A stored unfinished run with 5 steps and 2 history turns."""
    snapshot = make_snapshot("run-1", steps=5, history=HISTORY, plan={"goal": "weather"})
    response = await client.put("/runs/run-1", json=snapshot)
    assert response.status_code == 201
    return snapshot


async def test_trace_from_the_stored_length_appends(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    response = await client.patch(
        "/runs/run-1", json={"trace": [step(5), step(6)], "traceFrom": 5, "stepIndex": 7}
    )

    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert response.json() == {"runId": "run-1", "version": 2, "traceLength": 7}
    after = await stored(client)
    assert after["trace"] == [*run["trace"], step(5), step(6)]
    assert after["stepIndex"] == 7
    assert after["history"] == HISTORY


async def test_each_patch_raises_the_version_by_one(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    for n in range(5, 15):
        response = await client.patch("/runs/run-1", json={"trace": [step(n)], "traceFrom": n})
        assert response.json() == {"runId": "run-1", "version": n - 3, "traceLength": n + 1}

    assert (await client.head("/runs/run-1")).headers["etag"] == '"11"'
    assert [item["step"] for item in (await stored(client))["trace"]] == list(range(15))


async def test_trace_from_k_keeps_the_first_k_and_replaces_after(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    replacement = [step(3, retried=True), step(4, retried=True), step(5)]

    response = await client.patch("/runs/run-1", json={"trace": replacement, "traceFrom": 3})

    assert response.json()["traceLength"] == 6
    assert (await stored(client))["trace"] == [*run["trace"][:3], *replacement]


async def test_an_empty_append_at_the_end_changes_nothing_but_the_version(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    response = await client.patch("/runs/run-1", json={"trace": [], "traceFrom": 5})

    assert response.json() == {"runId": "run-1", "version": 2, "traceLength": 5}
    assert await stored(client) == run


@pytest.mark.parametrize(
    ("items", "start", "length"), [("trace", "traceFrom", 5), ("history", "historyFrom", 2)]
)
async def test_starting_past_the_stored_end_is_a_gap(
    client: httpx.AsyncClient, run: dict[str, Any], items: str, start: str, length: int
) -> None:
    response = await client.patch("/runs/run-1", json={items: [{"n": 1}], start: length + 1})

    problem = assert_problem(response, 409, "trace-gap")
    assert problem["type"].endswith("trace-gap")
    assert await stored(client) == run


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"trace": [{"n": 1}]}, "$.traceFrom"),
        ({"traceFrom": 5}, "$.trace"),
        ({"history": [{"role": "user"}]}, "$.historyFrom"),
        ({"historyFrom": 2}, "$.history"),
        ({"history": None, "historyFrom": 0}, "$.history"),
        ({"trace": [], "traceFrom": -1}, "$.traceFrom"),
        ({"trace": [], "traceFrom": "5"}, "$.traceFrom"),
        ({"trace": {"n": 1}, "traceFrom": 5}, "$.trace"),
        ({"history": [1], "historyFrom": 2}, "$.history[0]"),
        ({"status": None}, "$.status"),
        ({"usage": None}, "$.usage"),
        ({"stepIndex": 1.0}, "$.stepIndex"),
        ({"traceLength": 3}, "$.traceLength"),
    ],
)
async def test_a_patch_that_does_not_say_what_it_means_is_422(
    client: httpx.AsyncClient, run: dict[str, Any], body: dict[str, Any], path: str
) -> None:
    response = await client.patch("/runs/run-1", json=body)

    problem = assert_problem(response, 422, "invalid-fields")
    assert path in [error["path"] for error in problem["errors"]]
    assert await stored(client) == run


async def test_history_from_appends_and_replaces_turns(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    turn = {"role": "tool", "content": "18°C"}
    await client.patch("/runs/run-1", json={"history": [turn], "historyFrom": 2})
    assert (await stored(client))["history"] == [*HISTORY, turn]

    edited = {"role": "assistant", "content": "hello again"}
    await client.patch("/runs/run-1", json={"history": [edited], "historyFrom": 1})

    assert (await stored(client))["history"] == [HISTORY[0], edited]


async def test_history_starts_at_zero_on_a_run_without_one(client: httpx.AsyncClient) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1"))
    assert_problem(
        await client.patch("/runs/run-1", json={"history": [HISTORY[0]], "historyFrom": 1}),
        409,
        "trace-gap",
    )

    response = await client.patch("/runs/run-1", json={"history": HISTORY, "historyFrom": 0})

    assert response.status_code == 200
    assert (await stored(client))["history"] == HISTORY


async def test_history_may_become_empty_but_still_present(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    await client.patch("/runs/run-1", json={"history": [], "historyFrom": 0})

    assert (await stored(client))["history"] == []


@pytest.mark.parametrize("field", ["plan", "text", "error", "history"])
async def test_null_clears_an_optional_field(client: httpx.AsyncClient, field: str) -> None:
    snapshot = make_snapshot(
        "run-1",
        status="failed",
        plan={"goal": "x"},
        text="partial",
        error="boom",
        history=HISTORY,
    )
    await client.put("/runs/run-1", json=snapshot)

    response = await client.patch("/runs/run-1", json={field: None})

    assert response.status_code == 200
    after = await stored(client)
    assert field not in after
    expected = {name: value for name, value in snapshot.items() if name != field}
    assert after == {name: value for name, value in expected.items() if value is not None}


async def test_fields_sent_replace_the_stored_ones_whole(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    changes = {
        "status": "completed",
        "completedAt": 1_700_000_050_000,
        "usage": {"totalTokens": 99},
        "plan": {"replaced": True},
        "stepIndex": 9,
        "iterations": 4,
        "revisions": 2,
        "text": "Sunny, 18°C.",
        "input": "rewritten",
        "startedAt": 1_600_000_000_000,
    }

    response = await client.patch("/runs/run-1", json=changes)

    assert response.json() == {"runId": "run-1", "version": 2, "traceLength": 5}
    assert await stored(client) == {**run, **changes}


async def test_unknown_fields_are_added_replaced_and_kept_when_null(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", tags=["a"], owner={"team": 1}))

    await client.patch("/runs/run-1", json={"tags": ["b", "c"], "owner": None, "newField": 1.5})

    after = await stored(client)
    assert after["tags"] == ["b", "c"]
    assert "owner" in after
    assert after["owner"] is None
    assert after["newField"] == 1.5


async def test_the_body_may_repeat_the_run_id(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    response = await client.patch("/runs/run-1", json={"runId": "run-1", "iterations": 3})

    assert response.status_code == 200
    assert (await stored(client))["iterations"] == 3


async def test_an_empty_patch_is_a_write(client: httpx.AsyncClient, run: dict[str, Any]) -> None:
    response = await client.patch("/runs/run-1", json={})

    assert response.json() == {"runId": "run-1", "version": 2, "traceLength": 5}
    assert await stored(client) == run


@pytest.mark.parametrize(
    "body",
    [
        {"trace": [step(5), step(6)], "traceFrom": 5, "stepIndex": 7},
        {"trace": [step(4, again=True)], "traceFrom": 4, "history": [], "historyFrom": 2},
        {"history": [{"role": "tool"}], "historyFrom": 1, "plan": None, "usage": {"n": 1}},
        {"status": "completed", "completedAt": 1_700_000_100_000, "text": "done"},
    ],
)
async def test_resending_the_same_patch_gives_the_same_run(
    client: httpx.AsyncClient, run: dict[str, Any], body: dict[str, Any]
) -> None:
    first = await client.patch("/runs/run-1", json=body)
    once = await stored(client)

    retry = await client.patch("/runs/run-1", json=body)

    assert first.status_code == retry.status_code == 200
    assert retry.json()["traceLength"] == first.json()["traceLength"]
    assert retry.json()["version"] == first.json()["version"] + 1
    assert await stored(client) == once


async def test_appends_build_the_same_run_as_one_put(client: httpx.AsyncClient) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", steps=1))
    await client.patch("/runs/run-1", json={"trace": [step(1), step(2)], "traceFrom": 1})
    await client.patch("/runs/run-1", json={"history": HISTORY, "historyFrom": 0})

    built = (await client.get("/runs/run-1")).json()

    whole = {**make_snapshot("run-1", steps=1), "trace": [step(0), step(1), step(2)]}
    assert json.dumps(built, sort_keys=True) == json.dumps(
        {**whole, "history": HISTORY}, sort_keys=True
    )
