"""HTTP load benchmark: PATCH (one new step), PUT (a 50-step snapshot) and GET against runstore,
with the two references measured in the same invocation (see bench/reference_apps.py).

    .venv/bin/python bench/http_load.py                      # SQLite, 16 connections, 5 rounds
    .venv/bin/python bench/http_load.py --backend postgres --database-url postgresql://...
    .venv/bin/python bench/http_load.py --backend postgres --database-url ... --replicas 2
    .venv/bin/python bench/http_load.py --backend postgres --database-url ... --versus-sqlite

It starts every server itself on 127.0.0.1 (free ports, temporary databases), pins the servers to
CPU 0 and itself to CPU 1 where it can, drives them with a minimal keep-alive HTTP/1.1 client
(so the client is not the bottleneck), and prints throughput and p50/p99 latency per scenario,
then the ratios the targets are stated in:

- PATCH throughput >= 70% of the floor's (the PATCH is also measured on the ``durable``
  reference, the floor plus a group-committed append: what durability alone costs; its ratios
  are printed without a target);
- PUT of a 50-step snapshot >= 3x the naive endpoint's throughput;
- GET p99 under load <= 2x its p50;
- a PATCH under a lease (``Runstore-Lease``) >= 90% of an unleased PATCH's throughput, both on
  runstore (``--scenarios leases`` measures only this pair).

Each round measures every scenario on runstore and on its reference back to back; a ratio is
the median of the rounds' ratios, which are printed too. On a shared machine whose speed drifts
by tens of percent within minutes, one round's ratio says little.

With ``--scenarios instrumentation`` only PATCH is measured, on the floor, on runstore as it
serves by default (metrics and request ids on) and on the same build with ``RUNSTORE_METRICS=false``
(targets: on >= 0.90 of off, and >= 0.70 of the floor; issue 16).

With ``--versus-sqlite`` the reference of every scenario is a runstore on SQLite instead, and the
ratios are PostgreSQL's throughput over SQLite's (targets: PATCH >= 0.5, PUT >= 0.4; issue 19).

Each runstore line also gives the CPU time per request of the runstore processes ("cpu") and,
on PostgreSQL, of the database backends serving them ("db cpu", read from /proc for the
backends whose application_name this benchmark set): what sizing for separate machines rests on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")

RequestFactory = Callable[[int, int], bytes]  # (connection number, request number) -> bytes


@dataclass
class Result:
    target: str
    scenario: str
    round: int
    requests: int
    seconds: float
    errors: int
    latencies_ms: list[float] = field(repr=False)
    # CPU seconds over the measured time: the servers', and the database backends' (PostgreSQL).
    server_cpu: float | None = None
    database_cpu: float | None = None

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def row(self) -> dict[str, object]:
        return {
            "target": self.target,
            "scenario": self.scenario,
            "round": self.round,
            "requests": self.requests,
            "errors": self.errors,
            "throughput": round(self.throughput, 1),
            "p50_ms": round(self.percentile(0.50), 3),
            "p99_ms": round(self.percentile(0.99), 3),
            "cpu_ms_per_request": _per_request(self.server_cpu, self.requests),
            "db_cpu_ms_per_request": _per_request(self.database_cpu, self.requests),
        }


def _per_request(cpu: float | None, requests: int) -> float | None:
    return None if cpu is None or not requests else round(cpu * 1000 / requests, 3)


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            # Once the drain thread's read has met the end of the output.
            self.process.stdout.close()


def _pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` (those started before now too: runstore's writer and reader
    threads start before uvicorn listens) to ``cpu``; threads started later inherit it."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return
    try:
        threads = [int(task) for task in os.listdir(f"/proc/{pid or os.getpid()}/task")]
    except OSError:
        threads = [pid]
    for thread in threads:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(thread, {cpu})


def start_server(name: str, command: list[str], env: dict[str, str], pin: bool) -> Server:
    process = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    output = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        match = _LISTENING.search(line)
        if match:
            # Drain the rest of its output in the background so the pipe never fills.
            threading.Thread(target=process.stdout.read, daemon=True).start()
            if pin:
                _pin(process.pid, 0)
            return Server(name, process, int(match.group(1)))
    process.kill()
    raise RuntimeError(f"{name} did not start:\n{output.decode(errors='replace')}")


def _cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` so far (those gone count nothing)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            # Fields after the command's closing parenthesis start at the third (state);
            # utime and stime are the 14th and 15th.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


APPLICATION_NAME = f"runstore-bench-{os.getpid()}"


def _tagged(database_url: str) -> str:
    """The URL, naming this benchmark's connections so their backends can be found."""
    return f"{database_url}{'&' if '?' in database_url else '?'}application_name={APPLICATION_NAME}"


