"""A whole server's CPU instructions per request, under valgrind's callgrind: `runstore serve`
(uvicorn, the guarded protocol, the app, the SQLite writer thread) or a reference app.

    .venv/bin/python bench/server_cpu.py patch                  # runstore, PATCH of one step
    .venv/bin/python bench/server_cpu.py put --target naive     # the naive service's PUT
    PYTHONPATH=/tmp/before .venv/bin/python bench/server_cpu.py patch   # another build

It starts the server under callgrind (one output per thread), sends N and then, in a second
server, 2N requests one after another on one keep-alive connection (the bodies of
``bench/http_load.py``), stops it, and reports the difference per request: in total, and for the
main thread (the event loop) and the others (runstore's SQLite writer). One connection makes
every group commit a group of one, so the counts are the same from one invocation to the next
and on a busy machine, unlike throughput: they are the way to compare two builds (a checkout of
another commit put first on ``PYTHONPATH`` runs in place of this one). Slow: minutes per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_load

HERE = Path(__file__).resolve().parent

_SUMMARY = re.compile(rb"^summary: (\d+)", re.MULTILINE)


def _command(target: str) -> list[str]:
    if target == "runstore":
        return [sys.executable, "-m", "runstore.service", "serve", "--port", "0", "--db"]
    return [sys.executable, str(HERE / "reference_apps.py"), target, "--port", "0", "--db"]


def _start(
    target: str, workdir: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    command = ["valgrind", "--tool=callgrind", "--separate-threads=yes"]
    command += [f"--callgrind-out-file={workdir}/callgrind.out"]
    command += [*_command(target), f"{workdir}/bench.db"]
    env = {
        **os.environ,
        "RUNSTORE_ACCESS_LOG": "false",
        "RUNSTORE_AUTH_DISABLED": "true",
        **(env or {}),
    }
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert server.stdout is not None
    output = b""
    while line := server.stdout.readline():
        output += line
        if found := http_load._LISTENING.search(line):
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, int(found.group(1))
    raise SystemExit(f"{target} did not start:\n{output.decode(errors='replace')}")


async def _send(port: int, kind: str, count: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if kind == "patch":
        seed = http_load._request("PUT", "/runs/p-0", http_load.dumps(http_load.snapshot("p-0", 5)))
        await http_load._exchange(reader, writer, seed)
        make = http_load.patch_factory("p", 5)
    else:
        make = http_load.put_factory("u", 50, 4)
    for number in range(count):
        status = await http_load._exchange(reader, writer, make(0, number))
        if status not in (200, 201, 204):
            raise SystemExit(f"request {number} answered {status}")
    writer.close()


def instructions(target: str, kind: str, count: int) -> dict[int, int]:
    """Instructions per thread (callgrind's thread number) of a server that served ``count``
    requests, start-up and shutdown included."""
    with tempfile.TemporaryDirectory(prefix="server-cpu-") as workdir:
        server, port = _start(target, workdir)
        try:
            asyncio.run(_send(port, kind, count))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(300)
        totals = {}
        for path in Path(workdir).glob("callgrind.out-*"):
            found = _SUMMARY.search(path.read_bytes())
            if found is not None:
                totals[int(path.name.rsplit("-", 1)[1])] = int(found.group(1))
        return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["patch", "put"])
    parser.add_argument(
        "--target", choices=["runstore", "floor", "durable", "naive"], default="runstore"
    )
    parser.add_argument("-n", "--requests", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("server_cpu.py needs valgrind")
    once = instructions(args.target, args.kind, args.requests)
    twice = instructions(args.target, args.kind, 2 * args.requests)
    per_thread = {
        thread: (twice.get(thread, 0) - once.get(thread, 0)) / args.requests
        for thread in sorted(set(once) | set(twice))
    }
    main_thread = per_thread.get(1, 0.0)
    others = sum(per_thread.values()) - main_thread
    print(
        f"{args.target} {args.kind}: {main_thread + others:,.0f} instructions per request "
        f"(main thread {main_thread:,.0f}, other threads {others:,.0f})"
    )


if __name__ == "__main__":
    main()
