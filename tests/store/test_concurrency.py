"""Many real processes writing to one real server at once.

16 processes each write a run of their own (PUT, then one PATCH per step); 8 processes race on
the same 3 runs: all try to create them (``If-None-Match: *``), then append with If-Match
read-modify-write loops (PUT and PATCH with ``traceFrom``, retried on 412), replay snapshots
they read earlier without If-Match (the stale-write rule decides), and replace fields.

The race runs once on each backend. Afterwards: nothing acknowledged is lost, nothing is mixed
between runs, no trace ever shrank, and each run's version counts exactly its accepted writes.

Workers live in this module and import nothing heavy, because each is a fresh spawned
interpreter.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

OWN_WRITERS = 16
RACERS = 8
STEPS_PER_OWN_RUN = 30
RACER_ROUNDS = 24
SHARED_RUNS = ("shared-0", "shared-1", "shared-2")
MAX_RETRIES = 500
DEADLINE_SECONDS = 120.0

Result = dict[str, Any]


def new_snapshot(run_id: str) -> dict[str, Any]:
    return {
        "runId": run_id,
        "status": "running",
        "startedAt": 1_700_000_000_000,
        "input": f"input of {run_id}",
        "trace": [],
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }


def run_worker(
    target: Callable[[httpx.Client, int], Result],
    url: str,
    number: int,
    start: Any,
    results: Any,
) -> None:
    """Process entry: wait for every worker, run ``target``, report its result or its error."""
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            start.wait(timeout=60)
            result = target(http, number)
    except BaseException:
        result = {"error": traceback.format_exc()}
    results.put(result)


def write_own_run(http: httpx.Client, writer: int) -> Result:
    """PUT a run, then append one step per PATCH; every answer is kept."""
    run_id = f"own-{writer:02d}"
    created = http.put(f"/runs/{run_id}", json=new_snapshot(run_id))
    acks = []
    for seq in range(STEPS_PER_OWN_RUN):
        step = {"writer": writer, "runId": run_id, "seq": seq}
        response = http.patch(
            f"/runs/{run_id}", json={"trace": [step], "traceFrom": seq, "stepIndex": seq + 1}
        )
        acks.append((response.status_code, response.json()))
    return {"kind": "own", "runId": run_id, "created": created.status_code, "acks": acks}


class Racer:
    """One racing process: what it sent, what was acknowledged, and what it read."""

    def __init__(self, http: httpx.Client, racer: int) -> None:
        self.http = http
        self.racer = racer
        self.statuses: list[tuple[str, int]] = []
        # (runId, step, traceLength) of acknowledged appends.
        self.appends: list[tuple[str, dict[str, Any], int]] = []
        # (runId, version, traceLength) of every acknowledged write.
        self.acks: list[tuple[str, int, int]] = []
        self.creates: dict[str, int] = {}
        self.reads: list[tuple[str, int, list[Any]]] = []
        self.last_read: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []

    def note(self, what: str, run_id: str, response: httpx.Response) -> None:
        self.statuses.append((what, response.status_code))
        if response.status_code in (200, 201):
            ack = response.json()
            self.acks.append((run_id, ack["version"], ack["traceLength"]))
            if ack["runId"] != run_id:
                self.problems.append(f"{what} on {run_id} acknowledged {ack['runId']}")

    def read(self, run_id: str) -> tuple[str, dict[str, Any]]:
        response = self.http.get(f"/runs/{run_id}")
        response.raise_for_status()
        snapshot: dict[str, Any] = response.json()
        self.reads.append((run_id, len(snapshot["trace"]), [s["runId"] for s in snapshot["trace"]]))
        self.last_read[run_id] = snapshot
        return response.headers["etag"], snapshot

    def step(self, run_id: str, seq: int, how: str) -> dict[str, Any]:
        return {"writer": self.racer, "runId": run_id, "seq": seq, "how": how}

    def append_with_put(self, run_id: str, seq: int) -> None:
        step = self.step(run_id, seq, "put")
        for _ in range(MAX_RETRIES):
            etag, snapshot = self.read(run_id)
            snapshot["trace"].append(step)
            snapshot["usage"] = {"lastWriter": self.racer}
            response = self.http.put(f"/runs/{run_id}", json=snapshot, headers={"If-Match": etag})
            self.note("rmw-put", run_id, response)
            if response.status_code == 200:
                self.appends.append((run_id, step, response.json()["traceLength"]))
                return
        self.problems.append(f"rmw-put on {run_id} never got through")

    def append_with_patch(self, run_id: str, seq: int) -> None:
        step = self.step(run_id, seq, "patch")
        for _ in range(MAX_RETRIES):
            etag, snapshot = self.read(run_id)
            response = self.http.patch(
                f"/runs/{run_id}",
                json={"trace": [step], "traceFrom": len(snapshot["trace"])},
                headers={"If-Match": etag},
            )
            self.note("rmw-patch", run_id, response)
            if response.status_code == 200:
                self.appends.append((run_id, step, response.json()["traceLength"]))
                return
        self.problems.append(f"rmw-patch on {run_id} never got through")

    def replay(self, run_id: str, seq: int) -> None:
        """Send again a snapshot read earlier, as a retrying agent would, without If-Match."""
        snapshot = self.last_read.get(run_id)
        if snapshot is None:
            _, snapshot = self.read(run_id)
        response = self.http.put(f"/runs/{run_id}", json=snapshot)
        self.note("replay", run_id, response)
        if response.status_code == 409 and not response.json()["type"].endswith("stale-write"):
            self.problems.append(f"replay on {run_id} refused as {response.json()['type']}")

    def replace_fields(self, run_id: str, seq: int) -> None:
        response = self.http.patch(
            f"/runs/{run_id}", json={"iterations": seq, "usage": {"fieldsBy": self.racer}}
        )
        self.note("fields", run_id, response)

    def race(self) -> Result:
        for run_id in SHARED_RUNS:
            response = self.http.put(
                f"/runs/{run_id}", json=new_snapshot(run_id), headers={"If-None-Match": "*"}
            )
            self.note("create", run_id, response)
            self.creates[run_id] = response.status_code
        actions = (self.append_with_put, self.append_with_patch, self.replay, self.replace_fields)
        for seq in range(RACER_ROUNDS):
            run_id = SHARED_RUNS[(self.racer + seq) % len(SHARED_RUNS)]
            actions[(self.racer + seq) % len(actions)](run_id, seq)
        return {
            "kind": "racer",
            "racer": self.racer,
            "statuses": self.statuses,
            "appends": self.appends,
            "acks": self.acks,
            "creates": self.creates,
            "reads": self.reads,
            "problems": self.problems,
        }


def race_on_shared_runs(http: httpx.Client, racer: int) -> Result:
    return Racer(http, racer).race()


def run_all(url: str) -> list[Result]:
    """Start every worker process together; their results, or fail with their errors."""
    context = multiprocessing.get_context("spawn")
    jobs = [(write_own_run, n) for n in range(OWN_WRITERS)]
    jobs += [(race_on_shared_runs, n) for n in range(RACERS)]
    start = context.Barrier(len(jobs))
    results = context.Queue()
    processes = [
        context.Process(target=run_worker, args=(target, url, n, start, results))
        for target, n in jobs
    ]
    for process in processes:
        process.start()
    collected: list[Result] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while len(collected) < len(processes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(collected)} of {len(processes)} workers finished")
            try:
                collected.append(results.get(timeout=min(remaining, 1.0)))
            except queue.Empty:
                if not any(process.is_alive() for process in processes) and results.empty():
                    raise AssertionError("a worker died without a result") from None
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    errors = [result["error"] for result in collected if "error" in result]
    assert not errors, "\n".join(errors)
    return collected


Outcome = tuple[list[Result], dict[str, dict[str, Any]], dict[str, str]]


# support.BACKENDS, spelt out: importing support would load the server into every worker.
@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    """Run the whole race once against a fresh server on each backend; the results, final
    runs and ETags."""
    from support import store_location

    store = store_location(request, tmp_path_factory.mktemp("concurrency"))
    with store.server() as server:
        yield race(server.url)


def race(url: str) -> Outcome:
    results = run_all(url)
    finals: dict[str, dict[str, Any]] = {}
    etags: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for result in results:
            run_ids = [result["runId"]] if result["kind"] == "own" else list(SHARED_RUNS)
            for run_id in run_ids:
                response = http.get(f"/runs/{run_id}")
                assert response.status_code == 200
                finals[run_id] = response.json()
                etags[run_id] = response.headers["etag"]
        listed = http.get("/runs", params={"limit": 1000}).json()["runs"]
    assert sorted(summary["runId"] for summary in listed) == sorted(finals)
    return results, finals, etags


def test_processes_writing_their_own_runs_lose_and_mix_nothing(
    outcome: Outcome,
) -> None:
    results, finals, etags = outcome
    own = [result for result in results if result["kind"] == "own"]
    assert len(own) == OWN_WRITERS

    for result in own:
        run_id = result["runId"]
        writer = int(run_id.removeprefix("own-"))
        assert result["created"] == 201
        assert result["acks"] == [
            (200, {"runId": run_id, "version": seq + 2, "traceLength": seq + 1})
            for seq in range(STEPS_PER_OWN_RUN)
        ]
        final = finals[run_id]
        assert final["trace"] == [
            {"writer": writer, "runId": run_id, "seq": seq} for seq in range(STEPS_PER_OWN_RUN)
        ]
        assert final["stepIndex"] == STEPS_PER_OWN_RUN
        assert final["input"] == f"input of {run_id}"
        assert etags[run_id] == f'"{STEPS_PER_OWN_RUN + 1}"'


def test_processes_racing_on_the_same_runs_keep_every_acknowledged_write(
    outcome: Outcome,
) -> None:
    results, finals, etags = outcome
    racers = [result for result in results if result["kind"] == "racer"]
    assert len(racers) == RACERS
    problems = [problem for result in racers for problem in result["problems"]]
    assert not problems

    allowed = {
        "create": {201, 412},
        "rmw-put": {200, 412},
        "rmw-patch": {200, 412},
        "replay": {200, 409},
        "fields": {200},
    }
    for result in racers:
        for what, status in result["statuses"]:
            assert status in allowed[what], (what, status)

    for run_id in SHARED_RUNS:
        # Exactly one process created each run.
        creates = Counter(result["creates"][run_id] for result in racers)
        assert creates == {201: 1, 412: RACERS - 1}

        final = finals[run_id]
        trace = final["trace"]
        # Nothing mixed: every step of this run was written for this run.
        assert all(step["runId"] == run_id for step in trace)
        # Nothing lost, nothing invented: the trace is exactly the acknowledged appends, each
        # at the place its acknowledgement gave.
        appends = [
            (step, length) for r in racers for rid, step, length in r["appends"] if rid == run_id
        ]
        assert sorted(length for _, length in appends) == list(range(1, len(trace) + 1))
        for step, length in appends:
            assert trace[length - 1] == step

        acks = [
            (version, length) for r in racers for rid, version, length in r["acks"] if rid == run_id
        ]
        # The stale-write rule held: the trace is at least as long as any write acknowledged.
        assert len(trace) >= max(length for _, length in acks)
        # Every accepted write raised the version by exactly one.
        versions = sorted(version for version, _ in acks)
        assert versions == list(range(1, len(acks) + 1))
        assert etags[run_id] == f'"{len(acks)}"'

    # Reads never went backwards and never saw another run's steps.
    for result in racers:
        seen: dict[str, int] = defaultdict(int)
        for run_id, length, owners in result["reads"]:
            assert length >= seen[run_id]
            seen[run_id] = length
            assert set(owners) <= {run_id}
