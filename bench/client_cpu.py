"""Client CPU per request: what one agent process spends in the client for each hook.

    .venv/bin/python bench/client_cpu.py                 # own server, 2000 requests per mode
    .venv/bin/python bench/client_cpu.py -n 5000 --url http://127.0.0.1:8000
    .venv/bin/python bench/client_cpu.py --profile hooks # cProfile of the hooks loop

Modes, each against a runstore server (started here on a free port unless ``--url``):

- ``patch``: ``RunStoreClient.patch_run`` of one new step;
- ``hooks``: ``on_step_complete`` of the persistence hooks, one new step each (the agent
  workload's step hook);
- ``async-hooks``: the same through ``AsyncRunStoreClient`` on asyncio.

It prints the client process's CPU time (user + system, ``os.times``) per request, and
the wall time per request. The server runs in another process, so its CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_workload import finish, new_run, runstore_server, take_step

from runstore.client import AsyncRunStoreClient, RunPatch, RunStoreClient

WARM_UP = 100


def _measure(name: str, count: int, loop: Callable[[int], None]) -> None:
    loop(WARM_UP)
    before, wall = os.times(), time.perf_counter()
    loop(count)
    after, wall = os.times(), time.perf_counter() - wall
    user, system = (after.user - before.user) / count, (after.system - before.system) / count
    print(
        f"{name:<12} {count:>6} requests  {(user + system) * 1e6:7.1f} us CPU "
        f"({user * 1e6:5.1f} user + {system * 1e6:5.1f} system)  {wall / count * 1e6:7.1f} us wall"
    )


def patch_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    client = RunStoreClient(url)
    snapshot = new_run(0, 0, f"cpu-patch-{time.time_ns()}")
    client.put_run(snapshot)

    def loop(count: int) -> None:
        for _ in range(count):
            take_step(snapshot)
            index = len(snapshot["trace"]) - 1
            client.patch_run(
                snapshot["runId"],
                RunPatch(trace=[snapshot["trace"][index]], trace_from=index, step_index=index + 1),
            )

    return loop, client.close


def hooks_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    hooks = RunStoreClient(url).persistence(close_client=True)
    state: dict[str, Any] = {"snapshot": None, "runs": 0}

    def loop(count: int) -> None:
        for _ in range(count):
            snapshot = state["snapshot"]
            if snapshot is None or len(snapshot["trace"]) >= 500:
                # Runs of at most 500 steps, as the long agent workload has.
                if snapshot is not None:
                    finish(snapshot)
                    hooks.on_run_complete(snapshot)
                state["runs"] += 1
                snapshot = state["snapshot"] = new_run(0, state["runs"], f"cpu-{time.time_ns()}")
                hooks.on_run_start(snapshot)
            take_step(snapshot)
            hooks.on_step_complete(snapshot)

    return loop, hooks.close


def async_hooks_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    runner = asyncio.Runner()
    hooks = AsyncRunStoreClient(url).persistence(close_client=True)
    snapshot = new_run(0, 0, f"cpu-async-{time.time_ns()}")
    runner.run(hooks.on_run_start(snapshot))

    async def steps(count: int) -> None:
        for _ in range(count):
            take_step(snapshot)
            await hooks.on_step_complete(snapshot)

    def close() -> None:
        runner.run(hooks.close())
        runner.close()

    return lambda count: runner.run(steps(count)), close


MODES = {"patch": patch_loop, "hooks": hooks_loop, "async-hooks": async_hooks_loop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("--url", help="a running runstore server instead of starting one")
    parser.add_argument("--mode", choices=sorted(MODES), action="append")
    parser.add_argument("--profile", choices=sorted(MODES), help="cProfile this mode instead")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="runstore-cpu-"))
            url = stack.enter_context(runstore_server(directory, None))
        if args.profile:
            loop, close = MODES[args.profile](url)
            loop(WARM_UP)
            profiler = cProfile.Profile()
            profiler.runcall(loop, args.requests)
            close()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            return 0
        for name in args.mode or list(MODES):
            loop, close = MODES[name](url)
            try:
                _measure(name, args.requests, loop)
            finally:
                close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