def _database_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends serving this benchmark's runstore servers."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
        ).fetchall()
    return [int(row[0]) for row in rows]


def start_runstore(
    db: str, database_url: str | None, pin: bool, env: dict[str, str] | None = None
) -> Server:
    command = [sys.executable, "-m", "runstore.service", "serve", "--port", "0"]
    command += ["--database-url", _tagged(database_url)] if database_url else ["--db", db]
    base = {"RUNSTORE_ACCESS_LOG": "false", "RUNSTORE_AUTH_DISABLED": "true"}
    return start_server("runstore", command, {**base, **(env or {})}, pin)


def start_reference(kind: str, db: str, pin: bool) -> Server:
    # reference_apps.py takes a fixed port; uvicorn prints the port it bound for port 0.
    command = [sys.executable, str(HERE / "reference_apps.py"), kind, "--port", "0", "--db", db]
    return start_server(kind, command, {}, pin)


# ---------------------------------------------------------------- client


def _request(method: str, path: str, body: bytes | None = None, extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def drive(
    ports: list[int],
    make_request: RequestFactory,
    *,
    connections: int,
    seconds: float,
    warmup: float,
    ok: frozenset[int],
    cpu: Callable[[], tuple[float, float | None]],
) -> tuple[int, float, int, list[float], tuple[float, float | None]]:
    """Run ``connections`` keep-alive loops for ``warmup + seconds``; count only after warm-up.
    ``cpu()`` (servers' and database's CPU seconds so far) is sampled as the count starts and
    ends."""
    latencies: list[float] = []
    counted = 0
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def loop(number: int) -> None:
        nonlocal counted, errors
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[number % len(ports)])
        sequence = 0
        try:
            while True:
                began = time.perf_counter()
                if began >= stop_at:
                    return
                status = await _exchange(reader, writer, make_request(number, sequence))
                sequence += 1
                ended = time.perf_counter()
                if began >= measure_from:
                    counted += 1
                    latencies.append((ended - began) * 1000)
                    if status not in ok:
                        errors += 1
        finally:
            writer.close()

    async def sample_cpu() -> tuple[float, float | None]:
        await asyncio.sleep(warmup)
        server_before, database_before = await asyncio.to_thread(cpu)
        await asyncio.sleep(seconds)
        server_after, database_after = await asyncio.to_thread(cpu)
        database = (
            None
            if database_before is None or database_after is None
            else database_after - database_before
        )
        return server_after - server_before, database

    sampler = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(loop(n) for n in range(connections)))
    return counted, seconds, errors, latencies, await sampler


# ---------------------------------------------------------------- workloads


def step(run: int, index: int) -> dict[str, object]:
    """One step result of a realistic size (about 600 bytes of JSON)."""
    return {
        "index": index,
        "kind": "tool",
        "tool": {"name": "search", "arguments": {"query": f"run {run} question {index}"}},
        "output": "lorem ipsum dolor sit amet " * 16,
        "usage": {"inputTokens": 812 + index, "outputTokens": 120},
        "startedAt": 1_700_000_000_000 + index,
        "durationMs": 1234,
    }


def snapshot(run_id: str, steps: int) -> dict[str, object]:
    return {
        "runId": run_id,
        "status": "running",
        "startedAt": 1_700_000_000_000,
        "input": "Plan a three-day trip to Lisbon and book the hotels.",
        "history": [{"role": "user", "content": "Plan a three-day trip to Lisbon."}],
        "plan": {"goal": "trip", "steps": ["flights", "hotels", "itinerary"]},
        "trace": [step(0, i) for i in range(steps)],
        "usage": {"inputTokens": 812 * steps, "outputTokens": 120 * steps},
        "stepIndex": steps,
        "iterations": steps,
        "revisions": 0,
    }


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def patch_factory(prefix: str, base_steps: int, lease: int | None = None) -> RequestFactory:
    """Connection n appends one step at a time to its own run (under ``lease``, if given)."""
    extra = "" if lease is None else f"Runstore-Lease: {lease}\r\n"

    def make(connection: int, sequence: int) -> bytes:
        index = base_steps + sequence
        body = {
            "trace": [step(connection, index)],
            "traceFrom": index,
            "stepIndex": index + 1,
            "iterations": index + 1,
            "usage": {"inputTokens": 812 * (index + 1), "outputTokens": 120 * (index + 1)},
        }
        return _request("PATCH", f"/runs/{prefix}-{connection}", dumps(body), extra)

    return make


