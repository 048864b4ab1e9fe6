"""A connection to PostgreSQL lost at COMMIT, through the real request path.

A small TCP proxy sits between runstore and PostgreSQL and cuts one connection at the chunk
that carries ``COMMIT``: either after forwarding it (PostgreSQL commits, runstore never hears
back) or before (PostgreSQL sees its client vanish mid-transaction and rolls back). Either way
the write's outcome is unknown to runstore until it reads the transaction's commit mark; the
answer must be a 2xx exactly when the write is stored once, and a 503 otherwise. A group of
writes in one transaction is answered the same way, each write by what is stored. The writes
carry If-Match, so a committed write retried as if it had failed would be refused (412), and one
counted as done without being committed would leave the old version stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr
from support import in_process_app, make_snapshot

from runstore.service import Settings
from runstore.service.store.postgres import PostgresStore
from runstore.service.store.records import patch_record, snapshot_record

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

Cut = Literal["before", "after"]


class CommitCutter:
    """A TCP proxy to PostgreSQL that cuts the next ``times`` connections that send COMMIT."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cut: Cut = "after"
        self._remaining = 0
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, cut: Cut, times: int = 1) -> None:
        with self._lock:
            self._cut, self._remaining = cut, times

    def disarm(self) -> None:
        with self._lock:
            self._remaining = 0

    def _take(self) -> Cut | None:
        with self._lock:
            if self._remaining <= 0:
                return None
            self._remaining -= 1
            self.cuts += 1
            return self._cut

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            cut = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, cut), daemon=True).start()
            threading.Thread(
                target=self._downstream, args=(server, client, cut), daemon=True
            ).start()

    def _upstream(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        tail = b""
        try:
            while chunk := client.recv(65536):
                # The word may straddle two reads: look at the end of the previous one too.
                if b"COMMIT" in tail + chunk and (how := self._take()) is not None:
                    cut.set()  # nothing more goes back to runstore on this connection
                    if how == "after":
                        server.sendall(chunk)
                    # A plain close (FIN, not RST): PostgreSQL reads all it was sent first.
                    _close(server)
                    _close(client)
                    return
                server.sendall(chunk)
                tail = chunk[-5:]
        except OSError:
            pass
        _close(server)
        _close(client)

    @staticmethod
    def _downstream(server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        try:
            while (chunk := server.recv(65536)) and not cut.is_set():
                client.sendall(chunk)
        except OSError:
            pass
        _close(client)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def cutter(postgres_database: str) -> Iterator[tuple[CommitCutter, str]]:
    """The proxy, and the session database's URL through it."""
    parts = urlsplit(postgres_database)
    proxy = CommitCutter((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = (
        f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
    )
    try:
        yield proxy, parts._replace(netloc=netloc).geturl()
    finally:
        proxy.close()


@pytest.fixture
async def http(
    cutter: tuple[CommitCutter, str], tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    _, url = cutter
    settings = Settings(db=str(tmp_path / "unused.db"), tokens=None, database_url=SecretStr(url))
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://runstore"
        ) as client,
    ):
        yield client


def conditional_write(method: str) -> tuple[str, dict[str, Any]]:
    """A write that takes run-1 from version 1 (no steps) to version 2 (two steps)."""
    if method == "PUT":
        return method, make_snapshot("run-1", steps=2)
    return method, {"trace": [{"step": 0}, {"step": 1}], "traceFrom": 0, "stepIndex": 2}


async def stored(http: httpx.AsyncClient) -> tuple[str, int]:
    """run-1's ETag and trace length."""
    response = await http.get("/runs/run-1")
    assert response.status_code == 200, response.text
    return response.headers["etag"], len(response.json()["trace"])


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("cut", ["after", "before"])
async def test_a_connection_lost_at_commit_is_answered_by_what_the_database_holds(
    http: httpx.AsyncClient, cutter: tuple[CommitCutter, str], cut: Cut, method: str
) -> None:
    proxy, _ = cutter
    assert (await http.put("/runs/run-1", json=make_snapshot("run-1"))).status_code == 201
    assert await stored(http) == ('"1"', 0)

    proxy.arm(cut)
    verb, body = conditional_write(method)
    response = await http.request(verb, "/runs/run-1", json=body, headers={"If-Match": '"1"'})
    assert proxy.cuts == 1, "the proxy never saw the COMMIT"

    # After: committed, so answered as done (a retry would have met If-Match "1" and got 412).
    # Before: rolled back, so retried, and the retry committed. Either way the write is stored
    # exactly once, and the answer says so.
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    assert await stored(http) == ('"2"', 2)


async def test_a_write_whose_every_commit_is_lost_is_a_503_and_stores_nothing(
    http: httpx.AsyncClient, cutter: tuple[CommitCutter, str]
) -> None:
    proxy, _ = cutter
    assert (await http.put("/runs/run-1", json=make_snapshot("run-1"))).status_code == 201

    proxy.arm("before", times=1000)
    verb, body = conditional_write("PUT")
    response = await http.request(verb, "/runs/run-1", json=body, headers={"If-Match": '"1"'})
    proxy.disarm()
    assert proxy.cuts > 1, "the write was not retried"
    assert response.status_code == 503, response.text
    assert await stored(http) == ('"1"', 0)


@pytest.mark.parametrize("cut", ["after", "before"])
async def test_a_group_whose_commit_is_lost_answers_every_write_by_what_is_stored(
    cutter: tuple[CommitCutter, str], cut: Cut
) -> None:
    proxy, url = cutter
    runs = [f"run-{n}" for n in range(8)]
    async with PostgresStore(url) as store:
        for run_id in runs:
            await store.put_run(snapshot_record(make_snapshot(run_id)))
        proxy.arm(cut)
        # Submitted together, so applied as one group: one transaction, one COMMIT cut.
        results = await asyncio.gather(
            *(
                store.patch_run(
                    run_id,
                    patch_record({"trace": [{"step": 0}], "traceFrom": 0}),
                    if_match=1,
                )
                for run_id in runs
            )
        )
        assert proxy.cuts == 1, "the proxy never saw the COMMIT"
        # Each write is stored once and answered as such: a committed group retried as if it
        # had failed would meet If-Match 1 at version 2 and be refused.
        assert [(r.version, r.trace_length) for r in results] == [(2, 1)] * len(runs)
        for run_id in runs:
            stored = await store.get_run(run_id)
            assert stored is not None
            assert stored.version == 2
