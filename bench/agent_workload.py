"""Agent workload: P processes x R runs x S steps through the persistence hooks, against the
design this project replaces, in one invocation.

    .venv/bin/python bench/agent_workload.py                   # 8 x 2 x 200, own server
    .venv/bin/python bench/agent_workload.py --long            # 500 steps a run
    .venv/bin/python bench/agent_workload.py --embedded        # also embedded mode
    .venv/bin/python bench/agent_workload.py --url http://127.0.0.1:8000
    .venv/bin/python bench/agent_workload.py --backend postgres --database-url postgresql://...

Every agent process runs its runs one after another: ``on_run_start``, ``on_step_complete``
after every step, ``on_run_complete``. Afterwards every run is read back and compared with what
the agent last held. Targets:

- **runstore**: the sync client against a runstore server (started here on a free loopback port
  with a temporary database and the access log off, unless ``--url`` is given);
- **reference**: the original TypeScript design, in Python: every process opens one shared
  SQLite file (WAL, ``synchronous=FULL`` like the server, a 5 s busy timeout) and upserts the
  whole snapshot as JSON on every hook;
- **embedded** (``--embedded``): ``embedded_persistence`` on one shared file.

It prints hooks per second, p50/p99 hook latency, the median step-hook latency in the first and
the last tenth of the runs' steps, and the runstore/reference throughput ratio. The exit code is
1 if any run read back differs from what its agent last held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Protocol

import httpx

from runstore.client import EmbeddedStore, RunStoreClient, embedded_persistence

LISTENING = re.compile(r"Uvicorn running on (http://\S+)")
FILLER = (
    "The search returned several relevant pages; the agent extracted the figures it needs, "
    "noted the sources and decided which tool to call next. "
) * 3


# ---------------------------------------------------------------- the agent


# Run ids differ between invocations, so a store that outlives one (--url, PostgreSQL) is fine.
INVOCATION = f"{int(time.time())}-{os.getpid()}"


def new_run(worker: int, run: int, invocation: str = INVOCATION) -> dict[str, Any]:
    question = f"Question {worker}.{run}: compare three suppliers on price and delivery."
    return {
        "runId": f"bench-{invocation}-{worker}-{run}",
        "status": "running",
        "startedAt": 1_700_000_000_000 + 1_000 * worker + run,
        "input": question,
        "history": [{"role": "user", "content": question}],
        "plan": {"goal": "compare suppliers", "steps": ["search", "extract", "compare"]},
        "trace": [],
        "usage": {"inputTokens": 0, "outputTokens": 0},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }


def take_step(snapshot: dict[str, Any]) -> None:
    """One step of about 600 bytes of JSON, and a history turn."""
    index = len(snapshot["trace"])
    snapshot["trace"].append(
        {
            "step": index,
            "tool": "web_search",
            "arguments": {"query": f"{snapshot['runId']} supplier data {index}"},
            "output": f"Step {index}: {FILLER}",
            "durationMs": 800 + index % 17,
            "ok": True,
        }
    )
    snapshot["history"].append({"role": "assistant", "content": f"Finished step {index}."})
    snapshot["usage"] = {"inputTokens": 900 * (index + 1), "outputTokens": 150 * (index + 1)}
    snapshot["stepIndex"] = snapshot["iterations"] = index + 1


def finish(snapshot: dict[str, Any]) -> None:
    steps = len(snapshot["trace"])
    snapshot.update(
        status="completed",
        completedAt=snapshot["startedAt"] + 1_000 * (steps + 1),
        text=f"Supplier B is best after {steps} steps.",
    )


def final_snapshot(worker: int, run: int, steps: int, invocation: str) -> dict[str, Any]:
    """What the agent holds at the end: the bench rebuilds it to check what was stored."""
    snapshot = new_run(worker, run, invocation)
    for _ in range(steps):
        take_step(snapshot)
    finish(snapshot)
    return snapshot


class Hooks(Protocol):
    def on_run_start(self, snapshot: Any) -> None: ...
    def on_step_complete(self, snapshot: Any) -> None: ...
    def on_run_complete(self, snapshot: Any) -> None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------- the reference


REFERENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, started_at INTEGER NOT NULL,
    completed_at INTEGER, input TEXT NOT NULL, history TEXT, plan TEXT, trace TEXT NOT NULL,
    usage TEXT NOT NULL, step_index INTEGER NOT NULL, iterations INTEGER NOT NULL,
    revisions INTEGER NOT NULL, result_text TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS agent_runs_started_at_idx ON agent_runs (started_at DESC);
"""
REFERENCE_UPSERT = """
INSERT INTO agent_runs (run_id, status, started_at, completed_at, input, history, plan, trace,
    usage, step_index, iterations, revisions, result_text, error)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(run_id) DO UPDATE SET status = excluded.status,
    completed_at = excluded.completed_at, history = excluded.history, plan = excluded.plan,
    trace = excluded.trace, usage = excluded.usage, step_index = excluded.step_index,
    iterations = excluded.iterations, revisions = excluded.revisions,
    result_text = excluded.result_text, error = excluded.error
"""


