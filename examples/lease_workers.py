"""A supervisor-free recovery loop: workers claim orphaned runs, so a crashed run is finished once.

    .venv/bin/python examples/lease_workers.py                 # starts its own server
    .venv/bin/python examples/lease_workers.py --url http://127.0.0.1:8000   # or uses yours

N worker processes each start a run of their own under a lease (``persistence(holder=...)``:
the lease is renewed in the background while the run is open). Worker 0 is killed (SIGKILL)
halfway through its run. Nobody tells the others: each worker, when idle, asks the store for an
orphaned run (``client.claim``), and the store hands the dead worker's run, once its lease has
run out, to exactly one of them, which resumes it with ``hooks.resume`` and finishes it under
the new lease. Had the dead worker only been paused, its writes would now be refused
(``LeaseLost``): it could not add a step twice. At the end the script checks every run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_agents import local_server, new_run, take_step

from runstore.client import LeaseLost, RetryPolicy, RunStoreClient

STATUS = "leased-demo"


def finish_run(hooks: Any, run: dict[str, Any], worker: str, steps: int, crash_at: int) -> None:
    while len(run["trace"]) < steps:
        take_step(run, worker)
        hooks.on_step_complete(run)  # a PATCH with this step, under the lease
        if len(run["trace"]) == crash_at:
            print(f"  {run['runId']}: {worker} crashes after step {crash_at}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    run.update(status="completed", completedAt=int(time.time() * 1000), text="Done.")
    hooks.on_run_complete(run)  # the last PATCH, then the lease is released


def worker(url: str, name: str, run_id: str, steps: int, crash: bool, ttl: float) -> None:
    """Run ``run_id``, then claim orphaned runs until every run is finished."""
    with RunStoreClient(url, retries=RetryPolicy(total=60.0)) as client:
        hooks = client.persistence(holder=name, lease_ttl=ttl)
        run = new_run(run_id, f"Research question for {run_id}") | {"status": STATUS}
        hooks.on_run_start(run)  # PUT the run, then take its lease
        finish_run(hooks, run, name, steps, steps // 2 if crash else -1)
        print(f"  {run_id}: {name} finished its own run", flush=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            claimed = client.claim(name, ttl, status=STATUS, stale_after=ttl)
            if claimed is None:
                if not any(not s.completed_at for s in client.list_runs(status=STATUS)):
                    return  # nothing left unfinished
                time.sleep(ttl / 4)
                continue
            run = hooks.resume(claimed).to_wire()
            print(
                f"  {claimed.run.run_id}: {name} claimed it at step {len(run['trace'])} "
                f"(lease {claimed.lease.lease})",
                flush=True,
            )
            try:
                finish_run(hooks, run, name, steps, -1)
            except LeaseLost:
                print(f"  {claimed.run.run_id}: {name} lost it; leaving it", flush=True)
                continue
            print(f"  {claimed.run.run_id}: {name} finished it", flush=True)


def demo(url: str, workers: int, steps: int, ttl: float) -> int:
    context = multiprocessing.get_context("spawn")
    tag = f"leased-{os.getpid()}"
    run_ids = [f"{tag}-{n}" for n in range(workers)]
    print(f"{workers} workers, {steps} steps each, {ttl:g} s leases; worker 0 will crash")
    processes = [
        context.Process(target=worker, args=(url, f"worker-{n}", run_ids[n], steps, n == 0, ttl))
        for n in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    ok = processes[0].exitcode == -signal.SIGKILL
    with RunStoreClient(url) as client:
        for run_id in run_ids:
            run = client.get_run(run_id)
            numbered = run is not None and [s["step"] for s in run.trace] == list(range(steps))
            finished = run is not None and run.finished and numbered
            workers_seen = sorted({s["worker"] for s in run.trace}) if run else []
            ok = ok and finished
            print(f"{run_id}: {'ok' if finished else 'WRONG'}, steps by {workers_seen}")
    print(f"\nLook for yourself:\n  curl -s '{url}/runs?status={STATUS}&limit=10'")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running runstore server (default: start one)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lease-ttl", type=float, default=2.0, help="seconds (1 to 3600)")
    args = parser.parse_args()
    if args.workers < 2 or args.steps < 2:
        parser.error("need at least 2 workers and 2 steps")
    if args.url:
        return demo(args.url, args.workers, args.steps, args.lease_ttl)
    with local_server() as url:
        return demo(url, args.workers, args.steps, args.lease_ttl)


if __name__ == "__main__":
    raise SystemExit(main())
