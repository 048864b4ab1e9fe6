"""The leases migration, forward from the schema before it, on a file and a database with runs.

The runs read back as they were, carry no lease, and take leases, writes under them and claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import make_snapshot
from test_postgres_store import empty_database, query
from test_sqlite_schema import old_database

from runstore.client.problems import LeaseHeld, LeaseLost
from runstore.service.store import RunQuery, RunStore, SQLiteStore
from runstore.service.store.base import ClaimQuery
from runstore.service.store.postgres import PostgresStore
from runstore.service.store.postgres_schema import MIGRATIONS as PG_MIGRATIONS
from runstore.service.store.postgres_schema import SCHEMA_VERSION as PG_VERSION
from runstore.service.store.records import patch_record, snapshot_record

# The schema versions before leases: the leases migration took each backend one version further.
SQLITE_BEFORE_LEASES = 2
PG_BEFORE_LEASES = 3

pytestmark = pytest.mark.anyio
__all__ = ["empty_database"]  # a fixture, imported for the test below

STEP = patch_record({"trace": [{"n": 9}], "traceFrom": 4})


async def check_migrated_runs(store: RunStore) -> None:
    first = await store.get_run("first")
    assert first is not None
    assert first.version == 2
    snapshot = json.loads(first.body)
    assert snapshot["trace"][-1] == {"n": 3}
    assert snapshot["history"] == [{"role": "user", "content": "hi"}]
    page = await store.list_runs(RunQuery())
    assert sorted(json.loads(summary)["runId"] for summary in page.summaries) == [
        "first",
        "second",
    ]
    assert all(json.loads(summary)["lease"] is None for summary in page.summaries)
    # Leases work on the migrated runs: the first is number 1, and it fences writes.
    lease = await store.acquire_lease("first", "w1", 60_000)
    assert lease.lease == 1
    with pytest.raises(LeaseHeld):
        await store.patch_run("first", STEP)
    with pytest.raises(LeaseLost):
        await store.patch_run("first", STEP, lease=2)
    assert (await store.patch_run("first", STEP, lease=1)).trace_length == 5
    # The other run never had a lease; old enough (updated_at 0 or long ago), it is claimable.
    claimed = await store.claim_run(ClaimQuery("c1", 60_000))
    assert claimed is not None
    assert claimed.lease.run_id == "second"
    assert claimed.lease.lease == 1


async def test_a_sqlite_file_before_leases_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    old_database(path, SQLITE_BEFORE_LEASES)
    async with SQLiteStore(path) as store:
        await check_migrated_runs(store)


@pytest.fixture
def database_before_leases(request: pytest.FixtureRequest) -> str:
    """A PostgreSQL database at the schema version before leases, holding two runs."""
    url: str = request.getfixturevalue("empty_database")
    query(
        url,
        "CREATE TABLE schema_version (version integer PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now())",
    )
    # schema_version holds one row per migration applied.
    for version, statements in enumerate(PG_MIGRATIONS[:PG_BEFORE_LEASES], start=1):
        for statement in statements:
            query(url, statement)
        query(url, "INSERT INTO schema_version (version) VALUES (%s)", (version,))
    first = make_snapshot("first", steps=4) | {"history": [{"role": "user", "content": "hi"}]}
    first["trace"][3] = {"n": 3}
    for snapshot, version in ((first, 2), (make_snapshot("second", steps=2), 1)):
        record = snapshot_record(snapshot)
        row: dict[str, Any] = {
            "run_id": record.run_id,
            "status": record.status,
            "started_at": record.started_at,
            "version": version,
            "trace_length": len(record.trace),
            "history_length": None if record.history is None else len(record.history),
            "doc": record.doc,
        }
        query(
            url,
            "INSERT INTO runs (run_id, status, started_at, version, updated_at, trace_length, "
            "history_length, doc) VALUES (%(run_id)s, %(status)s, %(started_at)s, %(version)s, "
            "0, %(trace_length)s, %(history_length)s, %(doc)s)",
            row,
        )
        for table, items in (("steps", record.trace), ("turns", record.history or [])):
            for index, item in enumerate(items):
                query(
                    url,
                    f"INSERT INTO {table} (run_id, idx, item) VALUES (%s, %s, %s)",
                    (record.run_id, index, item),
                )
    return url


@pytest.mark.postgres
async def test_a_postgres_database_before_leases_is_migrated(database_before_leases: str) -> None:
    async with PostgresStore(database_before_leases) as store:
        await check_migrated_runs(store)
    versions = query(database_before_leases, "SELECT version FROM schema_version ORDER BY 1")
    assert versions == [(version,) for version in range(1, PG_VERSION + 1)]
