"""The event loop's instructions per change handed to N streams of one run, under callgrind.

    .venv/bin/python bench/events_cpu.py                            # 200 streams, 5 changes
    .venv/bin/python bench/events_cpu.py --watchers 1000 -n 3
    PYTHONPATH=/tmp/before .venv/bin/python bench/events_cpu.py     # another build

It starts ``runstore serve`` under valgrind's callgrind (as bench/server_cpu.py does), opens N
streams of run ``watched`` (``GET /runs/watched/events``, read by this process) and PATCHes that
run n times, each time waiting until every stream has the change's event before the next: each
change is then handed out on its own, however a build groups changes that come together. Then
the same with 2n PATCHes, and both again for run ``quiet`` that nobody follows, the streams
open all the same. The main thread's (the event loop's) instructions per change, the watched
run's minus the quiet one's, are what handing one change to N streams costs the loop: unlike
a timing, the same from one invocation to the next and on a busy machine. Slow: minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from events import SNAPSHOT
from http_load import _exchange, _request
from server_cpu import _SUMMARY, _start


def _callgrind(command: str, pid: int) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


async def _drive(pid: int, port: int, watchers: int, changes: int, workdir: str) -> dict[str, int]:
    """The main thread's instructions while ``changes`` PATCHes of each run were served."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for run_id in ("watched", "quiet"):
        body = json.dumps({**SNAPSHOT, "runId": run_id}).encode()
        assert await _exchange(reader, writer, _request("PUT", f"/runs/{run_id}", body)) == 201
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(watchers)]
    received = [b""] * watchers

    async def until(number: int, marker: bytes) -> None:
        stream = streams[number][0]
        while marker not in received[number]:
            chunk = await asyncio.wait_for(stream.read(65536), 600)
            assert chunk, "a stream ended"
            received[number] = received[number][-200:] + chunk

    for _, stream_writer in streams:
        stream_writer.write(_request("GET", "/runs/watched/events"))
    await asyncio.gather(*(until(n, b"event: run") for n in range(watchers)))
    counts = {}
    for dump, run_id in enumerate(("quiet", "watched", "quiet", "watched"), start=1):
        await asyncio.to_thread(_callgrind, "--zero", pid)
        for number in range(changes):
            body = json.dumps({"text": f"change {dump}.{number}"}).encode()
            status = await _exchange(reader, writer, _request("PATCH", f"/runs/{run_id}", body))
            assert status == 200, status
            if run_id == "watched":
                marker = b'"text":"change %d.%d"' % (dump, number)
                await asyncio.gather(*(until(n, marker) for n in range(watchers)))
        await asyncio.to_thread(_callgrind, "--dump", pid)
        dumped = await asyncio.to_thread(Path(workdir, f"callgrind.out.{dump}-01").read_bytes)
        found = _SUMMARY.search(dumped)
        assert found is not None, "no callgrind summary of the main thread"
        # The lower of the two rounds: a round may include a garbage collection.
        counts[run_id] = min(counts.get(run_id, 1 << 62), int(found.group(1)))
    for _, stream_writer in streams:
        stream_writer.close()
    writer.close()
    return counts


def main_thread_instructions(watchers: int, changes: int) -> dict[str, int]:
    env = {
        "RUNSTORE_EVENTS_KEEPALIVE": "3600",  # no keep-alive comment in the counts
        "RUNSTORE_KEEP_ALIVE_TIMEOUT": "3600",  # the writer's connection waits for the streams
        "RUNSTORE_MAX_CONNECTIONS": str(watchers + 100),
    }
    with tempfile.TemporaryDirectory(prefix="events-cpu-") as workdir:
        server, port = _start("runstore", workdir, env)
        try:
            return asyncio.run(_drive(server.pid, port, watchers, changes, workdir))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("-n", "--changes", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("callgrind_control") is None:
        raise SystemExit("events_cpu.py needs valgrind")
    counts = main_thread_instructions(args.watchers, args.changes)
    watched, quiet = counts["watched"] / args.changes, counts["quiet"] / args.changes
    handing = watched - quiet
    print(
        f"{args.watchers} streams: the loop's instructions per PATCH {watched:,.0f} with its "
        f"change handed to them, {quiet:,.0f} for a run nobody follows; handing one change "
        f"out: {handing:,.0f} ({handing / args.watchers:,.0f} per stream)"
    )


if __name__ == "__main__":
    main()
