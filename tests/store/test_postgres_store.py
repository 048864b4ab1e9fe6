"""The PostgreSQL store itself: schema and migrations, what a write touches, retries, outages."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from support import make_snapshot

from runstore.client.problems import StoreUnavailable
from runstore.service.store import RunQuery, RunStore, SQLiteStore
from runstore.service.store.postgres import PostgresStore
from runstore.service.store.postgres_schema import SCHEMA_VERSION
from runstore.service.store.records import patch_record, snapshot_record

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

# The server the session's database lives on (the ``postgres_url`` fixture skips without it).
POSTGRES_URL_VARIABLE = "RUNSTORE_TEST_POSTGRES_URL"


def database_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return urlsplit(os.environ[POSTGRES_URL_VARIABLE])._replace(path=f"/{name}").geturl()


def admin_connection() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(os.environ[POSTGRES_URL_VARIABLE], autocommit=True, connect_timeout=5)


@pytest.fixture
def empty_database(postgres_url: str) -> Iterator[str]:
    """A database of its own, with no schema yet (``postgres_url`` skips or fails first)."""
    name = f"runstore_test_{secrets.token_hex(6)}"
    with admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with admin_connection() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def database_name(url: str) -> str:
    name: str = conninfo_to_dict(url)["dbname"]
    return name


def query(url: str, statement: Any, params: Any = ()) -> list[tuple[Any, ...]]:
    """The rows of one statement (none for a statement that returns none)."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description is not None else []


def kill_connections(url: str) -> int:
    """pg_terminate_backend on every session of the database ``url`` names; how many."""
    with admin_connection() as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database_name(url),),
        ).fetchall()
    return len(rows)


def allow_connections(url: str, allowed: bool) -> None:
    with admin_connection() as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database_name(url)), sql.Literal(allowed)
            )
        )


@pytest.fixture
async def postgres_store(postgres_database: str) -> AsyncIterator[PostgresStore]:
    async with PostgresStore(postgres_database) as store:
        yield store


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    """Each backend's store, opened: the same test holds both to the same rules."""
    backend: RunStore
    if request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "runs.db")
    else:
        backend = PostgresStore(request.getfixturevalue("postgres_database"))
    async with backend:
        yield backend


# The schema.


async def test_open_creates_the_schema_and_records_its_version(empty_database: str) -> None:
    async with PostgresStore(empty_database) as store:
        await store.put_run(snapshot_record(make_snapshot("kept", steps=2)))
    async with PostgresStore(empty_database) as store:
        stored = await store.get_run("kept")
        assert stored is not None
        assert stored.version == 1
        await store.close()  # closing twice is harmless
    versions = query(empty_database, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]


def _open_and_write(url: str, run_id: str, start: Any) -> None:
    async def main() -> None:
        start.wait(30)
        async with PostgresStore(url) as store:
            await store.put_run(snapshot_record(make_snapshot(run_id)))

    asyncio.run(main())


@pytest.mark.slow
def test_replicas_starting_together_create_the_schema_once(empty_database: str) -> None:
    context = multiprocessing.get_context("spawn")
    replicas = 4
    start = context.Barrier(replicas)
    processes = [
        context.Process(target=_open_and_write, args=(empty_database, f"replica-{i}", start))
        for i in range(replicas)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * replicas
    versions = query(empty_database, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(version,) for version in range(1, SCHEMA_VERSION + 1)]
    assert query(empty_database, "SELECT run_id FROM runs ORDER BY run_id") == [
        (f"replica-{i}",) for i in range(replicas)
    ]


async def test_a_schema_newer_than_this_runstore_is_refused(empty_database: str) -> None:
    async with PostgresStore(empty_database):
        pass
    query(empty_database, "INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnavailable, match="newer than this runstore"):
        await PostgresStore(empty_database).open()


async def test_a_database_whose_text_is_not_utf8_is_refused(postgres_url: str) -> None:
    name = f"runstore_test_{secrets.token_hex(6)}"
    with admin_connection() as admin:
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE template0"
            ).format(sql.Identifier(name))
        )
    try:
        url = database_url(name)
        with pytest.raises(StoreUnavailable, match="needs UTF8"):
            await PostgresStore(url).open()
    finally:
        with admin_connection() as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_open_says_which_database_it_cannot_reach() -> None:
    store = PostgresStore("postgresql://runstore:secret@127.0.0.1:1/runs_db", startup_timeout=0.5)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "Cannot connect to PostgreSQL at 127.0.0.1:1/runs_db" in caught.value.detail
    assert "secret" not in caught.value.detail
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.get_run("any")


# What a write touches.


def _row_versions(url: str, table: str, run_id: str) -> dict[int, str]:
    """idx -> xmin: the transaction that wrote each item row's current version."""
    rows = query(
        url,
        sql.SQL(
            "SELECT idx, {table}.xmin::text FROM {table} JOIN runs USING (run_key) "
            "WHERE run_id = %s"
        ).format(table=sql.Identifier(table)),
        (run_id,),
    )
    return dict(rows)


