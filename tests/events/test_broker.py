"""The broker alone and under a real uvicorn: bounded queues, resyncs, and no watcher left
behind by clients that go away."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from events_rig import StreamReader, uvicorn_in_thread
from support import make_snapshot

from runstore.client.problems import StoreUnavailable
from runstore.service import Settings
from runstore.service.events import EventBroker
from runstore.service.store.changes import Change


def _change(run_id: str, version: int, status: str = "running") -> Change:
    return Change.ready(run_id, version, "patch", status, False, b"{}", "{}")


@pytest.mark.anyio
async def test_a_full_queue_is_replaced_by_a_resync() -> None:
    broker = EventBroker(queue_limit=3)
    with broker.watch_run("a") as watcher:
        for version in range(2, 6):
            broker.publish([_change("a", version)])
        assert await watcher.wait(1)
        changes, resync = watcher.take()
    # The fourth change found the queue full: everything pending went (the fourth too, which
    # the resync's fresh read includes), and a resync is due.
    assert resync
    assert changes == []


@pytest.mark.anyio
async def test_publishing_reaches_the_runs_watchers_and_the_matching_firehoses() -> None:
    broker = EventBroker()
    with (
        broker.watch_run("a") as of_a,
        broker.watch_run("b") as of_b,
        broker.watch_all() as everything,
        broker.watch_all(["failed"]) as failed,
    ):
        broker.publish([_change("a", 2), _change("b", 2, "failed"), Change.of_delete("a")])
        assert [c.version for c in of_a.take()[0]] == [2, 0]
        assert [c.run_id for c in of_b.take()[0]] == ["b"]
        assert [(c.run_id, c.kind) for c in everything.take()[0]] == [
            ("a", "patch"),
            ("b", "patch"),
            ("a", "deleted"),
        ]
        assert [(c.run_id, c.kind) for c in failed.take()[0]] == [("b", "patch"), ("a", "deleted")]
        assert broker.watcher_count == 4
    assert broker.watcher_count == 0
    assert broker.watched_runs() == []


@pytest.mark.anyio
async def test_a_silent_wait_times_out_and_close_ends_every_wait() -> None:
    broker = EventBroker()
    with broker.watch_run("a") as watcher:
        assert not await watcher.wait(0.01)
        waiting = asyncio.create_task(watcher.wait(60))
        await asyncio.sleep(0)
        broker.close()
        assert await waiting
        assert watcher.closed
    with pytest.raises(StoreUnavailable), broker.watch_all():
        pass


@pytest.mark.server
@pytest.mark.slow
def test_a_thousand_clients_that_go_away_leave_no_watcher(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "runs.db"), tokens=None, database_url=None)
    with uvicorn_in_thread(settings) as (url, app):
        broker: EventBroker = app.state.events
        import httpx

        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.put("/runs/a", json=make_snapshot("a")).status_code == 201
        host, port = url.removeprefix("http://").split(":")
        for index in range(1000):
            connection = socket.create_connection((host, int(port)))
            path = "/runs/a/events" if index % 2 else "/events"
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: runstore\r\n\r\n".encode())
            if index % 3 == 0:
                connection.recv(1)  # some go away once the stream is open, some before
            connection.close()
        # One more, kept open: it is counted, and the run's events still reach it.
        reader = StreamReader(url, "/runs/a/events").start()
        reader.wait_for(1)
        deadline = time.monotonic() + 30
        while broker.watcher_count != 1:
            assert time.monotonic() < deadline, f"{broker.watcher_count} watchers left"
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=30) as http:
            http.patch("/runs/a", json={"completedAt": 1, "status": "completed"})
        reader.join()
        deadline = time.monotonic() + 30
        while broker.watcher_count != 0:
            assert time.monotonic() < deadline, f"{broker.watcher_count} watchers left"
            time.sleep(0.05)
        assert broker.watched_runs() == []


@pytest.mark.anyio
async def test_a_resync_shares_only_reads_that_began_after_the_overflow() -> None:
    from runstore.service.store.base import StoredRun

    broker = EventBroker(queue_limit=1)
    reads: list[int] = []
    release = asyncio.Event()

    async def read(run_id: str) -> StoredRun:
        reads.append(len(reads))
        await release.wait()
        return StoredRun(len(reads), b"{}")

    with broker.watch_run("a") as early, broker.watch_run("a") as late:
        broker.publish([_change("a", 2)])
        broker.publish([_change("a", 3)])  # both overflow here
        first = asyncio.create_task(broker.resync_read("a", early.resync_after, read))
        shared = asyncio.create_task(broker.resync_read("a", late.resync_after, read))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(reads) == 1  # one read for both streams
        broker.publish([_change("a", 4)])
        broker.publish([_change("a", 5)])  # `late` overflows again, after that read began
        again = asyncio.create_task(broker.resync_read("a", late.resync_after, read))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(reads) == 2  # the earlier read may predate what it lost: a new one
        release.set()
        assert (await first).version == (await shared).version == 2
        assert (await again).version == 2