def put_factory(prefix: str, steps: int, pool: int) -> RequestFactory:
    """Each request PUTs a whole 50-step snapshot, over a pool of run ids per connection."""
    bodies: dict[str, bytes] = {}

    def make(connection: int, sequence: int) -> bytes:
        run_id = f"{prefix}-{connection}-{sequence % pool}"
        body = bodies.get(run_id)
        if body is None:
            body = bodies[run_id] = dumps(snapshot(run_id, steps))
        return _request("PUT", f"/runs/{run_id}", body)

    return make


def get_factory(prefix: str, runs: int, seed: int) -> RequestFactory:
    rng = random.Random(seed)

    def make(connection: int, sequence: int) -> bytes:
        return _request("GET", f"/runs/{prefix}-{rng.randrange(runs)}")

    return make


async def seed_runs(port: int, prefix: str, count: int, steps: int) -> None:
    """Create ``count`` runs of ``steps`` steps (sequentially, before measuring)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for n in range(count):
            run_id = f"{prefix}-{n}"
            status = await _exchange(
                reader, writer, _request("PUT", f"/runs/{run_id}", dumps(snapshot(run_id, steps)))
            )
            if status not in (200, 201, 204):
                raise RuntimeError(f"seeding {run_id} answered {status}")
    finally:
        writer.close()


async def lease_runs(port: int, prefix: str, count: int) -> None:
    """Take lease 1 on each of ``count`` seeded runs, for an hour."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for n in range(count):
            body = dumps({"holder": f"bench-{n}", "ttlMs": 3_600_000})
            status = await _exchange(
                reader, writer, _request("POST", f"/runs/{prefix}-{n}/lease", body)
            )
            if status != 200:
                raise RuntimeError(f"leasing {prefix}-{n} answered {status}")
    finally:
        writer.close()


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def servers(args: argparse.Namespace, workdir: Path) -> Iterator[dict[str, list[Server]]]:
    started: dict[str, list[Server]] = {}
    try:
        if args.versus_sqlite:
            started["sqlite"] = [start_runstore(str(workdir / "sqlite.db"), None, args.pin)]
        elif args.scenarios == "instrumentation":
            started["floor"] = [start_reference("floor", str(workdir / "floor.db"), args.pin)]
            started["uninstrumented"] = [
                start_runstore(
                    str(workdir / "off.db"),
                    args.database_url,
                    args.pin,
                    {"RUNSTORE_METRICS": "false"},
                )
            ]
        else:
            started["floor"] = [start_reference("floor", str(workdir / "floor.db"), args.pin)]
            started["durable"] = [start_reference("durable", str(workdir / "durable.db"), args.pin)]
            started["naive"] = [start_reference("naive", str(workdir / "naive.db"), args.pin)]
        started["runstore"] = [
            start_runstore(str(workdir / "runstore.db"), args.database_url, args.pin)
            for _ in range(args.replicas)
        ]
        yield started
    finally:
        for group in started.values():
            for server in group:
                server.stop()


def _in_turn(targets: list[str], round_number: int) -> list[str]:
    """The targets of a round, measured back to back, each first in turn from round to round,
    so that a machine that slows down or speeds up favours none."""
    shift = round_number % len(targets)
    return targets[shift:] + targets[:shift]


