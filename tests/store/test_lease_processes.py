"""Leases with real processes: the claim race, fencing of a paused worker, a server crash.

- Claim race: 16 claimer processes take 400 orphaned runs through one SQLite server, and
  through two PostgreSQL replicas: every run is claimed exactly once, none is lost.
- Fencing: a worker is stopped (SIGSTOP) past its lease, another claims the run and writes,
  the first is resumed (SIGCONT) and writes: its write is refused (lease-lost), and the run
  holds only the second worker's steps after the takeover.
- Crash: SIGKILL of the server between the lease and the write loses neither.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import BACKENDS, ServerProcess, StoreLocation, make_snapshot, store_location

from runstore.client import RunStoreClient

pytestmark = [pytest.mark.server, pytest.mark.slow]

CLAIMERS = 16
RUNS = 400

# One claimer: reads "go", then claims through the replicas in turn until none is left, and
# prints each run it got with its lease number.
CLAIMER = r"""
import json, sys, httpx
urls, holder = sys.argv[1].split(","), sys.argv[2]
clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
print("ready", flush=True)
sys.stdin.readline()
n = 0
while True:
    response = clients[n % len(clients)].post(
        "/claims", json={"holder": holder, "ttlMs": 600000, "staleAfterMs": 0}
    )
    n += 1
    if response.status_code == 204:
        break
    response.raise_for_status()
    body = response.json()
    print(json.dumps([body["run"]["runId"], body["lease"]["lease"]]), flush=True)
"""


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    return store_location(request, tmp_path)


@pytest.fixture
def servers(location: StoreLocation) -> Iterator[list[ServerProcess]]:
    """One server on SQLite; two replicas on PostgreSQL."""
    count = 1 if location.database_url is None else 2
    started = [location.server() for _ in range(count)]
    try:
        for server in started:
            server.start()
        yield started
    finally:
        for server in started:
            server.stop()


def test_sixteen_claimers_take_each_orphaned_run_exactly_once(
    servers: list[ServerProcess],
) -> None:
    urls = [server.url for server in servers]
    with httpx.Client(base_url=urls[0], timeout=30) as http:
        for n in range(RUNS):
            assert http.put(f"/runs/orphan-{n}", json=make_snapshot(f"orphan-{n}")).is_success
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, ",".join(urls), f"claimer-{n}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(CLAIMERS)
    ]
    claims: list[tuple[str, int, str]] = []
    try:
        for claimer in claimers:
            assert claimer.stdout is not None
            assert claimer.stdout.readline().strip() == "ready"
        for claimer in claimers:  # all at once, as near as processes can be
            assert claimer.stdin is not None
            claimer.stdin.write("go\n")
            claimer.stdin.flush()
        for n, claimer in enumerate(claimers):
            output, _ = claimer.communicate(timeout=300)
            assert claimer.returncode == 0
            for line in output.splitlines():
                run_id, lease = json.loads(line)
                claims.append((run_id, lease, f"claimer-{n}"))
    finally:
        for claimer in claimers:
            if claimer.poll() is None:
                claimer.kill()
                claimer.wait()
    counts = Counter(run_id for run_id, _, _ in claims)
    assert [run_id for run_id, count in counts.items() if count > 1] == []
    assert set(counts) == {f"orphan-{n}" for n in range(RUNS)}
    assert {lease for _, lease, _ in claims} == {1}
    # The store agrees on who holds each run.
    holders = {run_id: holder for run_id, _, holder in claims}
    with RunStoreClient(urls[-1]) as client:
        stored = {
            summary.run_id: summary.lease.holder
            for summary in client.list_runs()
            if summary.lease is not None
        }
    assert stored == holders


# A worker that holds its run under a 1 s lease and takes a step every 50 ms, printing each;
# told its lease is lost, it says so and exits 3. "writes": it takes the lease once and sends
# each step with it (so only the server's fencing can stop it); "hooks": the persistence hooks,
# whose renewer may be the first to learn of the takeover.
WORKER = r"""
import sys, time
from runstore.client import LeaseLost, RunStoreClient
url, run_id, kind = sys.argv[1:4]
snapshot = {"runId": run_id, "status": "fenced", "startedAt": 1, "input": "", "trace": [],
            "usage": {}, "stepIndex": 0, "iterations": 0, "revisions": 0}
