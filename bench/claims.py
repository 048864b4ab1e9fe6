"""Claims per second: concurrent claimers taking over orphaned runs (issue 12).

    .venv/bin/python bench/claims.py                         # SQLite, 16 claimers, 1000 runs
    .venv/bin/python bench/claims.py --backend postgres --database-url postgresql://...
    .venv/bin/python bench/claims.py --backend postgres --database-url ... --replicas 2

It starts runstore itself on 127.0.0.1 (a temporary database on SQLite), seeds ``--runs`` runs
that never had a lease (so a claim with ``staleAfterMs: 0`` may take them), then lets
``--claimers`` keep-alive connections claim until the store answers 204, spread over the
replicas. It prints claims per second for each round and their median, and checks that every
run was claimed exactly once. Each round seeds runs of a status of its own, so rounds (and
leftovers of earlier invocations in a PostgreSQL database) do not mix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from http_load import Server, _exchange, _pin, _request, dumps, snapshot, start_runstore


async def seed(port: int, prefix: str, status: str, count: int) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    run_ids = [f"{prefix}-{n}" for n in range(count)]
    try:
        for run_id in run_ids:
            body = dumps({**snapshot(run_id, 3), "status": status})
            if await _exchange(reader, writer, _request("PUT", f"/runs/{run_id}", body)) != 201:
                raise RuntimeError(f"seeding {run_id} failed")
    finally:
        writer.close()
    return run_ids


async def claim_all(ports: list[int], status: str, claimers: int) -> tuple[list[str], float]:
    """Every run claimed, in order, and the seconds it took."""
    claimed: list[str] = []
    body = dumps({"holder": "bench", "ttlMs": 3_600_000, "status": [status], "staleAfterMs": 0})
    request = _request("POST", "/claims", body)

    async def claimer(number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[number % len(ports)])
        try:
            while True:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                code = int(head[9:12])
                length = next(
                    (
                        int(line[15:])
                        for line in head.split(b"\r\n")
                        if line[:15].lower() == b"content-length:"
                    ),
                    0,
                )
                payload = await reader.readexactly(length) if length else b""
                if code == 204:
                    return
                if code != 200:
                    raise RuntimeError(f"a claim answered {code}: {payload[:200]!r}")
                claimed.append(json.loads(payload)["run"]["runId"])
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(claimer(n) for n in range(claimers)))
    return claimed, time.perf_counter() - started


async def run(args: argparse.Namespace, workdir: Path) -> list[float]:
    servers: list[Server] = []
    rates: list[float] = []
    try:
        for _ in range(args.replicas):
            servers.append(start_runstore(str(workdir / "runs.db"), args.database_url, args.pin))
        ports = [server.port for server in servers]
        tag = f"c{int(time.time())}"
        for round_number in range(args.rounds):
            status = f"{tag}-r{round_number}"
            run_ids = await seed(ports[0], status, status, args.runs)
            claimed, seconds = await claim_all(ports, status, args.claimers)
            counts = Counter(claimed)
            if set(counts) != set(run_ids) or max(counts.values()) != 1:
                raise SystemExit("WRONG: a run was claimed twice or not at all")
            rates.append(len(claimed) / seconds)
            print(
                f"round {round_number}: {len(claimed)} claims in {seconds:.2f} s = "
                f"{rates[-1]:.0f} claims/s (each run once)",
                flush=True,
            )
    finally:
        for server in servers:
            server.stop()
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claimers", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--database-url", help="PostgreSQL URL (with --backend postgres)")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="don't pin CPUs")
    args = parser.parse_args()
    if args.backend == "postgres" and not args.database_url:
        parser.error("--backend postgres needs --database-url")
    if args.backend == "sqlite":
        args.database_url = None
        if args.replicas > 1:
            parser.error("replicas share one database: use --backend postgres")
    if args.pin:
        _pin(0, 1)
    print(
        f"backend {args.backend}, {args.replicas} server(s), {args.claimers} claimers, "
        f"{args.runs} orphaned runs per round"
    )
    with tempfile.TemporaryDirectory(prefix="runstore-claims-") as workdir:
        rates = asyncio.run(run(args, Path(workdir)))
    print(f"median: {statistics.median(rates):.0f} claims/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
