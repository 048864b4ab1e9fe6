"""SIGTERM: stop accepting, finish what is in flight, commit, checkpoint, exit 0, in bounded time.

Each test runs a real ``runstore serve`` under load and stops it with SIGTERM, as a container
runtime or systemd does; on SQLite and on PostgreSQL, except the WAL checkpoint tests. A
request is known to be in flight when the server has asked for its body (``Expect:
100-continue``: uvicorn answers ``100 Continue`` when the app first reads the body).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from support import ServerProcess, StoreLocation, make_snapshot

pytestmark = pytest.mark.server

WRITERS = 4
# uvicorn waits this long for requests in flight (cli: timeout_graceful_shutdown), then closes.
GRACE_SECONDS = 10
STOP_BOUND_SECONDS = GRACE_SECONDS + 10


def append_steps(url: str, run_id: str, acked: list[int], stop: threading.Event) -> None:
    """PATCH one step at a time into ``run_id``, noting each acknowledged trace length."""
    with httpx.Client(base_url=url, timeout=30) as http:
        created = http.put(f"/runs/{run_id}", json=make_snapshot(run_id))
        assert created.status_code == 201
        acked.append(0)
        index = 0
        while not stop.is_set():
            try:
                response = http.patch(
                    f"/runs/{run_id}",
                    json={"trace": [{"step": index}], "traceFrom": index},
                )
            except httpx.TransportError:
                return  # the server has stopped taking requests
            if response.status_code != 200:
                # Only a refusal that says the store is shutting down is acceptable here.
                assert response.status_code == 503, response.text
                return
            index += 1
            acked.append(index)


def request_in_flight(port: int, path: str, length: int) -> socket.socket:
    """Send a PUT's head and return once the app is reading its body, which is left to come."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        f"PUT {path} HTTP/1.1\r\nHost: runstore\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = read_head(connection)
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    return connection


def read_head(connection: socket.socket) -> bytes:
    """The next answer's status line and headers (empty if the connection closed first)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(1)
        if not chunk:
            break
        received += chunk
    return received


def read_status(connection: socket.socket) -> int:
    head = read_head(connection)
    return int(head.split(b" ", 2)[1]) if head else 0


def stored_trace_lengths(store: StoreLocation, run_ids: list[str]) -> dict[str, int | None]:
    """Each run's stored trace length (None: not stored), read by a fresh server on the store."""
    lengths: dict[str, int | None] = {}
    with store.server() as server, server.client() as http:
        for run_id in run_ids:
            response = http.get(f"/runs/{run_id}")
            assert response.status_code in (200, 404), response.text
            ok = response.status_code == 200
            lengths[run_id] = len(response.json()["trace"]) if ok else None
    return lengths


def wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def wait_until_refused(port: int, bound: float = 10.0) -> None:
    """Return once the server no longer accepts connections (it stopped listening)."""
    deadline = time.monotonic() + bound
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, "the server still accepts connections"
        time.sleep(0.05)


def test_sigterm_under_load_exits_0_with_every_acknowledged_write_stored(
    served_store: StoreLocation,
) -> None:
    db = served_store.db
    sqlite = served_store.backend == "sqlite"
    stop = threading.Event()
    acked: dict[str, list[int]] = {f"run-{n}": [] for n in range(WRITERS)}
    with served_store.server() as server:
        writers = [
            threading.Thread(target=append_steps, args=(server.url, run_id, lengths, stop))
            for run_id, lengths in acked.items()
        ]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 30
        while min(len(lengths) for lengths in acked.values()) < 20:
            assert time.monotonic() < deadline, "the writers made no progress"
            time.sleep(0.02)
        if sqlite:
            assert wal_size(db) > 0, "the writes should still be in the WAL before the stop"
        # A request in flight at the signal: its head is in, its body still to come.
        body = json.dumps(make_snapshot("in-flight")).encode()
        with request_in_flight(server.port, "/runs/in-flight", len(body)) as in_flight:
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            wait_until_refused(server.port)
            in_flight.sendall(body)
            assert read_status(in_flight) == 201
        code = server.process.wait(STOP_BOUND_SECONDS)
        stop.set()
        for writer in writers:
            writer.join(30)
    assert code == 0, "".join(server.output)
    if sqlite:
        assert wal_size(db) == 0, "the stop must checkpoint the WAL into the database"
    stored = stored_trace_lengths(served_store, ["in-flight", *acked])
    assert stored.pop("in-flight") == 0
    for run_id, lengths in acked.items():
        assert len(lengths) >= 20, run_id
        length = stored[run_id]
        assert length is not None, run_id
        assert length >= max(lengths), run_id


@pytest.mark.slow
def test_sigterm_with_a_request_that_never_finishes_still_stops_in_bounded_time(
    served_store: StoreLocation,
) -> None:
    with served_store.server() as server, server.client() as http:
        assert http.put("/runs/run-1", json=make_snapshot("run-1", 3)).status_code == 201
        with request_in_flight(server.port, "/runs/stuck", 1000) as stuck:
            stuck.sendall(b'{"runId": "st')
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            try:
                code = server.process.wait(STOP_BOUND_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit {STOP_BOUND_SECONDS} s after SIGTERM")
    assert code == 0, "".join(server.output)
    if served_store.backend == "sqlite":
        assert wal_size(served_store.db) == 0
    assert stored_trace_lengths(served_store, ["run-1", "stuck"]) == {"run-1": 3, "stuck": None}


@pytest.mark.parametrize("autocheckpoint", [1000, 0])
def test_with_autocheckpoint_0_checkpoints_are_left_to_a_replicator(
    tmp_path: Path, autocheckpoint: int
) -> None:
    db = tmp_path / "runs.db"
    env = {"RUNSTORE_WAL_AUTOCHECKPOINT": str(autocheckpoint)}
    padding = "x" * 64 * 1024
    with (
        ServerProcess(db, env=env) as server,
        server.client() as http,
        contextlib.closing(sqlite3.connect(db)) as replicator,
    ):
        # Another process has the database open, as Litestream does (a read opens the WAL).
        assert replicator.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        for number in range(80):  # some 5 MB: past 1000 pages of WAL
            run = make_snapshot(f"run-{number}", input=padding)
            assert http.put(f"/runs/run-{number}", json=run).status_code == 201
        assert server.terminate() == 0
        if autocheckpoint:
            assert wal_size(db) == 0
            assert db.stat().st_size > 5_000_000
        else:
            # Nothing was checkpointed: every page is still in the WAL for the replicator.
            assert wal_size(db) > 5_000_000
            assert db.stat().st_size < 1_000_000
        assert replicator.execute("SELECT count(*) FROM runs").fetchone() == (80,)