with RunStoreClient(url) as client:
    hooks = client.persistence(holder="worker-a", lease_ttl=1.0)
    if kind == "hooks":
        hooks.on_run_start(snapshot)
    else:
        client.put_run(snapshot)
        lease = client.acquire_lease(run_id, "worker-a", 1.0).lease
    try:
        for n in range(10_000):
            if kind == "hooks":
                snapshot["trace"].append({"worker": "a", "n": n})
                hooks.on_step_complete(snapshot)
            else:
                step = {"trace": [{"worker": "a", "n": n}], "traceFrom": n}
                client.patch_run(run_id, step, lease=lease)
            print(f"step {n}", flush=True)
            time.sleep(0.05)
    except LeaseLost:
        print("lost", flush=True)
        sys.exit(3)
"""


@pytest.mark.parametrize("kind", ["writes", "hooks"])
def test_a_paused_worker_is_fenced_off_after_a_takeover(
    servers: list[ServerProcess], kind: str
) -> None:
    url = servers[-1].url
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, url, "fenced-run", kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        for line in worker.stdout:
            if line.strip() == "step 3":
                break
        os.kill(worker.pid, signal.SIGSTOP)
        with RunStoreClient(url) as client:
            # Its lease runs out (its renewer is stopped too), and a claim takes the run.
            claimed = None
            deadline = time.monotonic() + 30
            while claimed is None and time.monotonic() < deadline:
                time.sleep(0.2)
                claimed = client.claim("worker-b", 60.0, status="fenced", stale_after=3600)
            assert claimed is not None
            assert claimed.lease.lease == 2
            hooks = client.persistence(holder="worker-b", lease_ttl=60.0)
            run = hooks.resume(claimed).to_wire()
            taken_over_at = len(run["trace"])
            for n in range(3):
                run["trace"].append({"worker": "b", "n": n})
                hooks.on_step_complete(run)
            os.kill(worker.pid, signal.SIGCONT)
            rest, _ = worker.communicate(timeout=30)
            assert worker.returncode == 3
            assert rest.splitlines()[-1] == "lost"
            stored = client.get_run("fenced-run")
            assert stored is not None
            after = stored.trace[taken_over_at:]
            assert after == [{"worker": "b", "n": n} for n in range(3)]
            assert all(step["worker"] == "a" for step in stored.trace[:taken_over_at])
            hooks.close()
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
            worker.wait()


def test_a_server_crash_loses_no_acknowledged_lease_or_write(location: StoreLocation) -> None:
    with location.server() as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.put("/runs/crash", json=make_snapshot("crash", steps=1)).is_success
            granted = http.post("/runs/crash/lease", json={"holder": "w1", "ttlMs": 600_000})
            assert granted.status_code == 200
        server.kill()
        server.restart()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            refused = http.post("/runs/crash/lease", json={"holder": "w2", "ttlMs": 600_000})
            assert refused.status_code == 409
            assert refused.json()["holder"] == "w1"
            written = http.patch(
                "/runs/crash",
                json={"trace": [{"after": "lease"}], "traceFrom": 1},
                headers={"Runstore-Lease": "1"},
            )
            assert written.status_code == 200
        server.kill()
        server.restart()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/runs/crash").json()["trace"][1] == {"after": "lease"}
            unleased = http.patch("/runs/crash", json={"status": "stolen"})
            assert unleased.status_code == 409
            assert unleased.json()["type"].endswith("lease-held")
            (summary,) = http.get("/runs").json()["runs"]
            assert summary["lease"] == granted.json()
