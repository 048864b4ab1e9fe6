"""Two real ``runstore serve`` replicas on one PostgreSQL database: races and outages."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from support import ServerProcess, make_snapshot
from test_postgres_store import (
    admin_connection,
    allow_connections,
    database_url,
    kill_connections,
)

pytestmark = [pytest.mark.postgres, pytest.mark.server, pytest.mark.slow]

REPLICAS = 2


@pytest.fixture
def replicas(postgres_database: str) -> Iterator[list[ServerProcess]]:
    """Two servers on free ports, one database."""
    servers = [ServerProcess(args=("--database-url", postgres_database)) for _ in range(REPLICAS)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@dataclass
class Ledger:
    """What the writers saw, shared between their threads."""

    acknowledged: list[str] = field(default_factory=list)
    # Appends answered 503 (or cut off) that the next read found stored after all.
    landed_unanswered: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1


def append_with_if_match(
    urls: list[str],
    run_id: str,
    items: Iterator[str],
    ledger: Ledger,
    keep_going: Callable[[], bool],
    first_replica: int,
) -> None:
    """Append each item once: read the run, PATCH with If-Match, re-read after any doubt.

    Every attempt goes to the next replica, so consecutive reads and writes of one writer land
    on different processes.
    """
    clients = [httpx.Client(base_url=url, timeout=15) for url in urls]
    attempt = first_replica
    try:
        for item in items:
            while keep_going():
                attempt += 1
                http = clients[attempt % len(clients)]
                try:
                    read = http.get(f"/runs/{run_id}")
                    ledger.count(read.status_code)
                    if read.status_code == 503:
                        time.sleep(0.05)
                        continue
                    assert read.status_code == 200, read.text
                    trace = [step["id"] for step in read.json()["trace"]]
                    if item in trace:
                        with ledger.lock:
                            ledger.landed_unanswered.append(item)
                        break
                    write = http.patch(
                        f"/runs/{run_id}",
                        json={"trace": [{"id": item}], "traceFrom": len(trace)},
                        headers={"If-Match": read.headers["etag"]},
                    )
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                ledger.count(write.status_code)
                if write.status_code == 200:
                    with ledger.lock:
                        ledger.acknowledged.append(item)
                    break
                assert write.status_code in (412, 503), write.text
                if write.status_code == 503:
                    assert write.headers["retry-after"] == "1"
                    time.sleep(0.05)
            else:
                return
    finally:
        for http in clients:
            http.close()


def appends_of(writer: int, count: int) -> Iterator[str]:
    """The ids of one writer's appends, unique across writers."""
    return (f"w{writer}-{n}" for n in range(count))


def check_every_append_stored_once(url: str, run_ids: list[str], ledger: Ledger) -> None:
    stored: list[str] = []
    with httpx.Client(base_url=url, timeout=15) as http:
        for run_id in run_ids:
            run = http.get(f"/runs/{run_id}")
            assert run.status_code == 200
            items = [step["id"] for step in run.json()["trace"]]
            # Every stored append was one write: versions count them all, from 1 at the PUT.
            assert int(run.headers["etag"].strip('"')) == 1 + len(items)
            stored += items
    duplicates = [item for item, times in Counter(stored).items() if times > 1]
    assert duplicates == []
    assert set(ledger.acknowledged) <= set(stored)
    assert set(stored) == set(ledger.acknowledged) | set(ledger.landed_unanswered)


def create_runs(url: str, run_ids: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=15) as http:
        for run_id in run_ids:
            assert http.put(f"/runs/{run_id}", json=make_snapshot(run_id)).status_code == 201


def test_writers_racing_through_two_replicas_lose_no_append(
    replicas: list[ServerProcess],
) -> None:
    urls = [server.url for server in replicas]
    run_ids = ["shared-a", "shared-b"]
    create_runs(urls[0], run_ids)
    ledger = Ledger()
    writers, appends = 6, 12
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(writers) as pool:
        futures = [
            pool.submit(
                append_with_if_match,
                urls,
                run_ids[writer % len(run_ids)],
                appends_of(writer, appends),
                ledger,
                lambda: time.monotonic() < deadline,
                writer,
            )
            for writer in range(writers)
        ]
        for future in futures:
            future.result()
    assert len(ledger.acknowledged) == writers * appends
    assert ledger.landed_unanswered == []
    assert ledger.statuses[412] > 0, "the writers never raced: the test proves nothing"
    check_every_append_stored_once(urls[1], run_ids, ledger)