def _reference_connection(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    return connection


class ReferencePersistence:
    """The original local-SQLite persistence: the whole snapshot upserted on every hook."""

    def __init__(self, path: str) -> None:
        self.connection = _reference_connection(path)
        self.connection.executescript(REFERENCE_SCHEMA)

    def _write(self, s: dict[str, Any]) -> None:
        history = s.get("history")
        plan = s.get("plan")
        self.connection.execute(
            REFERENCE_UPSERT,
            (
                s["runId"],
                s["status"],
                s["startedAt"],
                s.get("completedAt"),
                s["input"],
                json.dumps(history) if history else None,
                json.dumps(plan) if plan else None,
                json.dumps(s["trace"]),
                json.dumps(s["usage"]),
                s["stepIndex"],
                s["iterations"],
                s["revisions"],
                s.get("text"),
                s.get("error"),
            ),
        )

    on_run_start = on_step_complete = on_run_complete = _write

    def close(self) -> None:
        self.connection.close()


def reference_read(path: str, run: str) -> dict[str, Any] | None:
    with contextlib.closing(_reference_connection(path)) as connection:
        row = connection.execute("SELECT * FROM agent_runs WHERE run_id = ?", (run,)).fetchone()
    if row is None:
        return None
    names = ("runId", "status", "startedAt", "completedAt", "input", "history", "plan", "trace")
    names += ("usage", "stepIndex", "iterations", "revisions", "text", "error")
    snapshot = dict(zip(names, row, strict=True))
    for name in ("history", "plan", "trace", "usage"):
        if snapshot[name] is not None:
            snapshot[name] = json.loads(snapshot[name])
    return {name: value for name, value in snapshot.items() if value is not None}


# ---------------------------------------------------------------- one agent process


@dataclass
class WorkerResult:
    started: float
    ended: float
    hooks: list[float]  # seconds, every hook
    early_steps: list[float]  # step hooks in the first tenth of a run's steps
    late_steps: list[float]  # step hooks in the last tenth
    error: str | None = None


def open_hooks(target: str, where: str) -> Hooks:
    if target == "runstore":
        return RunStoreClient(where).persistence(close_client=True)
    if target == "embedded":
        return embedded_persistence(where)
    return ReferencePersistence(where)


def agent_process(
    target: str,
    where: str,
    invocation: str,
    worker: int,
    runs: int,
    steps: int,
    barrier: Barrier,
    results: Any,
) -> None:
    tenth = max(1, steps // 10)
    result = WorkerResult(0.0, 0.0, [], [], [])
    try:
        hooks = open_hooks(target, where)
        barrier.wait(120)
        result.started = time.monotonic()
        clock = time.perf_counter
        for run in range(runs):
            snapshot = new_run(worker, run, invocation)
            began = clock()
            hooks.on_run_start(snapshot)
            result.hooks.append(clock() - began)
            for step in range(1, steps + 1):
                take_step(snapshot)
                began = clock()
                hooks.on_step_complete(snapshot)
                took = clock() - began
                result.hooks.append(took)
                if step <= tenth:
                    result.early_steps.append(took)
                elif step > steps - tenth:
                    result.late_steps.append(took)
            finish(snapshot)
            began = clock()
            hooks.on_run_complete(snapshot)
            result.hooks.append(clock() - began)
        result.ended = time.monotonic()
        hooks.close()
    except Exception as exc:  # reported by the parent, which then fails the bench
        result.error = f"{type(exc).__name__}: {exc}"
        barrier.abort()  # the other processes stop waiting for this one
    results.put((worker, result))


# ---------------------------------------------------------------- measuring one target


@dataclass
class Figures:
    target: str
    processes: int
    runs: int
    steps: int
    hooks: int
    seconds: float
    hooks_per_second: float
    p50_ms: float
    p99_ms: float
    early_step_median_ms: float
    late_step_median_ms: float
    late_over_early: float
    runs_checked: int
    runs_wrong: int
    errors: list[str] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure_reference(directory: str, shape: tuple[int, int, int]) -> Figures:
    """The original design's figures: every process upserting whole snapshots into one SQLite
    file in ``directory``."""
    path = f"{directory}/reference.db"
    # The file, WAL mode and table made here, once: processes switching a new file to WAL at the
    # same moment can get "database is locked" without SQLite's busy wait.
    ReferencePersistence(path).close()
    return measure(
        "reference (whole JSON)", "reference", path, *shape, lambda run: reference_read(path, run)
    )


def measure(
    name: str,
    target: str,
    where: str,
    processes: int,
    runs: int,
    steps: int,
    read_back: Callable[[str], dict[str, Any] | None],
) -> Figures:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(
            target=agent_process,
            args=(target, where, INVOCATION, n, runs, steps, barrier, results),
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    collected: list[WorkerResult] = []
    try:
        for _ in workers:
            collected.append(results.get(timeout=3600)[1])
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    return summarise(name, processes, runs, steps, collected, read_back)


def summarise(
    name: str,
    processes: int,
    runs: int,
    steps: int,
    collected: list[WorkerResult],
    read_back: Callable[[str], dict[str, Any] | None],
) -> Figures:
    """The figures of one target from its processes' results; every run is read back."""
    errors = [r.error for r in collected if r.error]
    hooks = [h for r in collected for h in r.hooks]
    early = [h for r in collected for h in r.early_steps]
    late = [h for r in collected for h in r.late_steps]
    done = [r for r in collected if not r.error]
    seconds = (max(r.ended for r in done) - min(r.started for r in done)) if done else 0.0
    wrong = 0
    for worker in range(processes):
        for run in range(runs):
            expected = final_snapshot(worker, run, steps, INVOCATION)
            if read_back(expected["runId"]) != expected:
                wrong += 1
    early_ms = statistics.median(early) * 1000 if early else float("nan")
    late_ms = statistics.median(late) * 1000 if late else float("nan")
    return Figures(
        target=name,
        processes=processes,
        runs=runs,
        steps=steps,
        hooks=len(hooks),
        seconds=round(seconds, 3),
        hooks_per_second=round(len(hooks) / seconds, 1) if seconds else 0.0,
        p50_ms=round(_percentile(hooks, 0.50) * 1000, 3),
        p99_ms=round(_percentile(hooks, 0.99) * 1000, 3),
        early_step_median_ms=round(early_ms, 3),
        late_step_median_ms=round(late_ms, 3),
        late_over_early=round(late_ms / early_ms, 2) if early else float("nan"),
        runs_checked=processes * runs,
        runs_wrong=wrong,
        errors=errors,
    )


# ---------------------------------------------------------------- the server


@contextlib.contextmanager
def runstore_server(directory: str, database_url: str | None) -> Iterator[str]:
    """``runstore serve --port 0`` on a temporary database; yields its URL."""
    command = [sys.executable, "-m", "runstore.service", "serve", "--port", "0"]
    command += ["--database-url", database_url] if database_url else ["--db", f"{directory}/s.db"]
    env = {**os.environ, "RUNSTORE_ACCESS_LOG": "false"}
    env.pop("RUNSTORE_TOKENS", None)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    found: list[str] = []
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match and not ready.is_set():
                found.append(match.group(1))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("runstore serve did not start:\n" + "".join(output))
        yield found[0]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def http_reader(url: str) -> tuple[Callable[[str], dict[str, Any] | None], Callable[[], None]]:
    http = httpx.Client(base_url=url, timeout=30)

    def read(run: str) -> dict[str, Any] | None:
        response = http.get(f"/runs/{run}")
        return response.json() if response.status_code == 200 else None

    return read, http.close


def embedded_reader(path: str) -> tuple[Callable[[str], dict[str, Any] | None], Callable[[], None]]:
    store = EmbeddedStore(path)

    def read(run: str) -> dict[str, Any] | None:
        stored = store.get_run(run)
        return None if stored is None else stored.to_wire()

    return read, store.close


# ---------------------------------------------------------------- main


def print_table(rows: list[Figures]) -> None:
    header = (
        f"{'target':<22}{'hooks':>8}{'seconds':>9}{'hooks/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'early ms':>10}{'late ms':>9}{'late/early':>11}{'wrong':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.target:<22}{r.hooks:>8}{r.seconds:>9.2f}{r.hooks_per_second:>10.1f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.early_step_median_ms:>10.2f}"
            f"{r.late_step_median_ms:>9.2f}{r.late_over_early:>11.2f}"
            f"{r.runs_wrong:>4}/{r.runs_checked:<3}"
        )
        for error in r.errors:
            print(f"    error: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-P", "--processes", type=int, default=8)
    parser.add_argument("-R", "--runs", type=int, default=2, help="runs per process")
    parser.add_argument("-S", "--steps", type=int, default=200, help="steps per run")
    parser.add_argument("--long", action="store_true", help="500 steps per run")
    parser.add_argument("--url", help="a running runstore server instead of starting one")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--database-url", help="postgresql://... for --backend postgres")
    parser.add_argument("--embedded", action="store_true", help="also measure embedded mode")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    steps = 500 if args.long else args.steps
    if min(args.processes, args.runs, steps) < 1:
        parser.error("-P, -R and -S must be at least 1")
    if args.backend == "postgres" and not (args.database_url or args.url):
        parser.error("--backend postgres needs --database-url (or --url of such a server)")
    shape = (args.processes, args.runs, steps)
    print(f"agent workload: {shape[0]} processes x {shape[1]} runs x {shape[2]} steps")

    rows: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="runstore-bench-") as directory:
        database_url = args.database_url if args.backend == "postgres" else None
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(runstore_server(directory, database_url))
            read, close = http_reader(url)
            stack.callback(close)
            rows.append(measure(f"runstore ({args.backend})", "runstore", url, *shape, read))
        if args.embedded:
            path = f"{directory}/embedded.db"
            read, close = embedded_reader(path)
            try:
                rows.append(measure("embedded", "embedded", path, *shape, read))
            finally:
                close()
        if not args.no_reference:
            rows.append(measure_reference(directory, shape))

    print()
    print_table(rows)
    summary: dict[str, Any] = {"figures": [asdict(r) for r in rows]}
    by_target = {r.target.split()[0]: r for r in rows}
    if "reference" in by_target and by_target["reference"].hooks_per_second:
        ratio = by_target["runstore"].hooks_per_second / by_target["reference"].hooks_per_second
        summary["runstore_over_reference"] = round(ratio, 2)
        print(f"\nrunstore / reference hooks per second: {ratio:.2f}x (target >= 2x)")
    runstore = by_target["runstore"]
    print(f"runstore late/early step-hook latency: {runstore.late_over_early:.2f} (target <= 1.5)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    failed = any(r.runs_wrong or r.errors for r in rows)
    if failed:
        print("\nFAILED: some runs were not read back as their agents last held them")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