async def test_an_append_writes_only_the_new_items(
    postgres_store: PostgresStore, postgres_database: str
) -> None:
    history = [{"role": "user", "content": "hi"}]
    await postgres_store.put_run(snapshot_record(make_snapshot(steps=5, history=history)))
    steps_before = _row_versions(postgres_database, "steps", "run-1")
    turns_before = _row_versions(postgres_database, "turns", "run-1")

    await postgres_store.patch_run(
        "run-1", patch_record({"trace": [{"step": 5}], "traceFrom": 5, "stepIndex": 6})
    )
    steps_after = _row_versions(postgres_database, "steps", "run-1")
    assert {idx: steps_after[idx] for idx in range(5)} == steps_before
    assert steps_after[5] not in steps_before.values()
    assert _row_versions(postgres_database, "turns", "run-1") == turns_before

    # A whole PUT that repeats the stored steps rewrites none of them either.
    snapshot = make_snapshot(steps=5, history=history)
    snapshot["trace"].append({"step": 5})
    await postgres_store.put_run(snapshot_record(snapshot))
    assert _row_versions(postgres_database, "steps", "run-1") == steps_after
    assert _row_versions(postgres_database, "turns", "run-1") == turns_before


async def test_run_ids_sort_byte_by_byte_whatever_the_collation(store: RunStore) -> None:
    ids = ["a", "B", "Z9", "a-", "a~", "aA", "a.b", "0", "a:1", "a@", "b"]
    for run_id in ids:
        await store.put_run(snapshot_record(make_snapshot(run_id)))
    seen: list[str] = []
    query_ = RunQuery(limit=3)
    while True:
        page = await store.list_runs(query_)
        seen += [summary.split('"runId":"')[1].split('"')[0] for summary in page.summaries]
        if page.next_cursor is None:
            break
        query_ = RunQuery(limit=3, cursor=page.next_cursor)
    assert seen == sorted(ids, reverse=True)


# Failures and recovery.


async def test_lost_connections_are_replaced_without_failing_a_request(
    postgres_store: PostgresStore, postgres_database: str
) -> None:
    await postgres_store.put_run(snapshot_record(make_snapshot(steps=1)))
    assert kill_connections(postgres_database) >= 1
    result = await postgres_store.patch_run(
        "run-1", patch_record({"trace": [{"step": 1}], "traceFrom": 1})
    )
    assert (result.version, result.trace_length) == (2, 2)
    assert kill_connections(postgres_database) >= 1
    stored = await postgres_store.get_run("run-1")
    assert stored is not None
    assert stored.version == 2
    await postgres_store.check_ready()


@pytest.mark.slow
async def test_an_outage_answers_storage_unavailable_then_recovers(
    postgres_database: str,
) -> None:
    async with PostgresStore(postgres_database, operation_deadline=0.5) as store:
        await store.put_run(snapshot_record(make_snapshot(steps=1)))
        allow_connections(postgres_database, False)
        try:
            kill_connections(postgres_database)
            with pytest.raises(StoreUnavailable):
                await store.get_run("run-1")
            with pytest.raises(StoreUnavailable):
                await store.patch_run("run-1", patch_record({"trace": [{}], "traceFrom": 1}))
            with pytest.raises(StoreUnavailable):
                await store.check_ready()
        finally:
            allow_connections(postgres_database, True)
        deadline = time.monotonic() + 30
        while True:
            try:
                await store.check_ready()
                break
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        result = await store.patch_run("run-1", patch_record({"trace": [{}], "traceFrom": 1}))
        assert (result.version, result.trace_length) == (2, 2)


async def test_a_lost_commit_is_answered_by_its_mark_not_by_its_transaction_id(
    postgres_store: PostgresStore, postgres_database: str
) -> None:
    mark = (
        "INSERT INTO commit_marks (token, at) VALUES (%s, 0) RETURNING pg_current_xact_id()::text"
    )
    tokens = {outcome: uuid4() for outcome in ("committed", "aborted", "reused", "future")}
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        with connection.transaction():
            committed = connection.execute(mark, (tokens["committed"],)).fetchone()[0]
        # A transaction that rolls back: its id was assigned, its mark never committed.
        connection.execute("BEGIN")
        aborted = connection.execute(mark, (tokens["aborted"],)).fetchone()[0]
        connection.execute("ROLLBACK")
        # As after crash recovery: the lost write's id now belongs to a transaction that
        # committed without the write's mark.
        with connection.transaction():
            reused = connection.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    # An id not handed out again (yet) since the crash.
    future = str(int(reused) + 1_000_000)
    until = time.monotonic() + 5
    assert await postgres_store._pool._commit_outcome(committed, tokens["committed"], until) is True
    assert await postgres_store._pool._commit_outcome(aborted, tokens["aborted"], until) is False
    assert await postgres_store._pool._commit_outcome(reused, tokens["reused"], until) is False
    assert await postgres_store._pool._commit_outcome(future, tokens["future"], until) is False
