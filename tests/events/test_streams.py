"""Event streams against a real ``runstore serve``: order and completeness, resuming, slow
watchers, the firehose, errors, and streams through the server's shutdown."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from events_rig import StreamReader, check_rebuilds, write_patches
from support import ServerProcess, assert_problem, make_snapshot

pytestmark = pytest.mark.server

WATCHERS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("events")
    with ServerProcess(directory / "runs.db", env={"RUNSTORE_EVENTS_KEEPALIVE": "0.5"}) as served:
        yield served


def create(http: httpx.Client, run_id: str, **fields: object) -> None:
    assert http.put(f"/runs/{run_id}", json=make_snapshot(run_id, **fields)).status_code == 201


@pytest.mark.slow
def test_watchers_rebuild_the_run_at_every_version_and_end_after_the_last(
    server: ServerProcess,
) -> None:
    with server.client(timeout=30) as http:
        create(http, "order")
        readers = [StreamReader(server.url, "/runs/order/events").start() for _ in range(WATCHERS)]
        for reader in readers:
            reader.wait_for(1)
        stored = write_patches(http, "order", 500)
    for reader in readers:
        reader.join()
        assert reader.ended  # after the finishing write, by the server
        assert [event.kind for event in reader.events] == ["run"] + ["patch"] * 500
        check_rebuilds(reader.events, stored)


def test_resuming_in_the_middle_misses_and_repeats_nothing(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        create(http, "resume")
        first = StreamReader(server.url, "/runs/resume/events").start()
        first.wait_for(1)
        stored = write_patches(http, "resume", 20, finish=False)
        first.wait_for(21)
        # Resume from the middle, as a client whose connection dropped after version 11.
        stored |= write_patches(http, "resume", 10, seed=8, finish=False)
        second = StreamReader(
            server.url, "/runs/resume/events", headers={"Last-Event-ID": "11"}
        ).start()
        second.wait_for(1)
        stored |= write_patches(http, "resume", 10, seed=9)
        second.join()
        first.join()
    resumed = first.events[:11] + second.events
    # A resumed stream starts with the run as it is now (it moved on since version 11).
    assert second.events[0].kind == "run"
    assert second.events[0].version == 31
    check_rebuilds(resumed, stored)
    check_rebuilds(first.events, stored)
    assert [event.version for event in first.events] == list(range(1, 42))


def test_resuming_at_the_current_version_sends_nothing_again(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        create(http, "current")
        http.patch("/runs/current", json={"text": "a"})
        reader = StreamReader(server.url, "/runs/current/events?after=2").start()
        stored = write_patches(http, "current", 3)
        reader.join()
    assert [event.version for event in reader.events] == [3, 4, 5]
    run = {**stored[2]}
    from runstore.client._events import apply_event

    for event in reader.events:
        run = apply_event(run, event)  # type: ignore[assignment]
    assert run == stored[5]


def test_a_finished_run_answers_its_run_event_and_ends(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        create(http, "done", completedAt=5, status="completed")
        reader = StreamReader(server.url, "/runs/done/events").start().join()
    assert [event.kind for event in reader.events] == ["run"]
    assert reader.events[0].data == make_snapshot("done", completedAt=5, status="completed")


def test_a_deleted_run_ends_its_stream_with_deleted(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        create(http, "gone")
        reader = StreamReader(server.url, "/runs/gone/events").start()
        reader.wait_for(1)
        assert http.delete("/runs/gone").status_code == 204
        reader.join()
    assert [(event.kind, event.data) for event in reader.events[1:]] == [
        ("deleted", {"runId": "gone"})
    ]


def test_a_silent_stream_gets_keep_alive_comments(server: ServerProcess) -> None:
    with server.client(timeout=30) as http:
        create(http, "quiet")
    with (
        httpx.Client(base_url=server.url, timeout=30) as http,
        http.stream("GET", "/runs/quiet/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(6)]
    assert ": keep-alive" in seen  # RUNSTORE_EVENTS_KEEPALIVE is 0.5 s on this server


def test_a_watcher_that_reads_nothing_neither_slows_writers_nor_misses_the_end(
    tmp_path: Path,
) -> None:
    env = {"RUNSTORE_EVENTS_QUEUE": "8"}
    with ServerProcess(tmp_path / "runs.db", env=env) as server, server.client(timeout=30) as http:
        create(http, "slow")
        # A watcher that sends its request and then reads nothing: once the socket buffers
        # are full (the kernel's, up to a few MiB, and uvicorn's) the server cannot send it
        # anything more, and its queue overflows.
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        stalled.sendall(b"GET /runs/slow/events HTTP/1.1\r\nHost: runstore\r\n\r\n")
        big = "x" * 200_000
        for index in range(60):
            answer = http.patch("/runs/slow", json={"trace": [{"big": big}], "traceFrom": index})
            assert answer.status_code == 200  # answered while the watcher reads nothing
        http.patch("/runs/slow", json={"completedAt": 9, "status": "completed"})
        final = http.get("/runs/slow").json()
        # Now it reads: what it gets rebuilds the final run, through a resync on the way.
        stalled.settimeout(30)
        received = b""
        while not received.endswith(b"0\r\n\r\n"):
            chunk = stalled.recv(1 << 20)
            if not chunk:
                break
            received += chunk
        stalled.close()
    events = _parse_chunked_events(received)
    kinds = [kind for kind, _, _ in events]
    assert kinds.count("run") >= 2, "the watcher was not resynced"
    from runstore.client._events import apply_event
    from runstore.client.models import RunEvent

    run = None
    for kind, event_id, data in events:
        version = int(event_id) if kind == "run" else data["version"]
        run = apply_event(run, RunEvent(kind=kind, version=version, data=data))
    assert run == final


def _parse_chunked_events(raw: bytes) -> list[tuple[str, str, dict[str, object]]]:
    """Events of an HTTP/1.1 chunked SSE answer read off a socket."""
    _, _, body = raw.partition(b"\r\n\r\n")
    payload = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        payload += rest[:size]
        body = rest[size + 2 :]
    events = []
    for block in payload.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], fields.get("id", ""), json.loads(fields["data"])))
    return events


def test_the_firehose_sends_summaries_by_status_and_deletes(server: ServerProcess) -> None:
    everything = StreamReader(server.url, "/events").start()
    failed_only = StreamReader(server.url, "/events?status=failed").start()
    with server.client(timeout=30) as http:
        create(http, "fire-a")
        http.patch("/runs/fire-a", json={"trace": [1], "traceFrom": 0})
        create(http, "fire-b")
        http.patch("/runs/fire-b", json={"status": "failed", "error": "boom"})
        summaries = {
            run["runId"]: run for run in http.get("/runs", params={"limit": 1000}).json()["runs"]
        }
        http.delete("/runs/fire-a")
        time.sleep(0.5)  # let the last events reach both streams
        everything_events = [(e.kind, e.data.get("runId"), e.version) for e in everything.events]
        failed_events = list(failed_only.events)
    assert everything_events == [
        ("summary", "fire-a", 1),
        ("summary", "fire-a", 2),
        ("summary", "fire-b", 1),
        ("summary", "fire-b", 2),
        ("deleted", "fire-a", None),
    ]
    assert everything.events[3].data == summaries["fire-b"]
    assert [(e.kind, e.data["runId"]) for e in failed_events] == [
        ("summary", "fire-b"),
        ("deleted", "fire-a"),
    ]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/runs/absent/events", {}, 404),
        ("/runs/bad%20id/events", {}, 422),
        ("/runs/errs/events?after=-1", {}, 422),
        ("/runs/errs/events?after=x", {}, 422),
        ("/runs/errs/events", {"Last-Event-ID": "abc"}, 400),
        ("/runs/errs/events", {"Last-Event-ID": "9" * 30}, 400),
        ("/events?status=Not%20A%20Status", {}, 422),
    ],
)
def test_bad_requests_get_a_problem_and_no_stream(
    server: ServerProcess, path: str, headers: dict[str, str], status: int
) -> None:
    with server.client(timeout=30) as http:
        http.put("/runs/errs", json=make_snapshot("errs"))
        assert_problem(http.get(path, headers=headers), status)


def test_streams_end_cleanly_when_the_server_stops(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "runs.db").start()
    try:
        with server.client(timeout=30) as http:
            create(http, "stopping")
        readers = [
            StreamReader(server.url, "/runs/stopping/events").start(),
            StreamReader(server.url, "/events").start(),
        ]
        readers[0].wait_for(1)
        assert server.terminate(timeout=30) == 0
        for reader in readers:
            reader.join()
            assert reader.ended  # the body ended as a chunked body ends, not cut off
        output = "".join(server.output)
        # uvicorn's grace (10 s) was not needed: no stream had to be cancelled.
        assert "graceful shutdown exceeded" not in output, output
    finally:
        server.stop()
