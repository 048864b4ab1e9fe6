"""Deleting a large run (issue 14): the run is gone from its first transaction, its items are
purged in bounded batches with other writes between them, a run re-created under its id never
sees them, and items left by a delete that stopped half-way, or whose purge failed, are purged
when the store opens or the DELETE is retried."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import make_snapshot, with_state
from test_postgres_store import query

from runstore.service import Settings, create_app
from runstore.service.store import RunStore, SQLiteStore
from runstore.service.store.base import PURGE_BATCH_ROWS
from runstore.service.store.records import snapshot_record

pytestmark = pytest.mark.anyio

BATCHES = 20
STEPS = BATCHES * PURGE_BATCH_ROWS


class Backend:
    """A store to open (again) and the SQL to look at its rows with."""

    def __init__(
        self, open_store: Callable[[], RunStore], rows: Callable[[str], Any], *, sqlite: bool
    ) -> None:
        self.open = open_store
        self.rows = rows
        self.sqlite = sqlite

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

        return Backend(lambda: SQLiteStore(path), sqlite_rows, sqlite=True)
    from runstore.service.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_database")
    return Backend(lambda: PostgresStore(url), lambda sql: query(url, sql), sqlite=False)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[RunStore]:
    async with backend.open() as opened:
        yield opened


def large_snapshot(run_id: str = "large") -> dict[str, Any]:
    return make_snapshot(run_id) | {
        "trace": list(range(STEPS)),
        "history": [{"role": "user", "content": str(n)} for n in range(3)],
    }


def large_run(run_id: str = "large") -> Any:
    return snapshot_record(large_snapshot(run_id))


@asynccontextmanager
async def served(backend: Backend) -> AsyncIterator[tuple[httpx.AsyncClient, RunStore]]:
    """The app over a newly opened store of ``backend``, and the store."""
    store = backend.open()
    app = create_app(Settings(tokens=None), store=store)
    async with (
        app.router.lifespan_context(app) as state,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=with_state(app, state)), base_url="http://runstore"
        ) as http,
    ):
        yield http, store


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


# A purge batch that fails: every delete of steps refused, as a full or failing disk would.
_REFUSE_SQLITE = (
    "CREATE TRIGGER refuse_purge BEFORE DELETE ON steps "
    "BEGIN SELECT RAISE(ABORT, 'the disk refused'); END",
)
_REFUSE_POSTGRES = (
    "CREATE OR REPLACE FUNCTION refuse_purge() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN RAISE EXCEPTION 'the disk refused'; END $$",
    "CREATE TRIGGER refuse_purge BEFORE DELETE ON steps "
    "FOR EACH ROW EXECUTE FUNCTION refuse_purge()",
)


def refuse_purges(backend: Backend, store: RunStore) -> None:
    for statement in _REFUSE_SQLITE if isinstance(store, SQLiteStore) else _REFUSE_POSTGRES:
        backend.rows(statement)


def allow_purges(backend: Backend) -> None:
    if backend.sqlite:
        backend.rows("DROP TRIGGER IF EXISTS refuse_purge")
    else:
        backend.rows("DROP FUNCTION IF EXISTS refuse_purge() CASCADE")


@pytest.fixture
def purging(backend: Backend) -> Iterator[Backend]:
    """``backend``, purges allowed again at the end whatever happened (the PostgreSQL database
    outlives the test)."""
    yield backend
    allow_purges(backend)


async def delete_with_failing_purge(
    http: httpx.AsyncClient, backend: Backend, store: RunStore
) -> None:
    """PUT a large run, then DELETE it while every purge batch fails: the DELETE is answered as
    done (the run is gone) and its items wait in ``deleted_runs``."""
    assert (await http.put("/runs/large", json=large_snapshot())).status_code == 201
    refuse_purges(backend, store)
    response = await http.delete("/runs/large")
    assert response.status_code == 204
    assert (await http.get("/runs/large")).status_code == 404
    assert backend.count("deleted_runs") == 1
    assert backend.count("steps") == STEPS


async def test_a_failing_purge_leaves_the_delete_answered_and_a_retry_finishes_it(
    purging: Backend,
) -> None:
    backend = purging
    async with served(backend) as (http, store):
        await delete_with_failing_purge(http, backend, store)
        allow_purges(backend)
        retry = await http.delete("/runs/large")
        assert retry.status_code == 404
        assert backend.count("steps") == 0
        assert backend.count("turns") == 0
        assert backend.count("deleted_runs") == 0


async def test_a_failing_purge_is_finished_when_the_store_opens_next(purging: Backend) -> None:
    backend = purging
    async with served(backend) as (http, store):
        await delete_with_failing_purge(http, backend, store)
    allow_purges(backend)
    async with served(backend) as (http, _):
        assert backend.count("steps") == 0
        assert backend.count("deleted_runs") == 0
        assert (await http.get("/runs/large")).status_code == 404
