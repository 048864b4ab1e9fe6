"""GET /runs (summaries, order, filters, keyset paging) and bulk DELETE /runs (retention)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from support import assert_problem, make_snapshot

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000_000
STATUSES = ("running", "completed", "failed", "cancelled")


def spec(n: int) -> dict[str, Any]:
    """Run n of a set where startedAt ties in groups of 7 and statuses rotate."""
    status = STATUSES[n % 4]
    fields: dict[str, Any] = {"status": status, "startedAt": T0 + (n // 7) * 1000}
    if status != "running":
        fields["completedAt"] = T0 + 500_000 + n
    return make_snapshot(f"run-{n:03d}", steps=n % 3, **fields)


def newest_first(snapshots: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(snapshots, key=lambda s: (s["startedAt"], s["runId"]), reverse=True)
    return [s["runId"] for s in ordered]


async def put_all(client: httpx.AsyncClient, snapshots: list[dict[str, Any]]) -> None:
    for snapshot in snapshots:
        response = await client.put(f"/runs/{snapshot['runId']}", json=snapshot)
        assert response.status_code == 201


async def list_all(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> tuple[list[str], list[int]]:
    """Follow nextCursor to the end; the run ids in order and the size of each page."""
    run_ids: list[str] = []
    sizes: list[int] = []
    cursor = None
    for _ in range(1000):
        page_params = dict(params) if cursor is None else {**params, "cursor": cursor}
        response = await client.get("/runs", params=page_params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"runs", "nextCursor"}
        run_ids += [summary["runId"] for summary in page["runs"]]
        sizes.append(len(page["runs"]))
        cursor = page["nextCursor"]
        if cursor is None:
            return run_ids, sizes
    raise AssertionError("the cursor never ran out")


@pytest.fixture
async def runs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """101 runs in order of neither runId nor startedAt, with ties in startedAt."""
    snapshots = [spec(n) for n in range(101)]
    await put_all(client, snapshots[::2] + snapshots[1::2])
    return snapshots


async def test_an_empty_store_lists_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/runs")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"runs": [], "nextCursor": None}


async def test_runs_come_newest_first_with_ties_by_run_id(
    client: httpx.AsyncClient, runs: list[dict[str, Any]]
) -> None:
    response = await client.get("/runs", params={"limit": 1000})

    listed = [summary["runId"] for summary in response.json()["runs"]]
    assert listed == newest_first(runs)
    assert response.json()["nextCursor"] is None


@pytest.mark.parametrize("limit", [1, 7, 10, 50, 100, 101])
async def test_the_cursor_pages_through_every_run_once_in_order(
    client: httpx.AsyncClient, runs: list[dict[str, Any]], limit: int
) -> None:
    listed, sizes = await list_all(client, {"limit": limit})

    assert listed == newest_first(runs)
    assert all(size == limit for size in sizes[:-1])
    assert 1 <= sizes[-1] <= limit


async def test_the_default_page_is_50(
    client: httpx.AsyncClient, runs: list[dict[str, Any]]
) -> None:
    listed, sizes = await list_all(client, {})

    assert sizes == [50, 50, 1]
    assert listed == newest_first(runs)


async def test_a_page_that_ends_the_list_has_no_cursor(client: httpx.AsyncClient) -> None:
    await put_all(client, [spec(n) for n in range(20)])

    _, sizes = await list_all(client, {"limit": 10})

    assert sizes == [10, 10]


async def test_runs_written_between_pages_do_not_repeat_or_skip_older_runs(
    client: httpx.AsyncClient, runs: list[dict[str, Any]]
) -> None:
    first = (await client.get("/runs", params={"limit": 30})).json()
    newer = make_snapshot("run-newer", startedAt=T0 + 10**9)
    await client.put("/runs/run-newer", json=newer)

    rest, _ = await list_all(client, {"limit": 30, "cursor": first["nextCursor"]})

    listed = [summary["runId"] for summary in first["runs"]] + rest
    assert listed == newest_first(runs)


@pytest.mark.parametrize(
    "statuses", [["running"], ["failed"], ["running", "failed"], ["completed", "completed"]]
)
async def test_status_filters_and_may_repeat(
    client: httpx.AsyncClient, runs: list[dict[str, Any]], statuses: list[str]
) -> None:
    listed, _ = await list_all(client, {"status": statuses, "limit": 9})

    assert listed == newest_first([s for s in runs if s["status"] in statuses])


async def test_a_status_nobody_has_lists_nothing(
    client: httpx.AsyncClient, runs: list[dict[str, Any]]
) -> None:
    response = await client.get("/runs", params={"status": "paused"})

    assert response.json() == {"runs": [], "nextCursor": None}


@pytest.mark.parametrize(
    "bounds",
    [
        {"startedAfter": T0 + 5000},
        {"startedBefore": T0 + 5000},
        {"startedAfter": T0 + 2000, "startedBefore": T0 + 9000},
        {"startedAfter": T0 + 2000, "startedBefore": T0 + 3000},
        {"startedAfter": T0 + 9000, "startedBefore": T0 + 2000},
    ],
)
async def test_started_bounds_are_exclusive(
    client: httpx.AsyncClient, runs: list[dict[str, Any]], bounds: dict[str, int]
) -> None:
    listed, _ = await list_all(client, {**bounds, "status": ["running", "completed"], "limit": 4})

    after = bounds.get("startedAfter", -1)
    before = bounds.get("startedBefore", 2**62)
    expected = [
        s
        for s in runs
        if after < s["startedAt"] < before and s["status"] in ("running", "completed")
    ]
    assert listed == newest_first(expected)


async def test_a_summary_is_the_snapshot_without_trace_history_and_plan(
    client: httpx.AsyncClient,
) -> None:
    snapshot = make_snapshot(
        "run-1",
        steps=4,
        history=[{"role": "user"}],
        plan={"goal": "x"},
        text="t",
        error="e",
        completedAt=T0 + 1,
        status="failed",
        agentVersion="2.0",
        nothing=None,
    )
    before = time.time_ns() // 1_000_000
    await client.put("/runs/run-1", json=snapshot)
    await client.patch("/runs/run-1", json={"trace": [{"n": 4}], "traceFrom": 4})
    after = time.time_ns() // 1_000_000

    (summary,) = (await client.get("/runs")).json()["runs"]

    assert "trace" not in summary
    assert "history" not in summary
    assert "plan" not in summary
    assert summary["traceLength"] == 5
    assert summary["version"] == 2
    assert type(summary["updatedAt"]) is int
    assert before <= summary["updatedAt"] <= after
    assert summary["lease"] is None
    store_fields = ("traceLength", "version", "updatedAt", "lease")
    rest = {k: v for k, v in summary.items() if k not in store_fields}
    assert rest == {k: v for k, v in snapshot.items() if k not in ("trace", "history", "plan")}


async def test_optional_fields_absent_from_a_run_are_absent_from_its_summary(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1"))

    (summary,) = (await client.get("/runs")).json()["runs"]

    assert not {"completedAt", "text", "error"} & summary.keys()


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 1001}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"startedAfter": -1}, "query.startedAfter"),
        ({"startedBefore": "yesterday"}, "query.startedBefore"),
        ({"status": "Not A Status"}, "query.status"),
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"cursor": "W10"}, "query.cursor"),
    ],
)
async def test_invalid_query_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any], path: str
) -> None:
    response = await client.get("/runs", params=params)

    problem = assert_problem(response, 422, "invalid-fields")
    assert any(error["path"].startswith(path) for error in problem["errors"])


async def test_the_largest_page_is_1000(client: httpx.AsyncClient) -> None:
    response = await client.get("/runs", params={"limit": 1000})

    assert response.status_code == 200


# Bulk retention


@pytest.mark.parametrize(
    "bounds",
    [
        {"completedBefore": T0 + 500_050},
        {"startedBefore": T0 + 4000},
        {"completedBefore": T0 + 500_090, "startedBefore": T0 + 6000},
        {"completedBefore": T0},
    ],
)
async def test_bulk_delete_removes_every_run_matching_all_bounds(
    client: httpx.AsyncClient, runs: list[dict[str, Any]], bounds: dict[str, int]
) -> None:
    completed_before = bounds.get("completedBefore")
    started_before = bounds.get("startedBefore")

    def doomed(snapshot: dict[str, Any]) -> bool:
        if completed_before is not None and not (
            snapshot.get("completedAt") is not None and snapshot["completedAt"] < completed_before
        ):
            return False
        return started_before is None or snapshot["startedAt"] < started_before

    response = await client.delete("/runs", params=bounds)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"deleted": sum(map(doomed, runs))}
    listed, _ = await list_all(client, {"limit": 1000})
    assert listed == newest_first([s for s in runs if not doomed(s)])
    for snapshot in runs[:12]:
        status = (await client.get(f"/runs/{snapshot['runId']}")).status_code
        assert status == (404 if doomed(snapshot) else 200)


async def test_bulk_delete_never_touches_an_unfinished_run_by_completed_before(
    client: httpx.AsyncClient, runs: list[dict[str, Any]]
) -> None:
    await client.delete("/runs", params={"completedBefore": 2**62})

    listed, _ = await list_all(client, {"limit": 1000})

    assert listed == newest_first([s for s in runs if s["status"] == "running"])


async def test_bulk_delete_of_nothing_deletes_nothing(
    client: httpx.AsyncClient, runs: list[dict[str, Any]]
) -> None:
    response = await client.delete("/runs", params={"startedBefore": T0})

    assert response.json() == {"deleted": 0}
    assert len((await client.get("/runs", params={"limit": 1000})).json()["runs"]) == 101


@pytest.mark.parametrize(
    "params", [{}, {"completedBefore": -5}, {"startedBefore": "soon"}, {"status": "running"}]
)
async def test_bulk_delete_needs_a_valid_bound(
    client: httpx.AsyncClient, runs: list[dict[str, Any]], params: dict[str, Any]
) -> None:
    response = await client.delete("/runs", params=params)

    assert_problem(response, 422, "invalid-fields")
    assert len((await client.get("/runs", params={"limit": 1000})).json()["runs"]) == 101
