"""The app's own cost per PATCH or PUT: the ASGI app called in process, with a store that answers
at once, so that only runstore's HTTP-side code is measured (no uvicorn, no SQLite).

    .venv/bin/python bench/app_cpu.py patch               # microseconds per request
    .venv/bin/python bench/app_cpu.py put --callgrind     # CPU instructions per request
    .venv/bin/python bench/app_cpu.py patch --no-metrics  # RUNSTORE_METRICS=false
    .venv/bin/python bench/app_cpu.py metrics             # one GET /metrics scrape

Wall time on a shared machine drifts by tens of percent; for an A/B comparison of a change,
``--callgrind`` counts instructions instead (valgrind's callgrind, the same count on a busy
machine): it runs the loop under valgrind for N and for 2N requests and reports the difference
per request, so that start-up cancels out. The request bodies are the HTTP benchmark's
(``bench/http_load.py``): one new step for PATCH, a 50-step snapshot for PUT.

``metrics`` measures a scrape (``GET /metrics``) after PATCHes, PUTs and 404s made the request
metrics' label sets; the target is under a millisecond of server time (issue 16).
``--no-metrics`` measures the same build with metrics and request ids off, the reference of
their cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_load

from runstore.service.api.limits import BodyBudget
from runstore.service.app import create_app
from runstore.service.config import Settings
from runstore.service.store.base import StoreStats, WriteResult


class InstantStore:
    """Answers writes at once, as if committed."""

    async def patch_run(
        self, run_id: str, patch: Any, *, if_match: int | None = None, lease: int | None = None
    ) -> Any:
        return WriteResult(run_id, 7, 6)

    async def put_run(
        self,
        record: Any,
        *,
        if_match: int | None = None,
        if_none_match: bool = False,
        lease: int | None = None,
    ) -> Any:
        return WriteResult(record.run_id, 7, 50)

    async def get_run(self, run_id: str) -> Any:
        return None

    def stats(self) -> StoreStats:
        return StoreStats(runs_by_status={"running": 40, "completed": 900}, live_leases=12)


def request_body(kind: str) -> bytes:
    if kind == "put":
        return http_load.dumps(http_load.snapshot("run-1", 50))
    index = 5
    return http_load.dumps(
        {
            "trace": [http_load.step(1, index)],
            "traceFrom": index,
            "stepIndex": index + 1,
            "iterations": index + 1,
            "usage": {"inputTokens": 812 * (index + 1), "outputTokens": 120 * (index + 1)},
        }
    )


async def measure(kind: str, requests: int, rounds: int) -> float:
    """Seconds per request, the best of ``rounds`` loops of ``requests``."""
    with tempfile.TemporaryDirectory() as workdir:
        # No access log: it was uvicorn's, outside the app, when the earlier figures were made;
        # benchmark servers run without it (http_load.py).
        settings = Settings(db=str(Path(workdir) / "unused.db"), access_log=False)
        app = create_app(settings)
        if app.state.metrics is not None:
            app.state.metrics.watch(InstantStore().stats, app.state.events)
        body = request_body("patch" if kind == "metrics" else kind)
        headers = [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        state = {
            "store": InstantStore(),
            "settings": settings,
            "body_budget": BodyBudget(settings.max_body_memory),
        }
        message = {"type": "http.request", "body": body, "more_body": False}
        answers: list[int] = []

        async def receive() -> dict[str, Any]:
            return message

        async def send(sent: dict[str, Any]) -> None:
            if sent["type"] == "http.response.start":
                answers.append(sent["status"])

        def scope(method: str, path: str) -> dict[str, Any]:
            return {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": method,
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "root_path": "",
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 8000),
                "state": state,
            }

        method, path = (kind.upper(), "/runs/run-1")
        if kind == "metrics":
            # The label sets a serving store has: writes, reads, misses of several routes.
            for warm_method, warm_path in (
                ("PATCH", "/runs/run-1"),
                ("GET", "/runs/nowhere"),
                ("GET", "/healthz"),
                ("GET", "/no/such/path"),
                ("POST", "/healthz"),
            ):
                for _ in range(50):
                    await app(scope(warm_method, warm_path), receive, send)
            answers.clear()
            method, path = ("GET", "/metrics")
        best = float("inf")
        for _ in range(rounds):
            began = time.perf_counter()
            for _ in range(requests):
                await app(scope(method, path), receive, send)
            best = min(best, (time.perf_counter() - began) / requests)
        if set(answers) != {200}:
            raise SystemExit(f"unexpected answers: {sorted(set(answers))}")
        return best


def callgrind(kind: str, requests: int, no_metrics: bool) -> float:
    """Instructions per request: callgrind totals of N and 2N requests, differenced."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--callgrind needs valgrind")
    totals = []
    with tempfile.TemporaryDirectory() as workdir:
        for count in (requests, 2 * requests):
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/out"]
            command += [sys.executable, __file__, kind, "-n", str(count), "--rounds", "1"]
            if no_metrics:
                command.append("--no-metrics")
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            found = re.search(r"Collected : (\d+)", done.stderr)
            if found is None:
                raise SystemExit(done.stderr)
            totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["patch", "put", "metrics"])
    parser.add_argument("-n", "--requests", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5, help="report the best round")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument(
        "--no-metrics", action="store_true", help="RUNSTORE_METRICS=false: no metrics, no ids"
    )
    args = parser.parse_args()
    if args.no_metrics:
        os.environ["RUNSTORE_METRICS"] = "false"
    if args.callgrind:
        requests = args.requests or (300 if args.kind == "patch" else 100)
        per_request = callgrind(args.kind, requests, args.no_metrics)
        print(f"{args.kind}: {per_request:,.0f} instructions per request")
        return
    requests = args.requests or {"patch": 20_000, "put": 3_000, "metrics": 2_000}[args.kind]
    try:  # the loop `runstore serve` runs on
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    seconds = run(measure(args.kind, requests, args.rounds))
    print(f"{args.kind}: {seconds * 1e6:.1f} us per request (the app alone, an instant store)")


if __name__ == "__main__":
    main()
