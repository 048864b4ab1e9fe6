"""Leases and events together, on each backend's store: a write under a lease is an event whose
summary carries the lease; taking, renewing and releasing a lease, and a claim, are not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import make_snapshot

from runstore.service.store.base import ClaimQuery, RunStore
from runstore.service.store.changes import Change
from runstore.service.store.postgres import PostgresStore
from runstore.service.store.records import patch_record, snapshot_record
from runstore.service.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


class Recorder:
    """A change listener that watches every run and keeps what it is told."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self._loop = asyncio.get_running_loop()
        self._published = asyncio.Event()

    def publish(self, changes: list[Change]) -> None:
        self.changes += changes
        self._published.set()

    def publish_threadsafe(self, changes: list[Change]) -> None:
        self._loop.call_soon_threadsafe(self.publish, changes)

    def known_version(self, run_id: str) -> int | None:
        versions = [change.version for change in self.changes if change.run_id == run_id]
        return max(versions, default=0)

    @property
    def following_all(self) -> bool:
        return True

    def watched_runs(self) -> list[str]:
        return sorted({change.run_id for change in self.changes})

    async def wait_for_version(self, run_id: str, version: int) -> None:
        async with asyncio.timeout(30):
            while self.known_version(run_id) != version:
                self._published.clear()
                await self._published.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunStore]:
    opened: RunStore
    if request.param == "postgres":
        opened = PostgresStore(request.getfixturevalue("postgres_database"))
    else:
        opened = SQLiteStore(tmp_path / "runs.db")
    async with opened:
        yield opened


async def test_lease_operations_send_no_event_and_summaries_carry_the_lease(
    store: RunStore,
) -> None:
    recorder = Recorder()
    await store.start_events(recorder)
    await store.put_run(snapshot_record(make_snapshot("leased")))
    await recorder.wait_for_version("leased", 1)

    lease = await store.acquire_lease("leased", "w1", 60_000)
    renewed = await store.acquire_lease("leased", "w1", 60_000, lease=lease.lease)
    patch = patch_record({"runId": "leased", "status": "paused"})
    await store.patch_run("leased", patch, lease=renewed.lease)
    await recorder.wait_for_version("leased", 2)
    await store.release_lease("leased", renewed.lease)
    # A run that never had a lease, stale at once: a claim gives it one, and is no write.
    await store.put_run(snapshot_record(make_snapshot("orphan")))
    await recorder.wait_for_version("orphan", 1)
    await asyncio.sleep(0.05)
    claimed = await store.claim_run(ClaimQuery("w2", 60_000, ("running",), 0))
    assert claimed is not None
    assert claimed.lease.run_id == "orphan"
    assert claimed.run.version == 1
    await store.put_run(snapshot_record(make_snapshot("orphan")), lease=claimed.lease.lease)
    await recorder.wait_for_version("orphan", 2)
    await store.put_run(snapshot_record(make_snapshot("leased")))
    await recorder.wait_for_version("leased", 3)

    mine = [change for change in recorder.changes if change.run_id == "leased"]
    assert [(change.kind, change.version) for change in mine if change.kind != "patch"] == [
        ("run", 1),
        ("run", 3),
    ]
    assert sorted({change.version for change in mine}) == [1, 2, 3]
    leases = {
        change.version: json.loads(change.summary)["lease"]
        for change in mine
        if change.summary is not None
    }
    assert leases[1] is None
    assert leases[2]["holder"] == "w1"
    assert leases[2]["lease"] == renewed.lease
    assert leases[3] is None  # released
    orphan = [change for change in recorder.changes if change.run_id == "orphan"]
    assert [change.version for change in orphan] == [1, 2]
    assert orphan[1].summary is not None
    assert json.loads(orphan[1].summary)["lease"]["holder"] == "w2"
