"""CPU per write of the PostgreSQL store's group commit, apart from HTTP: a replica's share and
the database's, by group size.

    .venv/bin/python bench/pg_groups.py --database-url postgresql://postgres@127.0.0.1:5432/db
    .venv/bin/python bench/pg_groups.py --database-url ... --sizes 1 8 --groups 400 --rounds 3
    PYTHONPATH=/tmp/before .venv/bin/python bench/pg_groups.py ...   # another build

A :class:`PostgresStore` runs in this process. For each group size ``k`` it creates ``k`` runs
and then sends ``--groups`` times ``k`` PATCHes at once (one new step each, the bodies of
``bench/http_load.py``), waiting for each batch before the next: every batch is one group, one
transaction. It prints, per write, the CPU time of this process (the store's work in a replica:
judging, psycopg, the event loop) and of the PostgreSQL backends serving it (read from /proc,
so the database must run on this machine), and the writes per second. Each size is measured
``--rounds`` times, taking turns, so a machine that slows down favours none; compare CPU per
write, which a busy machine disturbs far less than throughput. At the end it checks that every
run holds every PATCH it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_load

from runstore.service.store.postgres import PostgresStore
from runstore.service.store.records import patch_record, snapshot_record


def _patch(run: int, index: int) -> object:
    return patch_record(
        {
            "trace": [http_load.step(run, index)],
            "traceFrom": index,
            "stepIndex": index + 1,
            "iterations": index + 1,
            "usage": {"inputTokens": 812 * (index + 1), "outputTokens": 120 * (index + 1)},
        }
    )


async def _measure(
    store: PostgresStore, url: str, prefix: str, size: int, groups: int, first: int
) -> tuple[float, float, float]:
    """(replica CPU ms, database CPU ms) per write, and writes per second."""
    run_ids = [f"{prefix}-{run}" for run in range(size)]
    bodies = [[_patch(run, first + n) for run in range(size)] for n in range(groups)]
    backends = http_load._database_pids(url)
    started = time.perf_counter()
    cpu = time.process_time()
    database = http_load._cpu_seconds(backends)
    for n in range(groups):
        await asyncio.gather(
            *(
                store.patch_run(run_id, body)
                for run_id, body in zip(run_ids, bodies[n], strict=True)
            )
        )
    elapsed = time.perf_counter() - started
    writes = size * groups
    replica_ms = (time.process_time() - cpu) * 1000 / writes
    database_ms = (http_load._cpu_seconds(backends) - database) * 1000 / writes
    return replica_ms, database_ms, writes / elapsed


async def main_async(args: argparse.Namespace) -> None:
    url = http_load._tagged(args.database_url)
    tag = f"g{os.getpid()}-{int(time.time())}"
    results: dict[int, list[tuple[float, float, float]]] = {size: [] for size in args.sizes}
    async with PostgresStore(url) as store:
        for size in args.sizes:
            for run in range(size):
                snapshot = http_load.snapshot(f"{tag}-{size}-{run}", 5)
                await store.put_run(snapshot_record(snapshot))
        # A warm-up group of each size: prepared statements, pool connections.
        next_index = {size: 5 for size in args.sizes}
        for size in args.sizes:
            await _measure(store, url, f"{tag}-{size}", size, 20, next_index[size])
            next_index[size] += 20
        for round_number in range(args.rounds):
            shift = round_number % len(args.sizes)
            for size in args.sizes[shift:] + args.sizes[:shift]:
                result = await _measure(
                    store, url, f"{tag}-{size}", size, args.groups, next_index[size]
                )
                next_index[size] += args.groups
                results[size].append(result)
                print(
                    f"group of {size:>3}: replica {result[0]:.3f} ms/write, "
                    f"database {result[1]:.3f} ms/write, {result[2]:,.0f} writes/s",
                    flush=True,
                )
        # Every PATCH was answered 200; each run must hold them all.
        for size in args.sizes:
            for run in range(size):
                stored = await store.get_run(f"{tag}-{size}-{run}")
                assert stored is not None
                assert stored.version == next_index[size] - 4, "a PATCH is missing"
    print()
    for size, rounds in results.items():
        replica = statistics.median(r[0] for r in rounds)
        database = statistics.median(r[1] for r in rounds)
        rate = statistics.median(r[2] for r in rounds)
        print(
            f"group of {size:>3}: median replica {replica:.3f} ms/write, "
            f"database {database:.3f} ms/write, {rate:,.0f} writes/s ({len(rounds)} rounds)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--groups", type=int, default=300, help="groups per size and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
