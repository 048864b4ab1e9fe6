"""What parsing a body in the parser process costs the event loop, against parsing it inline.

    .venv/bin/python bench/parse_offload.py

For the densest valid PUT bodies (one step holding an array of zeros) of 16, 64 and 256 KiB it
prints the median time of the parse inline and through :class:`BodyParser` (the hop to the
process and back included): where the hop costs more than the parse, parsing inline is cheaper
(``PROCESS_PARSE_BYTES``). Then, for an 8 MB body of 2,000,000 one-character steps (refused for
its items) and one of 2,000 steps of 4 KiB, the longest pause of a ticker task on the loop while
the parser process parsed it. Timings on a shared machine are noisy; run it twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

from runstore.client.problems import TooManyItems
from runstore.service.api.offload import BodyParser
from runstore.service.api.parsers import BodyRules, snapshot_of

RULES = BodyRules(max_depth=256, max_items=100_000)
REPEATS = 15


def put_body(trace: list[Any]) -> bytes:
    snapshot = {
        "runId": "r",
        "status": "running",
        "startedAt": 1,
        "input": "x",
        "trace": trace,
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    return json.dumps(snapshot, separators=(",", ":")).encode()


async def longest_pause(parser: BodyParser, body: bytes) -> float:
    pauses: list[float] = []

    async def ticker() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            pauses.append(time.perf_counter() - started - 0.001)

    ticking = asyncio.create_task(ticker())
    with contextlib.suppress(TooManyItems):  # the tiny steps' answer
        await parser.parse(snapshot_of, body, "r", RULES)
    ticking.cancel()
    return max(pauses)


async def main() -> None:
    parser = BodyParser()
    try:
        await parser.parse(snapshot_of, put_body([]), "r", RULES)  # start the process
        for kib in (16, 64, 256):
            body = put_body([[0] * (kib * 1024 // 2)])
            inline: list[float] = []
            offloaded: list[float] = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                snapshot_of(body, "r", RULES)
                inline.append(time.perf_counter() - started)
                started = time.perf_counter()
                await parser.parse(snapshot_of, body, "r", RULES)
                offloaded.append(time.perf_counter() - started)
            print(
                f"{kib} KiB of zeros: inline {statistics.median(inline) * 1000:.2f} ms, "
                f"in the parser process {statistics.median(offloaded) * 1000:.2f} ms (medians)"
            )
        bodies = {
            "2,000,000 one-character steps": put_body(["a"] * 2_000_000),
            "2,000 steps of 4 KiB": put_body([{"output": "x" * 4096}] * 2_000),
        }
        for name, body in bodies.items():
            pause = await longest_pause(parser, body)
            print(f"{name} ({len(body)} bytes): longest loop pause {pause * 1000:.1f} ms")
    finally:
        await parser.close()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    asyncio.run(main())
