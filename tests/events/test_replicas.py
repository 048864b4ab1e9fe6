"""Events across PostgreSQL replicas: a write through one replica reaches the watchers of every
replica, complete and in order."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from events_rig import StreamReader, check_rebuilds, write_patches
from support import ServerProcess, empty_postgres_database, make_snapshot

pytestmark = [pytest.mark.server, pytest.mark.postgres]

WATCHERS = 3


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    url = empty_postgres_database(postgres_url)
    with ServerProcess(database_url=url) as first, ServerProcess(database_url=url) as second:
        yield first, second


@pytest.mark.slow
def test_watchers_on_one_replica_see_every_write_made_through_another(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    writer, watched = replicas
    with writer.client(timeout=30) as http:
        assert http.put("/runs/far", json=make_snapshot("far")).status_code == 201
        readers = [StreamReader(watched.url, "/runs/far/events").start() for _ in range(WATCHERS)]
        firehose = StreamReader(watched.url, "/events").start()
        for reader in readers:
            reader.wait_for(1)
        stored = write_patches(http, "far", 300)
        assert http.delete("/runs/far").status_code == 204
    for reader in readers:
        reader.join()
        assert reader.ended
        # Every write as a patch, read by the watching replica from the writer's event rows.
        assert [event.kind for event in reader.events] == ["run"] + ["patch"] * 300
        check_rebuilds(reader.events, stored)
    # The firehose: summaries of the run in version order up to the last (under load a
    # replica may send one summary for several writes), then the delete.
    deadline = time.monotonic() + 30
    while not firehose.events or firehose.events[-1].kind != "deleted":
        assert time.monotonic() < deadline, "no deleted event"
        time.sleep(0.05)
    versions = [event.version for event in firehose.events[:-1]]
    assert versions == sorted(set(versions))
    assert versions[-1] == max(stored)
    assert firehose.events[-1].data == {"runId": "far"}


def test_a_replica_that_falls_behind_sends_the_whole_run(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    writer, watched = replicas
    with writer.client(timeout=30) as http:
        assert http.put("/runs/jump", json=make_snapshot("jump")).status_code == 201
        stored = write_patches(http, "jump", 150, finish=False)
        # The watcher says it has version 2: the rows of versions 3.. are gone (100 are kept).
        reader = StreamReader(
            watched.url, "/runs/jump/events", headers={"Last-Event-ID": "2"}
        ).start()
        reader.wait_for(1)
        stored |= write_patches(http, "jump", 3, seed=5)
    reader.join()
    assert reader.events[0].kind == "run"
    check_rebuilds(reader.events, stored)
