"""The broker alone and under a real uvicorn: bounded queues, resyncs, and no watcher left
behind by clients that go away."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from events_rig import StreamReader, check_rebuilds, uvicorn_in_thread, write_patches
from support import make_snapshot

from runstore.client.problems import StoreUnavailable
from runstore.service import Settings
from runstore.service.events import EventBroker
from runstore.service.store.changes import Change


def _change(run_id: str, version: int, status: str = "running") -> Change:
    return Change.ready(run_id, version, "patch", status, False, b"{}", "{}")


def _events(body: bytes) -> list[tuple[str, str]]:
    """(event, id) of each event in ``body``."""
    found = []
    for block in body.decode().split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((fields["event"], fields.get("id", "")))
    return found


@pytest.mark.anyio
async def test_a_watcher_that_fell_off_its_feed_is_resynced() -> None:
    broker = EventBroker(queue_limit=3)
    with broker.watch_run("a") as behind, broker.watch_run("a") as caught_up:
        broker.publish([_change("a", 2)])
        assert _events(broker.take(caught_up)) == [("patch", "2")]
        for version in range(3, 6):
            broker.publish([_change("a", version)])
        assert await behind.wait(1)
        # The feed keeps three changes: the first is gone, so `behind` gets none of them
        # but a resync, and `caught_up`, which lacks only the kept ones, gets them.
        assert broker.take(behind) == b""
        assert behind.resync
        assert _events(broker.take(caught_up)) == [("patch", "3"), ("patch", "4"), ("patch", "5")]
        assert not caught_up.resync


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
        broker.publish([_change("b", 2, "failed")])  # heard twice: sent once
        assert _events(broker.take(of_a)) == [("patch", "2"), ("deleted", "")]
        assert of_a.ended  # the stream ends after `deleted`
        assert _events(broker.take(of_b)) == [("patch", "2")]
        summaries = _events(broker.take(everything))
        assert [kind for kind, _ in summaries] == ["summary", "summary", "deleted", "summary"]
        assert [kind for kind, _ in _events(broker.take(failed))] == [
            "summary",
            "deleted",
            "summary",
        ]
        assert broker.watcher_count == 4
    assert broker.watcher_count == 0
    assert broker.watched_runs() == []


async def _until(done: Callable[[], bool]) -> None:
    """Let the loop run (hand-outs are scheduled on it) until ``done()``."""
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "the hand-out did not happen"
        await asyncio.sleep(0.001)


class _Connection:
    """A connection's writer that takes ``room`` writes, then refuses (flow control)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.written: list[bytes] = []

    def encode(self, body: bytes) -> bytes:
        return body

    def write(self, encoded: bytes) -> bool:
        if len(self.written) == self.room:
            return False
        self.written.append(encoded)
        return True


@pytest.mark.anyio
async def test_the_broker_writes_to_attached_connections_and_lets_go_of_full_ones() -> None:
    broker = EventBroker()
    fast, slow = _Connection(room=10), _Connection(room=1)
    with broker.watch_run("a", fast) as quick, broker.watch_run("a", slow) as lagging:
        broker.attach(quick)
        broker.attach(lagging)
        broker.publish([_change("a", 2), _change("a", 3)])
        broker.publish([_change("a", 4)])
        await _until(lambda: quick.position == 3)
        # One chunk per hand-out, the same bytes for both; the writes happened without their
        # tasks, which have nothing to do.
        assert [_events(chunk) for chunk in fast.written] == [
            [("patch", "2"), ("patch", "3"), ("patch", "4")]
        ]
        assert slow.written == fast.written
        assert not quick.has_work()
        broker.publish([_change("a", 5)])
        await _until(lambda: quick.position == 4)
        assert _events(fast.written[-1]) == [("patch", "5")]
        # The slow connection refused it: its task takes it and sends it (through ASGI send,
        # which waits for the connection).
        assert not lagging.attached
        assert await lagging.wait(1)
        assert _events(broker.take(lagging)) == [("patch", "5")]
        finished = Change.ready("a", 6, "patch", "completed", True, b"{}", "{}")
        broker.publish([finished, _change("a", 7, "completed")])
        await _until(lambda: quick.ended)
        # The stream ends after the run finished: the writer is let go, nothing after it sent.
        assert _events(fast.written[-1]) == [("patch", "6")]
        assert quick.ended
        assert not quick.attached


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
@pytest.mark.parametrize("guarded", [True, False], ids=["written-by-broker", "sent-by-tasks"])
def test_a_thousand_clients_that_go_away_leave_no_watcher(tmp_path: Path, guarded: bool) -> None:
    settings = Settings(db=str(tmp_path / "runs.db"), tokens=None, database_url=None)
    with uvicorn_in_thread(settings, guarded=guarded) as (url, app):
        broker: EventBroker = app.state.events
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


@pytest.mark.server
@pytest.mark.parametrize("guarded", [True, False], ids=["written-by-broker", "sent-by-tasks"])
def test_streams_rebuild_the_run_however_events_reach_them(tmp_path: Path, guarded: bool) -> None:
    settings = Settings(db=str(tmp_path / "runs.db"), tokens=None, database_url=None)
    with uvicorn_in_thread(settings, guarded=guarded) as (url, app):
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.put("/runs/a", json=make_snapshot("a")).status_code == 201
            readers = [StreamReader(url, "/runs/a/events").start() for _ in range(3)]
            for reader in readers:
                reader.wait_for(1)
            stored = write_patches(http, "a", 150)
        for reader in readers:
            reader.join()
            assert reader.ended
            assert [event.kind for event in reader.events] == ["run"] + ["patch"] * 150
            check_rebuilds(reader.events, stored)
        broker: EventBroker = app.state.events
        assert broker.watcher_count == 0


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
        broker.publish([_change("a", 3)])  # both fall off the feed here
        assert broker.take(early) == broker.take(late) == b""
        assert early.resync
        assert late.resync
        first = asyncio.create_task(broker.resync_read(early, "a", read))
        shared = asyncio.create_task(broker.resync_read(late, "a", read))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(reads) == 1  # one read for both streams
        late.position = 0  # `late` falls off again, after that read began
        broker.publish([_change("a", 4)])
        assert broker.take(late) == b""
        again = asyncio.create_task(broker.resync_read(late, "a", read))
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(reads) == 2  # the earlier read may predate what it lost: a new one
        release.set()
        assert (await first).version == (await shared).version == 2
        assert (await again).version == 2
        # Each moves to where its read began: `early` lacks change 4 only.
        assert _events(broker.take(early)) == [("patch", "4")]
        assert broker.take(late) == b""
