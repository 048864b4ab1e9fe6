"""Deleting a large run (issue 14): the run is gone from its first transaction, its items are
purged in bounded batches with other writes between them, a run re-created under its id never
sees them, and items left by a delete that stopped half-way are purged when the store opens."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support import make_snapshot
from test_postgres_store import query

from runstore.service.store import RunStore, SQLiteStore
from runstore.service.store.base import PURGE_BATCH_ROWS
from runstore.service.store.records import snapshot_record

pytestmark = pytest.mark.anyio

BATCHES = 20
STEPS = BATCHES * PURGE_BATCH_ROWS


class Backend:
    """A store to open (again) and the SQL to look at its rows with."""

    def __init__(self, open_store: Callable[[], RunStore], rows: Callable[[str], Any]) -> None:
        self.open = open_store
        self.rows = rows

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "runs.db"

        def sqlite_rows(sql: str) -> Any:
            connection = sqlite3.connect(path)
            try:
                return connection.execute(sql).fetchall()
            finally:
                connection.close()

        return Backend(lambda: SQLiteStore(path), sqlite_rows)
    from runstore.service.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_database")
    return Backend(lambda: PostgresStore(url), lambda sql: query(url, sql))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    async with backend.open() as opened:
        yield opened


def large_run(run_id: str = "large") -> Any:
    snapshot = make_snapshot(run_id) | {
        "trace": list(range(STEPS)),
        "history": [{"role": "user", "content": str(n)} for n in range(3)],
    }
    return snapshot_record(snapshot)


async def test_a_large_run_is_gone_at_once_and_purged_in_batches_between_other_writes(
    store: RunStore, backend: Backend
) -> None:
    await store.put_run(large_run())
    await store.put_run(snapshot_record(make_snapshot("other", steps=2)))
    deleting = asyncio.ensure_future(store.delete_run("large"))
    # Wait until the run's row is deleted (polled: the store has no event to wait on).
    while await store.get_version("large") is not None:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    # Re-created under the same id while the old items are being purged: it holds only its own.
    created = await store.put_run(snapshot_record(make_snapshot("large", steps=1)))
    assert created.created
    again = await store.get_run("large")
    assert again is not None
    assert b'"trace":[{"step":0,"output":"result 0"}]' in again.body
    # The write was answered between the batches: some of the old items are still there.
    assert not deleting.done()
    assert backend.count("steps") > 3
    await deleting
    # Only the live runs' items are left.
    assert backend.count("steps") == 3
    assert backend.count("turns") == 0
    assert backend.count("deleted_runs") == 0


async def test_a_small_run_goes_with_its_items_in_one_transaction(
    store: RunStore, backend: Backend
) -> None:
    await store.put_run(snapshot_record(make_snapshot("small", steps=PURGE_BATCH_ROWS)))
    await store.delete_run("small")
    assert backend.count("steps") == 0
    assert backend.count("deleted_runs") == 0


async def test_items_a_stopped_delete_left_are_purged_when_the_store_opens(
    backend: Backend,
) -> None:
    async with backend.open() as store:
        await store.put_run(large_run())
        await stop_after_first_transaction(store, "large")
        assert await store.get_run("large") is None
        assert backend.count("deleted_runs") == 1
        assert backend.count("steps") == STEPS
    async with backend.open() as store:
        assert backend.count("steps") == 0
        assert backend.count("turns") == 0
        assert backend.count("deleted_runs") == 0
        assert await store.get_run("large") is None


async def stop_after_first_transaction(store: RunStore, run_id: str) -> None:
    """Delete the run as a delete does, without purging its items: as a store stopped right
    after the delete's first transaction leaves it."""
    if isinstance(store, SQLiteStore):
        from runstore.service.store.sqlite_deletes import delete_run

        await store.engine.writer.write_async(lambda c: delete_run(run_id, None, None, c))
    else:
        from runstore.service.store.postgres_writes import DeleteRun

        await store._submit(DeleteRun(run_id, None))  # type: ignore[attr-defined]
