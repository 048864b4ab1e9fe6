"""SIGTERM: stop accepting, finish what is in flight, commit, checkpoint, exit 0, in bounded time.

Each test runs a real ``runstore serve`` under load and stops it with SIGTERM, as a container
runtime or systemd does.
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
from support import ServerProcess, make_snapshot

from runstore.service.store.sqlite import SQLiteEngine

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


def raw_request_head(port: int, path: str, length: int) -> socket.socket:
    """Open a connection and send a PUT's head, leaving its body to come."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        f"PUT {path} HTTP/1.1\r\nHost: runstore\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return connection


def read_status(connection: socket.socket) -> int:
    received = b""
    while b"\r\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return int(received.split(b" ", 2)[1]) if received else 0


def stored_trace_length(db: Path, run_id: str) -> int:
    with SQLiteEngine(db) as engine:
        stored = engine.get_run(run_id)
        assert stored is not None, run_id
        return len(json.loads(stored.body)["trace"])


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


def test_sigterm_under_load_exits_0_with_every_acknowledged_write_stored(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    stop = threading.Event()
    acked: dict[str, list[int]] = {f"run-{n}": [] for n in range(WRITERS)}
    with ServerProcess(db) as server:
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
        assert wal_size(db) > 0, "the writes should still be in the WAL before the stop"
        # A request in flight at the signal: its head is in, its body still to come.
        body = json.dumps(make_snapshot("in-flight")).encode()
        with raw_request_head(server.port, "/runs/in-flight", len(body)) as in_flight:
            time.sleep(0.5)  # the server reads the head and starts the request
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
    assert wal_size(db) == 0, "the stop must checkpoint the WAL into the database"
    assert stored_trace_length(db, "in-flight") == 0
    for run_id, lengths in acked.items():
        assert len(lengths) >= 20, run_id
        assert stored_trace_length(db, run_id) >= max(lengths)


@pytest.mark.slow
def test_sigterm_with_a_request_that_never_finishes_still_stops_in_bounded_time(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    with ServerProcess(db) as server, server.client() as http:
        assert http.put("/runs/run-1", json=make_snapshot("run-1", 3)).status_code == 201
        with raw_request_head(server.port, "/runs/stuck", 1000) as stuck:
            stuck.sendall(b'{"runId": "st')
            time.sleep(0.2)
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            try:
                code = server.process.wait(STOP_BOUND_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit {STOP_BOUND_SECONDS} s after SIGTERM")
    assert code == 0, "".join(server.output)
    assert wal_size(db) == 0
    assert stored_trace_length(db, "run-1") == 3
    with SQLiteEngine(db) as engine:
        assert engine.get_run("stuck") is None


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
