"""The agent workload of ``bench/agent_workload.py`` driven from Node: P Node processes x R runs x
S steps through the TypeScript client's hooks (``typescript/``), against the original design run
from Python in the same invocation.

    make -C typescript build   # or: cd typescript && npm ci && npm run build
    .venv/bin/python bench/agent_workload_node.py              # 8 x 2 x 200, own server
    .venv/bin/python bench/agent_workload_node.py -P 4 -R 1 -S 100 --json results.json
    .venv/bin/python bench/agent_workload_node.py --python-client   # the Python client too

Each Node process (``typescript/bench/agent-worker.ts``) builds the same runs as the Python
workload and awaits every hook of ``makeHttpPersistence`` against a runstore server started here
(``runstore serve`` on a free loopback port, temporary SQLite file, access log off) unless
``--url`` is given. The processes start together; afterwards every run is read back and compared
with what its agent last held. The reference is the Python one of ``agent_workload.py``: every
process upserting the whole snapshot into one local SQLite file. Printed: hooks per second,
p50/p99 hook latency, the median step-hook latency in the first and last tenth of the runs'
steps, and the Node-client/reference throughput ratio. Exit code 1 if any run read back differs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agent_workload import (
    INVOCATION,
    Figures,
    WorkerResult,
    http_reader,
    measure,
    measure_reference,
    print_table,
    runstore_server,
    summarise,
)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "typescript" / "dist" / "bench" / "agent-worker.js"


def measure_node(url: str, processes: int, runs: int, steps: int, node: str) -> Figures:
    """Start P Node agent processes, let them go at once, and collect their timings."""
    command = [node, str(WORKER), url, INVOCATION]
    workers = [
        subprocess.Popen(
            [*command, str(n), str(runs), str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    collected: list[WorkerResult] = []
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("a Node agent process did not start")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            collected.append(WorkerResult(**json.loads(line)))
    finally:
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(30)
            if worker.poll() is None:
                worker.kill()
    read, close = http_reader(url)
    try:
        return summarise("runstore (node client)", processes, runs, steps, collected, read)
    finally:
        close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-P", "--processes", type=int, default=8)
    parser.add_argument("-R", "--runs", type=int, default=2, help="runs per process")
    parser.add_argument("-S", "--steps", type=int, default=200, help="steps per run")
    parser.add_argument("--url", help="a running runstore server instead of starting one")
    parser.add_argument("--node", default=shutil.which("node") or "node", help="node binary")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference")
    parser.add_argument(
        "--python-client", action="store_true", help="also the Python client (on its own server)"
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    shape = (args.processes, args.runs, args.steps)
    if min(shape) < 1:
        parser.error("-P, -R and -S must be at least 1")
    if not WORKER.exists():
        parser.error(f"{WORKER} is missing: build the TypeScript client first (make test-ts)")
    print(f"agent workload from Node: {shape[0]} processes x {shape[1]} runs x {shape[2]} steps")

    rows: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="runstore-bench-node-") as directory:
        with contextlib.ExitStack() as stack:
            url = args.url or stack.enter_context(runstore_server(directory, None))
            rows.append(measure_node(url, *shape, args.node))
        if args.python_client:
            # Its own server and file: the Python workload uses the same run ids.
            with contextlib.ExitStack() as stack:
                python_dir = stack.enter_context(tempfile.TemporaryDirectory(dir=directory))
                url = stack.enter_context(runstore_server(python_dir, None))
                read, close = http_reader(url)
                stack.callback(close)
                rows.append(measure("runstore (python client)", "runstore", url, *shape, read))
        if not args.no_reference:
            rows.append(measure_reference(directory, shape))

    print()
    print_table(rows)
    summary: dict[str, Any] = {"figures": [asdict(r) for r in rows]}
    node = rows[0]
    reference = [r for r in rows if r.target.startswith("reference")]
    if reference and reference[0].hooks_per_second:
        ratio = node.hooks_per_second / reference[0].hooks_per_second
        summary["node_over_reference"] = round(ratio, 2)
        print(f"\nnode client / reference hooks per second: {ratio:.2f}x")
    print(f"node client late/early step-hook latency: {node.late_over_early:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    failed = any(r.runs_wrong or r.errors for r in rows)
    if failed:
        print("\nFAILED: some runs were not read back as their agents last held them")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
