"""Bulk retention in batches (issue 14): every matching run is deleted and counted, nothing
else is, and other clients' writes go between the batches instead of waiting for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import make_snapshot

from runstore.service.store import RunQuery, RunStore, SQLiteStore
from runstore.service.store.base import RETENTION_BATCH_ROWS, retention_batch
from runstore.service.store.records import snapshot_record

pytestmark = pytest.mark.anyio

STEPS = 200
OLD_RUNS = 4 * RETENTION_BATCH_ROWS // STEPS  # about four batches' worth


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    backend: RunStore
    if request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "runs.db")
    else:
        from runstore.service.store.postgres import PostgresStore

        backend = PostgresStore(request.getfixturevalue("postgres_database"))
    async with backend:
        yield backend


async def put_runs(store: RunStore, prefix: str, count: int, **fields: object) -> None:
    for number in range(count):
        snapshot = make_snapshot(f"{prefix}-{number}", steps=STEPS, **fields)
        await store.put_run(snapshot_record(snapshot))


async def run_ids(store: RunStore) -> set[str]:
    page = await store.list_runs(RunQuery(limit=1000))
    return {summary.split('"runId":"', 1)[1].split('"', 1)[0] for summary in page.summaries}


def test_a_batch_takes_runs_while_their_rows_fit_and_always_one() -> None:
    assert retention_batch([("a", 3), ("b", 3), ("c", 3)], rows=7) == ["a", "b"]
    assert retention_batch([("huge", 50), ("b", 1)], rows=7) == ["huge"]
    assert retention_batch([], rows=7) == []


async def test_every_matching_run_is_deleted_and_counted_across_batches(store: RunStore) -> None:
    finished = {"status": "completed", "completedAt": 1_700_000_100_000}
    await put_runs(store, "old", OLD_RUNS, **finished)
    await put_runs(store, "running", 3)
    await put_runs(store, "recent", 2, status="completed", completedAt=1_800_000_000_000)
    deleted = await store.delete_runs(completed_before=1_700_000_200_000)
    assert deleted == OLD_RUNS
    assert await run_ids(store) == {"running-0", "running-1", "running-2", "recent-0", "recent-1"}
    # Run again: nothing left to delete.
    assert await store.delete_runs(completed_before=1_700_000_200_000) == 0


async def test_writes_arriving_during_a_bulk_delete_are_answered_before_it_ends(
    store: RunStore,
) -> None:
    await put_runs(store, "old", OLD_RUNS, status="completed", completedAt=1_700_000_100_000)
    deleting = asyncio.ensure_future(store.delete_runs(completed_before=1_700_000_200_000))
    # Wait until the first batch is committed (polled: the store has no event to wait on),
    # then write another run.
    while len(await run_ids(store)) == OLD_RUNS:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    result = await store.put_run(snapshot_record(make_snapshot("meanwhile", steps=1)))
    assert result.created
    # One transaction would have deleted all or nothing: here the write went between batches.
    remaining = await run_ids(store) - {"meanwhile"}
    assert 0 < len(remaining) < OLD_RUNS
    assert not deleting.done()
    assert await deleting == OLD_RUNS
    assert await run_ids(store) == {"meanwhile"}
