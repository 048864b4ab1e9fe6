"""Several agent processes share one runstore server; one crashes mid-run, another resumes it.

    .venv/bin/python examples/shared_agents.py                 # starts its own server
    .venv/bin/python examples/shared_agents.py --url http://127.0.0.1:8000   # or uses yours

Each agent is a process that takes steps with a short sleep and saves its run through the
persistence hooks of ``runstore.client`` (a PUT when the run starts, then a small PATCH per step).
Agent 0 is killed (SIGKILL) halfway through its run. A new worker process then loads that run
with ``load_run`` and finishes it, sending only its own new steps. At the end the script checks
every run in the store and prints curl commands to look at them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runstore.client import RetryPolicy, RunStoreClient

LISTENING = re.compile(r"Uvicorn running on (http://\S+)")
CRASH_MARKER = "crashes"


def new_run(run_id: str, question: str) -> dict[str, Any]:
    """A run as an agent framework holds it when it starts (camelCase, like IRunSnapshot)."""
    return {
        "runId": run_id,
        "status": "running",
        "startedAt": int(time.time() * 1000),
        "input": question,
        "history": [{"role": "user", "content": question}],
        "trace": [],
        "usage": {"inputTokens": 0, "outputTokens": 0},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }


def take_step(run: dict[str, Any], worker: str) -> None:
    """A fake step: think a little, call a pretend tool, record the result."""
    time.sleep(0.02)
    index = len(run["trace"])
    run["trace"].append(
        {"step": index, "tool": "search", "output": f"finding #{index}", "worker": worker}
    )
    run["history"].append({"role": "assistant", "content": f"step {index} done"})
    run["usage"] = {"inputTokens": 120 * (index + 1), "outputTokens": 30 * (index + 1)}
    run["stepIndex"] = run["iterations"] = index + 1


def agent(url: str, run_id: str, steps: int, crash_at: int | None) -> None:
    """One agent process: run ``run_id`` to the end, or die at step ``crash_at``."""
    worker = f"pid {os.getpid()}"
    with RunStoreClient(url, retries=RetryPolicy(total=60.0)) as client:
        hooks = client.persistence()
        run = new_run(run_id, f"Research question for {run_id}")
        hooks.on_run_start(run)
        for _ in range(steps):
            take_step(run, worker)
            hooks.on_step_complete(run)
            if crash_at is not None and len(run["trace"]) == crash_at:
                print(f"  {run_id}: {worker} {CRASH_MARKER} after step {crash_at}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        run.update(status="completed", completedAt=int(time.time() * 1000), text="All done.")
        hooks.on_run_complete(run)
    print(f"  {run_id}: {worker} finished {steps} steps", flush=True)


def resume(url: str, run_id: str, steps: int) -> None:
    """A fresh worker picks up a run another worker left unfinished."""
    worker = f"pid {os.getpid()}"
    with RunStoreClient(url, retries=RetryPolicy(total=60.0)) as client:
        hooks = client.persistence()
        loaded = hooks.load_run(run_id)
        if loaded is None:
            raise SystemExit(f"{run_id} is not in the store")
        run = loaded.to_wire()
        print(f"  {run_id}: {worker} resumes at step {len(run['trace'])}", flush=True)
        while len(run["trace"]) < steps:
            take_step(run, worker)
            hooks.on_step_complete(run)  # a PATCH with just this step
        run.update(status="completed", completedAt=int(time.time() * 1000), text="Resumed.")
        hooks.on_run_complete(run)
    print(f"  {run_id}: {worker} finished it", flush=True)


@contextmanager
def local_server() -> Iterator[str]:
    """``runstore serve`` on a free loopback port with a temporary database."""
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "RUNSTORE_ACCESS_LOG": "false"}
        command = [sys.executable, "-m", "runstore.service", "serve", "--port", "0"]
        command += ["--db", os.path.join(directory, "runs.db")]
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            url = _wait_for_url(server)
            print(f"server: {url} (database {directory}/runs.db)")
            yield url
        finally:
            server.terminate()
            server.wait(15)


def _wait_for_url(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            match = LISTENING.search(line)
            if match and not ready.is_set():
                found.append(match.group(1))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(30):
        server.kill()
        raise SystemExit("runstore serve did not start")
    return found[0]


def demo(url: str, agents: int, steps: int) -> int:
    context = multiprocessing.get_context("spawn")
    run_ids = [f"demo-{os.getpid()}-{n}" for n in range(agents)]
    crash_at = steps // 2
    print(f"{agents} agents, {steps} steps each; {run_ids[0]} crashes at step {crash_at}")
    processes = [
        context.Process(target=agent, args=(url, run_id, steps, crash_at if n == 0 else None))
        for n, run_id in enumerate(run_ids)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    print(f"agent 0 exit code {processes[0].exitcode} (killed); resuming its run elsewhere")
    resumer = context.Process(target=resume, args=(url, run_ids[0], steps))
    resumer.start()
    resumer.join()

    with RunStoreClient(url) as client:
        ok = True
        for run_id in run_ids:
            run = client.get_run(run_id)
            complete = run is not None and run.finished and len(run.trace) == steps
            numbered = run is not None and [s["step"] for s in run.trace] == list(range(steps))
            ok = ok and complete and numbered
            workers = sorted({s["worker"] for s in run.trace}) if run else []
            print(f"{run_id}: {'ok' if complete and numbered else 'WRONG'}, steps by {workers}")
    print("\nLook for yourself:")
    print(f"  curl -s '{url}/runs?limit=10'")
    print(f"  curl -s {url}/runs/{run_ids[0]}")
    print(f"  curl -sI {url}/runs/{run_ids[0]}    # the ETag is the run's version")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running runstore server (default: start one)")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--keep", action="store_true", help="with the built-in server: wait for Enter before exit"
    )
    args = parser.parse_args()
    if args.agents < 1 or args.steps < 2:
        parser.error("need at least 1 agent and 2 steps")
    if args.url:
        return demo(args.url, args.agents, args.steps)
    with local_server() as url:
        code = demo(url, args.agents, args.steps)
        if args.keep:
            input("\nPress Enter to stop the server. ")
        else:
            print("(this server stops now: run with --keep, or --url of your own server, to look)")
        return code


if __name__ == "__main__":
    raise SystemExit(main())
