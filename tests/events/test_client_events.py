"""The clients' ``watch``, ``follow`` and ``events`` against a real server, blocking and async."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from events_rig import check_rebuilds, write_patches
from support import ServerProcess, make_snapshot

from runstore.client import (
    AsyncRunStoreClient,
    RetryPolicy,
    RunEvent,
    RunNotFound,
    RunSnapshot,
    RunStoreClient,
)

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("client-events") / "runs.db") as served:
        yield served


def _in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_follow_gives_the_stored_run_after_every_write_and_ends(server: ServerProcess) -> None:
    snapshots: list[RunSnapshot] = []
    with RunStoreClient(server.url) as client, server.client(timeout=30) as http:
        client.put_run(make_snapshot("follow"))
        started = threading.Event()

        def follow() -> None:
            for snapshot in client.follow("follow"):
                snapshots.append(snapshot)
                started.set()

        thread = _in_thread(follow)
        assert started.wait(30)
        stored = write_patches(http, "follow", 40)
        thread.join(60)
        assert not thread.is_alive()
    assert [s.to_wire() for s in snapshots] == [
        RunSnapshot.model_validate(stored[version]).to_wire() for version in sorted(stored)
    ]
    assert snapshots[-1].finished


@pytest.mark.anyio
async def test_the_async_client_watches_and_follows(server: ServerProcess) -> None:
    async with AsyncRunStoreClient(server.url) as client:
        await client.put_run(make_snapshot("async", completedAt=3, status="completed"))
        events = [event async for event in client.watch("async")]
        followed = [snapshot async for snapshot in client.follow("async")]
        with pytest.raises(RunNotFound):
            async for _ in client.watch("absent"):
                pass
    assert [event.kind for event in events] == ["run"]
    assert followed == [
        RunSnapshot.model_validate(make_snapshot("async", completedAt=3, status="completed"))
    ]


def test_watch_resumes_across_a_server_restart_without_loss_or_repeat(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "runs.db").start()
    events: list[RunEvent] = []
    policy = RetryPolicy(max_attempts=100, first_delay=0.05, max_delay=0.5, total=60)
    client = RunStoreClient(server.url, retries=policy)
    try:
        client.put_run(make_snapshot("restart"))
        started = threading.Event()

        def watch() -> None:
            for event in client.watch("restart"):
                events.append(event)
                started.set()

        thread = _in_thread(watch)
        assert started.wait(30)
        with server.client(timeout=30) as http:
            stored = write_patches(http, "restart", 10, finish=False)
        assert server.terminate() == 0
        server.restart()
        with server.client(timeout=30) as http:
            stored |= write_patches(http, "restart", 10, seed=3)
        thread.join(60)
        assert not thread.is_alive()
    finally:
        client.close()
        server.stop()
    check_rebuilds(events, stored)
    assert events[-1].version == max(stored)


def test_events_follows_every_run_by_status(server: ServerProcess) -> None:
    seen: list[RunEvent] = []
    with RunStoreClient(server.url) as client:
        started = threading.Event()

        def firehose() -> None:
            for event in client.events(status=["failed", "cancelled"]):
                seen.append(event)
                started.set()
                if event.kind == "deleted":
                    return

        thread = _in_thread(firehose)
        # A write the firehose must see tells that it is open; the others come after it.
        while not started.wait(0.2):
            client.put_run(make_snapshot("opening", status="cancelled"))
        client.put_run(make_snapshot("ok"))
        client.put_run(make_snapshot("bad"))
        client.patch_run("bad", {"status": "failed", "error": "boom"})
        client.delete_run("bad")
        thread.join(30)
        assert not thread.is_alive()
    tail = [(event.kind, event.data["runId"]) for event in seen if event.data["runId"] != "opening"]
    assert tail == [("summary", "bad"), ("deleted", "bad")]
    assert seen[-2].data["error"] == "boom"
    assert seen[-2].version == 2
