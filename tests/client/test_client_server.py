"""The client against a real server (``runstore serve`` on a free port): many agent processes
at once, the server killed and restarted under a running agent, and the shared-agents example."""

from __future__ import annotations

import asyncio
import copy
import itertools
import multiprocessing
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_rig import agent_snapshot, finish, take_step, wire
from support import ServerProcess

from runstore.client import AsyncRunStoreClient, RetryPolicy, RunStoreClient

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
# Long enough to wait out a server restart on a busy machine.
PATIENT = RetryPolicy(max_attempts=100, first_delay=0.02, max_delay=0.25, total=60.0)


def run_agent_sync(url: str, worker: int, runs: int, steps: int) -> list[dict[str, Any]]:
    finished = []
    with RunStoreClient(url, retries=PATIENT) as client:
        hooks = client.persistence()
        for run in range(runs):
            snapshot = agent_snapshot(f"w{worker}-r{run}", startedAt=1_000 * worker + run)
            hooks.on_run_start(snapshot)
            for _ in range(steps):
                hooks.on_step_complete(take_step(snapshot, note=f" by w{worker}"))
            hooks.on_run_complete(finish(snapshot))
            finished.append(copy.deepcopy(snapshot))
    return finished


async def _run_agent_async(url: str, worker: int, runs: int, steps: int) -> list[dict[str, Any]]:
    finished = []
    async with AsyncRunStoreClient(url, retries=PATIENT) as client:
        hooks = client.persistence()
        for run in range(runs):
            snapshot = agent_snapshot(f"w{worker}-r{run}", startedAt=1_000 * worker + run)
            await hooks.on_run_start(snapshot)
            for _ in range(steps):
                await hooks.on_step_complete(take_step(snapshot, note=f" by w{worker}"))
            await hooks.on_run_complete(finish(snapshot))
            finished.append(copy.deepcopy(snapshot))
    return finished


def run_agent(url: str, worker: int, runs: int, steps: int) -> list[dict[str, Any]]:
    """An agent process: odd workers use the async client, even ones the sync client."""
    if worker % 2:
        return asyncio.run(_run_agent_async(url, worker, runs, steps))
    return run_agent_sync(url, worker, runs, steps)


def test_many_agent_processes_share_one_server(server: ServerProcess) -> None:
    workers, runs, steps = 6, 3, 15
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = list(
            pool.map(
                run_agent,
                [server.url] * workers,
                range(workers),
                [runs] * workers,
                [steps] * workers,
            )
        )
    finished = list(itertools.chain.from_iterable(results))
    assert len(finished) == workers * runs
    with httpx.Client(base_url=server.url) as http:
        for snapshot in finished:
            response = http.get(f"/runs/{snapshot['runId']}")
            assert response.status_code == 200
            assert response.json() == wire(snapshot)
            # start, every step, completion: one write each, no whole re-sends
            assert response.headers["etag"] == f'"{steps + 2}"'
        listed = http.get("/runs", params={"limit": 1000}).json()["runs"]
    assert len(listed) == workers * runs
    assert {run["status"] for run in listed} == {"completed"}


class Chaos(threading.Thread):
    """Kills the server once the agent has taken ``at`` steps, and starts it again."""

    def __init__(self, server: ServerProcess, progress: list[int], at: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.progress = progress
        self.at = at
        self.killed_pid: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 60
            while self.progress[0] < self.at and time.monotonic() < deadline:
                time.sleep(0.005)
            self.killed_pid = self.server.pid
            self.server.kill()
            time.sleep(0.3)  # the agent keeps going meanwhile, into its retries
            self.server.restart()
        except BaseException as exc:
            self.error = exc


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_run_survives_the_server_being_killed_and_restarted(
    server: ServerProcess, mode: str
) -> None:
    steps, progress = 60, [0]
    chaos = Chaos(server, progress, at=15)
    chaos.start()
    snapshot = agent_snapshot("survivor")

    if mode == "sync":
        with RunStoreClient(server.url, retries=PATIENT) as client:
            hooks = client.persistence()
            hooks.on_run_start(snapshot)
            for _ in range(steps):
                hooks.on_step_complete(take_step(snapshot))
                progress[0] += 1
                time.sleep(0.01)
            hooks.on_run_complete(finish(snapshot))
    else:

        async def agent() -> None:
            async with AsyncRunStoreClient(server.url, retries=PATIENT) as client:
                hooks = client.persistence()
                await hooks.on_run_start(snapshot)
                for _ in range(steps):
                    await hooks.on_step_complete(take_step(snapshot))
                    progress[0] += 1
                    await asyncio.sleep(0.01)
                await hooks.on_run_complete(finish(snapshot))

        asyncio.run(agent())

    chaos.join(60)
    assert chaos.error is None
    assert chaos.killed_pid is not None
    assert server.pid != chaos.killed_pid  # it really was another server process
    with httpx.Client(base_url=server.url) as http:
        stored = http.get("/runs/survivor").json()
    assert stored == wire(snapshot)
    assert [step["step"] for step in stored["trace"]] == list(range(steps))


@pytest.mark.slow
def test_the_shared_agents_example_runs() -> None:
    example = str(ROOT / "examples" / "shared_agents.py")
    done = subprocess.run(
        [sys.executable, example, "--agents", "3", "--steps", "6"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "crashes after step 3" in done.stdout
    assert "resumes at step 3" in done.stdout
    assert done.stdout.count(": ok, steps by") == 3
    assert "curl -s" in done.stdout