def test_whole_writes_racing_through_two_replicas_never_move_a_run_backwards(
    replicas: list[ServerProcess],
) -> None:
    """PUTs without If-Match from both replicas: the stale-write rule holds across them."""
    urls = [server.url for server in replicas]
    full_trace = [{"id": f"step-{n}"} for n in range(40)]
    acks: list[tuple[int, int, bool]] = []
    lock = threading.Lock()

    def writer(seed: int) -> None:
        chooser = random.Random(seed)
        with httpx.Client(base_url=urls[seed % REPLICAS], timeout=15) as http:
            for _ in range(15):
                length = chooser.randint(0, len(full_trace))
                finished = chooser.random() < 0.2
                snapshot = make_snapshot("contested", trace=full_trace[:length])
                if finished:
                    snapshot["completedAt"] = 1_700_000_100_000
                answer = http.put("/runs/contested", json=snapshot)
                if answer.status_code in (200, 201):
                    body = answer.json()
                    assert body["traceLength"] == length
                    with lock:
                        acks.append((body["version"], length, finished))
                else:
                    assert answer.status_code == 409, answer.text
                    assert answer.json()["type"].endswith("stale-write")

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(writer, seed) for seed in range(4)]:
            future.result()
    acks.sort()
    # Each accepted write got its own version: none was lost or merged into another.
    assert [version for version, _, _ in acks] == list(range(1, len(acks) + 1))
    lengths = [length for _, length, _ in acks]
    assert lengths == sorted(lengths)
    finished = [done for _, _, done in acks]
    assert finished == sorted(finished), "a finished run was written as unfinished"
    with httpx.Client(base_url=urls[1], timeout=15) as http:
        stored = http.get("/runs/contested")
    assert stored.headers["etag"] == f'"{len(acks)}"'
    assert len(stored.json()["trace"]) == lengths[-1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def readiness(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code
    except httpx.TransportError:
        return 0


def test_replicas_answer_503_while_the_database_is_away_and_lose_no_write(
    replicas: list[ServerProcess], postgres_database: str
) -> None:
    urls = [server.url for server in replicas]
    run_ids = ["outage-a", "outage-b"]
    create_runs(urls[0], run_ids)
    ledger = Ledger()
    stop = threading.Event()
    hard_stop = time.monotonic() + 150
    writers = 4

    def keep_going() -> bool:
        return not stop.is_set() and time.monotonic() < hard_stop

    def acks() -> int:
        return len(ledger.acknowledged)

    with ThreadPoolExecutor(writers) as pool:
        futures = [
            pool.submit(
                append_with_if_match,
                urls,
                run_ids[writer % len(run_ids)],
                appends_of(writer, 10_000),
                ledger,
                keep_going,
                writer,
            )
            for writer in range(writers)
        ]
        try:
            wait_for(lambda: acks() >= 20, 30, "writes before the outage")

            # Every connection of both replicas killed: they reconnect and carry on.
            assert kill_connections(postgres_database) >= REPLICAS
            before = acks()
            wait_for(lambda: acks() >= before + 20, 30, "writes after connections were killed")

            # The database refuses every connection for longer than an operation's deadline.
            allow_connections(postgres_database, False)
            try:
                kill_connections(postgres_database)
                away_since = time.monotonic()
                for url in urls:
                    wait_for(lambda url=url: readiness(url) == 503, 30, f"{url}/readyz to fail")
                with httpx.Client(base_url=urls[0], timeout=15) as http:
                    answer = http.get(f"/runs/{run_ids[0]}")
                assert answer.status_code == 503
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["type"].endswith("storage-unavailable")
                assert answer.headers["retry-after"] == "1"
                time.sleep(max(0.0, away_since + 5 - time.monotonic()))
                assert ledger.statuses[503] > 0
            finally:
                allow_connections(postgres_database, True)

            for url in urls:
                wait_for(lambda url=url: readiness(url) == 200, 60, f"{url}/readyz to recover")
            before = acks()
            wait_for(lambda: acks() >= before + 20, 60, "writes after the outage")
        finally:
            stop.set()
        for future in futures:
            future.result()
    for server in replicas:
        assert server.process is not None
        assert server.process.poll() is None, "a replica died: " + "".join(server.output[-20:])
    check_every_append_stored_once(urls[1], run_ids, ledger)


def test_a_replica_refuses_to_start_on_a_database_it_cannot_use(
    postgres_url: str,
) -> None:
    """A schema newer than the replica knows: it exits at once and says why."""
    name = f"{conninfo_to_dict(postgres_url)['dbname']}_newer"
    url = database_url(name)
    with admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE TABLE schema_version (version integer PRIMARY KEY)")
            connection.execute("INSERT INTO schema_version VALUES (1000)")
        server = ServerProcess(args=("--database-url", url))
        with pytest.raises(RuntimeError, match="newer than this runstore"):
            server.start()
        assert server.process is not None
        assert server.process.wait(10) != 0
    finally:
        with admin_connection() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