async def run_all(args: argparse.Namespace, workdir: Path) -> list[Result]:
    results: list[Result] = []
    tag = f"b{int(time.time())}"
    with servers(args, workdir) as running:
        ports = {name: [s.port for s in group] for name, group in running.items()}

        async def measure(
            target: str, scenario: str, factory: RequestFactory, round_number: int
        ) -> None:
            pids = [server.process.pid for server in running[target]]

            def cpu() -> tuple[float, float | None]:
                database = None
                if target == "runstore" and args.database_url:
                    database = _cpu_seconds(_database_pids(args.database_url))
                return _cpu_seconds(pids), database

            counted, seconds, errors, latencies, (server_cpu, database_cpu) = await drive(
                ports[target],
                factory,
                connections=args.connections,
                seconds=args.seconds,
                warmup=args.warmup,
                ok=frozenset({200, 201, 204}),
                cpu=cpu,
            )
            result = Result(
                target,
                scenario,
                round_number,
                counted,
                seconds,
                errors,
                latencies,
                server_cpu,
                database_cpu,
            )
            results.append(result)
            print(_format(result), flush=True)

        versus = "sqlite" if args.versus_sqlite else None
        for round_number in range(args.rounds):
            prefix = f"{tag}-r{round_number}"

            # Leases: the same PATCH with and without Runstore-Lease, back to back, taking
            # turns at going first.
            order = (
                [] if args.scenarios == "instrumentation" else ["PATCH unleased", "PATCH leased"]
            )
            for scenario in order if round_number % 2 == 0 else order[::-1]:
                leased = scenario == "PATCH leased"
                runs = f"{prefix}-{'leased' if leased else 'unleased'}"
                await seed_runs(ports["runstore"][0], runs, args.connections, 5)
                if leased:
                    await lease_runs(ports["runstore"][0], runs, args.connections)
                factory = patch_factory(runs, 5, 1 if leased else None)
                await measure("runstore", scenario, factory, round_number)
            if args.scenarios == "leases":
                continue
            if args.scenarios == "instrumentation":
                # Three targets, each first in turn: a drifting machine favours none.
                for target in _in_turn(["floor", "uninstrumented", "runstore"], round_number):
                    if target != "floor":
                        await seed_runs(ports[target][0], f"{prefix}-patch", args.connections, 5)
                    factory = patch_factory(f"{prefix}-patch", 5)
                    await measure(target, "PATCH 1 step", factory, round_number)
                continue

            # PATCH: every connection appends to its own run, created first with 5 steps.
            patch_references = [versus] if versus else ["floor", "durable"]
            patch_targets = _in_turn([*patch_references, "runstore"], round_number)
            for target in patch_targets:
                if target in ("runstore", "sqlite"):
                    await seed_runs(ports[target][0], f"{prefix}-patch", args.connections, 5)
            for target in patch_targets:
                factory = patch_factory(f"{prefix}-patch", 5)
                await measure(target, "PATCH 1 step", factory, round_number)
            for target in _in_turn([versus or "naive", "runstore"], round_number):
                factory = put_factory(f"{prefix}-put-{target}", 50, 50)
                await measure(target, "PUT 50 steps", factory, round_number)
            for target in _in_turn([versus or "naive", "runstore"], round_number):
                await seed_runs(ports[target][0], f"{prefix}-get", 200, 50)
                factory = get_factory(f"{prefix}-get", 200, 7)
                await measure(target, "GET 50 steps", factory, round_number)
    return results


def _format(result: Result) -> str:
    row = result.row()
    line = (
        f"{row['target']:>9}  {row['scenario']:<15} {row['throughput']:>9.1f} req/s   "
        f"p50 {row['p50_ms']:>7.2f} ms   p99 {row['p99_ms']:>7.2f} ms   errors {row['errors']}"
    )
    if row["cpu_ms_per_request"] is not None:
        line += f"   cpu {row['cpu_ms_per_request']:.3f} ms/req"
    if row["db_cpu_ms_per_request"] is not None:
        line += f"   db cpu {row['db_cpu_ms_per_request']:.3f} ms/req"
    return line


def _metric(results: list[Result], target: str, scenario: str, metric: str) -> dict[int, float]:
    """``metric`` of ``target`` in ``scenario``, by round."""
    return {
        r.round: float(r.row()[metric])  # type: ignore[arg-type]
        for r in results
        if r.target == target and r.scenario == scenario
    }


def _ratios(
    numerators: dict[int, float], denominators: dict[int, float]
) -> tuple[float, list[float]]:
    """The median of the per-round ratios, and the ratios: each round pairs two measurements
    taken back to back, so the machine's drift between rounds cancels out."""
    ratios = [numerators[n] / denominators[n] for n in sorted(numerators)]
    return statistics.median(ratios), ratios


def verdict(ratio: float, rounds: list[float], target: str, met: bool | None) -> dict[str, object]:
    """A ratio, its rounds, and whether it meets its target (None: a figure with no target)."""
    return {
        "ratio": round(ratio, 3),
        "rounds": [round(value, 3) for value in rounds],
        "target": target,
        "met": met,
    }


def summarize_versus_sqlite(results: list[Result]) -> dict[str, dict[str, object]]:
    """PostgreSQL's throughput over SQLite's, per scenario."""
    throughput = functools.partial(_metric, results, metric="throughput")
    targets = {"PATCH 1 step": 0.5, "PUT 50 steps": 0.4, "GET 50 steps": None}
    summary = {}
    for scenario, floor in targets.items():
        ratio, rounds = _ratios(throughput("runstore", scenario), throughput("sqlite", scenario))
        name = scenario.split()[0].lower() + "_postgres_vs_sqlite"
        if floor is None:
            summary[name] = verdict(ratio, rounds, "-", None)
        else:
            summary[name] = verdict(ratio, rounds, f">= {floor}", ratio >= floor)
    return summary


