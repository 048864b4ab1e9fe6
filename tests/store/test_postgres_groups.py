"""Group commit in the PostgreSQL store: concurrent writes to one replica share a transaction.

Every write transaction stores one commit mark, so the marks a batch of concurrent writes left
behind count its transactions. A write the rules refuse fails alone; writes to one run in a
group see each other; every write is answered after its group committed. Each accepted write of
a group adds its event row and its notice in the group's transaction; a refused one neither.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from support import make_snapshot

from runstore.client.problems import (
    PreconditionFailed,
    RunNotFound,
    StoreUnavailable,
    TraceGap,
)
from runstore.service.store.postgres import PostgresStore
from runstore.service.store.postgres_writes import CHANNEL, EVENTS_KEPT
from runstore.service.store.records import patch_record, snapshot_record

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

WRITES = 20


@pytest.fixture
async def store(postgres_database: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_database) as opened:
        yield opened


def marks(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM commit_marks").fetchone()
    assert row is not None
    return int(row[0])


async def stored(store: PostgresStore, run_id: str) -> tuple[int, int]:
    """The run's version and trace length."""
    run = await store.get_run(run_id)
    assert run is not None
    return run.version, len(json.loads(run.body)["trace"])


def append(run_id: str, index: int) -> Any:
    return patch_record({"trace": [{"run": run_id, "step": index}], "traceFrom": index})


async def test_concurrent_writes_share_transactions_and_a_refused_one_fails_alone(
    store: PostgresStore, postgres_database: str
) -> None:
    for n in range(WRITES):
        await store.put_run(snapshot_record(make_snapshot(f"run-{n}")))
    before = marks(postgres_database)

    def write(n: int) -> Any:
        # Refused by its own rules, among the others: a stale If-Match, a gap, no run.
        if n == 5:
            return store.patch_run("run-5", append("run-5", 0), if_match=7)
        if n == 9:
            return store.patch_run("run-9", append("run-9", 3))
        if n == WRITES:
            return store.patch_run("absent", append("absent", 0))
        return store.patch_run(f"run-{n}", append(f"run-{n}", 0))

    outcomes = await asyncio.gather(*map(write, range(WRITES + 1)), return_exceptions=True)

    assert isinstance(outcomes[5], PreconditionFailed)
    assert isinstance(outcomes[9], TraceGap)
    assert isinstance(outcomes[-1], RunNotFound)
    for n in set(range(WRITES)) - {5, 9}:
        result = outcomes[n]
        assert not isinstance(result, BaseException), result
        assert (result.version, result.trace_length) == (2, 1)
    assert marks(postgres_database) - before < WRITES, "every write had its own transaction"
    for n in range(WRITES):
        assert await stored(store, f"run-{n}") == ((1, 0) if n in (5, 9) else (2, 1))


async def test_a_write_the_database_refuses_fails_alone_and_its_group_commits(
    store: PostgresStore, postgres_database: str
) -> None:
    """A write the rules accept but PostgreSQL refuses aborts its group's transaction; the
    group's other writes are then applied one by one, and only the refused write fails."""
    for n in range(WRITES):
        await store.put_run(snapshot_record(make_snapshot(f"run-{n}")))
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        # A rule of the database the store does not know of, as a refusal it cannot foresee.
        connection.execute("ALTER TABLE runs ADD CONSTRAINT vetoed CHECK (status <> 'vetoed')")
    try:
        outcomes = await asyncio.gather(
            *(
                store.patch_run(
                    f"run-{n}",
                    patch_record({"status": "vetoed"}) if n == 7 else append(f"run-{n}", 0),
                )
                for n in range(WRITES)
            ),
            return_exceptions=True,
        )
    finally:
        with psycopg.connect(postgres_database, autocommit=True) as connection:
            connection.execute("ALTER TABLE runs DROP CONSTRAINT vetoed")

    assert isinstance(outcomes[7], StoreUnavailable)
    for n in set(range(WRITES)) - {7}:
        result = outcomes[n]
        assert not isinstance(result, BaseException), result
        assert (result.version, result.trace_length) == (2, 1)
    for n in range(WRITES):
        assert await stored(store, f"run-{n}") == ((1, 0) if n == 7 else (2, 1))


async def test_writes_to_one_run_in_a_group_see_each_other(store: PostgresStore) -> None:
    await store.put_run(snapshot_record(make_snapshot("shared")))
    results = await asyncio.gather(
        *(store.patch_run("shared", append("shared", index)) for index in range(WRITES))
    )
    assert sorted(result.version for result in results) == list(range(2, WRITES + 2))
    assert await stored(store, "shared") == (WRITES + 1, WRITES)

    # Deleted and created again, then written, all at once.
    deleted, created, patched = await asyncio.gather(
        store.delete_run("shared"),
        store.put_run(snapshot_record(make_snapshot("shared", steps=2))),
        store.patch_run("shared", append("shared", 2)),
    )
    assert deleted is None
    assert (created.version, created.created) == (1, True)
    assert (patched.version, patched.trace_length) == (2, 3)
    assert await stored(store, "shared") == (2, 3)


async def test_each_accepted_write_of_a_group_adds_its_event_and_its_notice(
    store: PostgresStore, postgres_database: str
) -> None:
    await store.put_run(snapshot_record(make_snapshot("told")))
    await store.put_run(snapshot_record(make_snapshot("gone")))
    patches = EVENTS_KEPT + 10  # enough to cut the oldest rows
    with psycopg.connect(postgres_database, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        outcomes = await asyncio.gather(
            *(store.patch_run("told", append("told", index)) for index in range(patches)),
            store.patch_run("told", append("told", 10_000)),  # a gap: refused
            store.delete_run("gone"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[patches], TraceGap)
        expected = {f"told:{version}" for version in range(2, patches + 2)} | {"gone:deleted"}
        notices = {
            notice.payload for notice in listener.notifies(timeout=10, stop_after=len(expected))
        }
    assert notices == expected
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT run_events.version, kind FROM run_events JOIN runs USING (run_key) "
            "WHERE run_id = 'told' ORDER BY version"
        ).fetchall()
        # The deleted run's rows went with it: every event row belongs to 'told'.
        every = connection.execute("SELECT count(*) FROM run_events")
        assert every.fetchone() == (len(rows),)
    # The last EVENTS_KEPT writes keep their rows, each a patch.
    assert rows == [(version, "patch") for version in range(patches + 2 - EVENTS_KEPT, patches + 2)]
