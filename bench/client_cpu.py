"""Client CPU per request: what one agent process spends in the client for each hook.

    .venv/bin/python bench/client_cpu.py                 # own server, 2000 requests per mode
    .venv/bin/python bench/client_cpu.py -n 5000 --url http://127.0.0.1:8000
    .venv/bin/python bench/client_cpu.py --profile hooks # cProfile of the hooks loop

Modes, each against a runstore server (started here on a free port unless ``--url``):

- ``patch``: ``RunStoreClient.patch_run`` of one new step;
- ``hooks``: ``on_step_complete`` of the persistence hooks, one new step each (the agent
  workload's step hook);
- ``async-hooks``: the same through ``AsyncRunStoreClient`` on asyncio;
- ``floor``: a bare ``httpx.Client.patch`` of the very bytes the ``hooks`` mode sends (recorded
  beforehand from the hooks over an ``httpx.MockTransport``), runs started and completed at the
  same points: what any httpx client pays, so ``hooks`` minus ``floor`` is the hooks' own cost
  (the ledger, the JSON of the new step, the retry loop, reading the answer);
- ``async-floor``: the same bare PATCHes through ``httpx.AsyncClient`` on asyncio, what
  ``async-hooks`` is compared with (an async httpx request costs more CPU than a sync one).

It prints the client process's CPU time (user + system, ``os.times``) per request, and
the wall time per request. The server runs in another process, so its CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_workload import finish, new_run, runstore_server, take_step

from runstore.client import AsyncRunStoreClient, RunPatch, RunStoreClient

WARM_UP = 100
# Runs of at most this many steps, as the long agent workload has.
RUN_STEPS = 500


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
            if snapshot is None or len(snapshot["trace"]) >= RUN_STEPS:
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


def recorded_run() -> tuple[str, bytes, list[bytes], bytes]:
    """The run id, the start PUT's body, the step PATCHes' bodies and the completing PATCH's
    body that the hooks send for one run of RUN_STEPS steps."""
    sent: list[bytes] = []
    trace_length = 0

    def acknowledge(request: httpx.Request) -> httpx.Response:
        # What the server answers a write, as far as the hooks read it.
        nonlocal trace_length
        sent.append(request.content)
        body = json.loads(request.content)
        if "traceFrom" in body or request.method == "PUT":
            trace_length = body.get("traceFrom", 0) + len(body["trace"])
        ack = {"runId": "floor", "version": len(sent), "traceLength": trace_length}
        return httpx.Response(201 if request.method == "PUT" else 200, json=ack)

    client = RunStoreClient("http://runstore.test", transport=httpx.MockTransport(acknowledge))
    with client.persistence(close_client=True) as hooks:
        snapshot = new_run(0, 1, f"cpu-{time.time_ns()}")  # an id as long as hooks_loop's
        hooks.on_run_start(snapshot)
        for _ in range(RUN_STEPS):
            take_step(snapshot)
            hooks.on_step_complete(snapshot)
        finish(snapshot)
        hooks.on_run_complete(snapshot)
    assert len(sent) == RUN_STEPS + 2, "one PUT, a PATCH per step, a completing PATCH"
    return snapshot["runId"], sent[0], sent[1:-1], sent[-1]


def floor_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    run_id, start, steps, complete = recorded_run()
    http = httpx.Client(base_url=url, headers={"accept": "application/json"})
    headers = {"content-type": "application/json"}
    state: dict[str, Any] = {"path": None, "step": RUN_STEPS, "runs": 0}

    def loop(count: int) -> None:
        for _ in range(count):
            if state["step"] >= RUN_STEPS:
                if state["path"] is not None:
                    http.patch(state["path"], content=complete, headers=headers)
                state["runs"] += 1
                fresh = f"bench-cpu-{time.time_ns()}-0-{state['runs']}"
                state["path"], state["step"] = f"/runs/{fresh}", 0
                body = start.replace(run_id.encode(), fresh.encode())
                http.put(state["path"], content=body, headers=headers).raise_for_status()
            state["answer"] = http.patch(
                state["path"], content=steps[state["step"]], headers=headers
            )
            state["step"] += 1
        state["answer"].raise_for_status()  # once per loop: the bytes were taken, not refused

    return loop, http.close


def async_floor_loop(url: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """``floor`` through ``httpx.AsyncClient`` on asyncio: what ``async-hooks`` is measured
    against."""
    run_id, start, steps, complete = recorded_run()
    runner = asyncio.Runner()
    http = httpx.AsyncClient(base_url=url, headers={"accept": "application/json"})
    headers = {"content-type": "application/json"}
    state: dict[str, Any] = {"path": None, "step": RUN_STEPS, "runs": 0}

    async def requests(count: int) -> None:
        for _ in range(count):
            if state["step"] >= RUN_STEPS:
                if state["path"] is not None:
                    await http.patch(state["path"], content=complete, headers=headers)
                state["runs"] += 1
                fresh = f"bench-cpu-async-{time.time_ns()}-0-{state['runs']}"
                state["path"], state["step"] = f"/runs/{fresh}", 0
                body = start.replace(run_id.encode(), fresh.encode())
                (await http.put(state["path"], content=body, headers=headers)).raise_for_status()
            state["answer"] = await http.patch(
                state["path"], content=steps[state["step"]], headers=headers
            )
            state["step"] += 1
        state["answer"].raise_for_status()

    def close() -> None:
        runner.run(http.aclose())
        runner.close()

    return lambda count: runner.run(requests(count)), close


MODES = {
    "patch": patch_loop,
    "hooks": hooks_loop,
    "async-hooks": async_hooks_loop,
    "floor": floor_loop,
    "async-floor": async_floor_loop,
}


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