def summarize_instrumentation(results: list[Result]) -> dict[str, dict[str, object]]:
    """PATCH with metrics and request ids on, over the same build with them off, and over the
    floor."""
    throughput = functools.partial(_metric, results, metric="throughput", scenario="PATCH 1 step")
    on = throughput(target="runstore")
    versus_off, off_rounds = _ratios(on, throughput(target="uninstrumented"))
    versus_floor, floor_rounds = _ratios(on, throughput(target="floor"))
    return {
        "patch_on_vs_off": verdict(versus_off, off_rounds, ">= 0.90", versus_off >= 0.90),
        "patch_vs_floor": verdict(versus_floor, floor_rounds, ">= 0.70", versus_floor >= 0.70),
    }


def summarize(results: list[Result]) -> dict[str, dict[str, object]]:
    throughput = functools.partial(_metric, results, metric="throughput")
    leased, leased_rounds = _ratios(
        throughput("runstore", "PATCH leased"), throughput("runstore", "PATCH unleased")
    )

    lease_verdict = {
        "leased_patch_vs_unleased": verdict(leased, leased_rounds, ">= 0.90", leased >= 0.90)
    }
    if not throughput("floor", "PATCH 1 step"):
        return lease_verdict
    patch, patch_rounds = _ratios(
        throughput("runstore", "PATCH 1 step"), throughput("floor", "PATCH 1 step")
    )
    durable, durable_rounds = _ratios(
        throughput("durable", "PATCH 1 step"), throughput("floor", "PATCH 1 step")
    )
    versus_durable, versus_durable_rounds = _ratios(
        throughput("runstore", "PATCH 1 step"), throughput("durable", "PATCH 1 step")
    )
    put, put_rounds = _ratios(
        throughput("runstore", "PUT 50 steps"), throughput("naive", "PUT 50 steps")
    )
    get, get_rounds = _ratios(
        _metric(results, "runstore", "GET 50 steps", "p99_ms"),
        _metric(results, "runstore", "GET 50 steps", "p50_ms"),
    )
    return {
        **lease_verdict,
        "patch_vs_floor": verdict(patch, patch_rounds, ">= 0.70", patch >= 0.70),
        "durable_patch_vs_floor": verdict(durable, durable_rounds, "-", None),
        "patch_vs_durable": verdict(versus_durable, versus_durable_rounds, "-", None),
        "put_vs_naive": verdict(put, put_rounds, ">= 3.0", put >= 3.0),
        "get_p99_over_p50": verdict(get, get_rounds, "<= 2.0", get <= 2.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per scenario")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--rounds", type=int, default=5, help="repeat; ratios are medians of the rounds' ratios"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--database-url", help="PostgreSQL URL (with --backend postgres)")
    parser.add_argument("--replicas", type=int, default=1, help="runstore servers to spread over")
    parser.add_argument(
        "--versus-sqlite",
        action="store_true",
        help="with --backend postgres: compare with a runstore on SQLite, not the references",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="don't pin CPUs")
    parser.add_argument(
        "--scenarios",
        choices=["all", "leases", "instrumentation"],
        default="all",
        help="leases: only the leased and unleased PATCH; instrumentation: PATCH with metrics "
        "and request ids on and off, and the floor's",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.backend == "postgres" and not args.database_url:
        parser.error("--backend postgres needs --database-url")
    if args.backend == "sqlite":
        args.database_url = None
        if args.versus_sqlite:
            parser.error("--versus-sqlite compares PostgreSQL with SQLite: use --backend postgres")
    if args.replicas > 1 and args.backend == "sqlite":
        parser.error("replicas share one database: use --backend postgres")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.pin:
        _pin(0, 1)
    print(
        f"backend {args.backend}, {args.replicas} runstore server(s), "
        f"{args.connections} connections, {args.seconds:g} s per scenario, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="runstore-bench-") as workdir:
        results = asyncio.run(run_all(args, Path(workdir)))
    if args.versus_sqlite:
        summary = summarize_versus_sqlite(results)
    elif args.scenarios == "instrumentation":
        summary = summarize_instrumentation(results)
    else:
        summary = summarize(results)
    print()
    for name, verdict in summary.items():
        rounds = " ".join(f"{value:.2f}" for value in verdict["rounds"])  # type: ignore[attr-defined]
        met = "-" if verdict["met"] is None else verdict["met"]
        print(
            f"{name:<24} {verdict['ratio']:>7}  target {verdict['target']:<7}  "
            f"met: {met!s:<5}  (rounds: {rounds})"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: v for k, v in vars(args).items() if k != "json"},
                    "results": [r.row() for r in results],
                    "summary": summary,
                },
                indent=2,
                default=str,
            )
        )
    failed = any(r.errors for r in results if r.target == "runstore")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
