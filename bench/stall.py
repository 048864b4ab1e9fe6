"""How long one client can stall everyone else's writes (issue 14, items 1-4).

    .venv/bin/python bench/stall.py                       # every scenario, default sizes
    .venv/bin/python bench/stall.py head retention        # some of them
    .venv/bin/python bench/stall.py --python /path/to/other/venv/bin/python   # another build

Each scenario starts ``runstore serve`` (SQLite in a temporary file, or ``--database-url``;
``--python`` picks the interpreter, so a checkout of an earlier commit can be measured the same
way: see docs/performance.md), runs an
"ordinary writer" that PATCHes one step at a time to a run of its own from another thread,
and meanwhile does one hostile thing:

- ``head``: sends a request whose one header is ``--head-mib`` MiB;
- ``connections``: opens ``--silent`` connections that send nothing and ``--half`` that send
  half a request head, then checks that a new client is still served;
- ``tiny-items``: PUTs one run of ``--tiny-steps`` one-character steps (refused 413 for its
  items; like ``large-put``, after one large body has started the server's parser process);
- ``retention``: stores ``--runs`` finished runs of 40 steps, then ``DELETE /runs`` them all;
- ``large-delete``: stores one run of ``--large-steps`` one-digit steps (in writes of 100,000),
  then ``DELETE``s it;
- ``large-put``: PUTs one valid run of 8 MB, 2,000 steps of 4 KiB each (parsed in the server's
  parser process, which one large body has started beforehand: a server starts it with the
  first large body it gets);
- ``storage``: stores one run of ``--large-steps`` one-digit steps under an id of
  ``--id-chars`` characters, and prints the size of the SQLite file it made (issue 14: a
  200-character id and 2 MB of such steps made a 470 MB file).

It prints, per scenario, what the hostile request got (status and seconds) and the longest
wait of an ordinary write while it ran, next to the ordinary write's median, and the longest
wait of a ``GET /healthz`` sent meanwhile (which waits for the event loop only, not the store).
Timings on a shared machine are noisy; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

_LISTENING = re.compile(r"Uvicorn running on (http://\S+)")


@contextmanager
def server(
    python: str, db: Path, env: dict[str, str], database_url: str | None
) -> Iterator[tuple[str, int]]:
    """The URL and process id of a ``runstore serve`` on a free port."""
    command = [python, "-m", "runstore.service", "serve", "--port", "0", "--db", str(db)]
    if database_url is not None:
        command += ["--database-url", database_url]
    process = subprocess.Popen(
        command,
        env={"RUNSTORE_ACCESS_LOG": "false", "PATH": "/usr/bin:/bin", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        if match := _LISTENING.search(line):
            url = match.group(1)
            break
    if not url:
        raise SystemExit(f"the server did not start: {process.wait()}")
    threading.Thread(target=lambda: [None for _ in process.stdout or ()], daemon=True).start()
    try:
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def process_cpu(pid: int) -> float:
    """Seconds of CPU the process ``pid`` has used, all its threads (not its children): with
    the GIL, about how long the server could not run Python for others. Less noisy on a shared
    machine than the waits, which count time the machine gave to other work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime, fields 14 and 15 of proc(5), counted from the state (field 3).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OrdinaryWriter:
    """PATCHes one step at a time to its own run, recording each write's latency."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.path = f"/runs/ordinary-{uuid.uuid4().hex[:8]}"
        snapshot = {
            "runId": self.path.removeprefix("/runs/"),
            "status": "running",
            "startedAt": 1,
            "input": "x",
            "trace": [],
            "usage": {},
            "stepIndex": 0,
            "iterations": 0,
            "revisions": 0,
        }
        self.http.put(self.path, json=snapshot).raise_for_status()
        self.steps = 0
        self.latencies: list[float] = []
        # GET /healthz meanwhile: it waits only for the event loop, a write also for the store.
        self.probe = httpx.Client(base_url=url, timeout=120)
        self.probe_latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.probe_thread = threading.Thread(target=self._probe, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            body = {"trace": [{"step": self.steps}], "traceFrom": self.steps}
            response = self.http.patch(self.path, json=body)
            self.latencies.append(time.perf_counter() - started)
            if response.status_code == 200:
                self.steps += 1
            time.sleep(0.01)

    def _probe(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.probe.get("/healthz")
            self.probe_latencies.append(time.perf_counter() - started)
            time.sleep(0.01)

    def __enter__(self) -> OrdinaryWriter:
        self.thread.start()
        self.probe_thread.start()
        time.sleep(0.5)  # a baseline before the hostile request
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.3)
        self.stop.set()
        self.thread.join()
        self.probe_thread.join()
        self.http.close()
        self.probe.close()

    def report(self) -> str:
        if not self.latencies:
            return "no ordinary write finished"
        return (
            f"ordinary writes: {len(self.latencies)}, median "
            f"{statistics.median(self.latencies) * 1000:.1f} ms, longest "
            f"{max(self.latencies) * 1000:.0f} ms; GET /healthz longest "
            f"{max(self.probe_latencies, default=0) * 1000:.0f} ms"
        )


def timed(action: Callable[[], str]) -> str:
    started = time.perf_counter()
    outcome = action()
    return f"{outcome} in {time.perf_counter() - started:.3f} s"


def head(url: str, args: argparse.Namespace) -> str:
    host, port = url.removeprefix("http://").split(":")

    def send() -> str:
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * (1024 * 1024)
        try:
            for _ in range(args.head_mib):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
            sock.settimeout(120)
            answer = sock.recv(100)
        except OSError as exc:
            try:
                answer = sock.recv(100)
            except OSError:
                answer = f"connection closed: {exc}".encode()
        sock.close()
        status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        return f"{args.head_mib} MiB header: {status_line}"

    return timed(send)


def connections(url: str, args: argparse.Namespace) -> str:
    host, port = url.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for number in range(args.silent + args.half):
            sock = socket.create_connection((host, int(port)))
            if number >= args.silent:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        time.sleep(1)
        try:
            status = str(httpx.get(url + "/healthz", timeout=10).status_code)
        except httpx.HTTPError as exc:
            status = f"failed ({type(exc).__name__})"
        # How many the server has closed after the head deadline (given as --head-timeout).
        time.sleep(args.head_timeout + 1)
        closed = 0
        for sock in held:
            sock.settimeout(0.01)
            try:
                sock.recv(1 << 16)  # b"" or a 408: answered and closed either way
                closed += 1
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        return (
            f"{args.silent} silent + {args.half} half-sent connections: a new client got "
            f"{status}; {closed} of them closed by the server after {args.head_timeout + 2:g} s"
        )
    finally:
        for sock in held:
            sock.close()


def tiny_items(url: str, args: argparse.Namespace) -> Callable[[], str]:
    """The PUT of a body of tiny items, to be sent (timed) by calling the result: the body is
    built now, before the ordinary writer starts (building it holds this process's GIL, which
    would delay the writer's and the probe's requests and count as the server's stall)."""
    snapshot = {
        "runId": "tiny",
        "status": "running",
        "startedAt": 1,
        "input": "x",
        "trace": ["a"] * args.tiny_steps,
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    body = json.dumps(snapshot, separators=(",", ":")).encode()

    def put() -> str:
        response = httpx.put(
            url + "/runs/tiny",
            content=body,
            headers={"content-type": "application/json"},
            timeout=600,
        )
        sent = f"{args.tiny_steps} one-character steps ({len(body)} bytes)"
        return f"PUT of {sent}: {response.status_code}"

    return lambda: timed(put)


def retention(url: str, args: argparse.Namespace) -> str:
    with httpx.Client(base_url=url, timeout=120) as http:
        for number in range(args.runs):
            snapshot = {
                "runId": f"old-{number}",
                "status": "completed",
                "startedAt": 1,
                "completedAt": 2,
                "input": "x",
                "trace": [{"step": i} for i in range(40)],
                "usage": {},
                "stepIndex": 40,
                "iterations": 40,
                "revisions": 0,
            }
            http.put(f"/runs/old-{number}", json=snapshot).raise_for_status()
    return ""


CHUNK_STEPS = 100_000


def large_run(url: str, run_id: str, steps: int) -> None:
    """One run of ``steps`` one-digit steps, sent in writes of CHUNK_STEPS."""
    snapshot = {
        "runId": run_id,
        "status": "running",
        "startedAt": 1,
        "input": "x",
        "trace": [0] * min(steps, CHUNK_STEPS),
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    with httpx.Client(base_url=url, timeout=600) as http:
        http.put(f"/runs/{run_id}", json=snapshot).raise_for_status()
        for start in range(CHUNK_STEPS, steps, CHUNK_STEPS):
            body = {"trace": [0] * min(CHUNK_STEPS, steps - start), "traceFrom": start}
            http.patch(f"/runs/{run_id}", json=body).raise_for_status()


def start_parser(url: str) -> None:
    """One body large enough for the parser process, which the server starts with the first."""
    snapshot = {
        "runId": "first-large",
        "status": "running",
        "startedAt": 1,
        "input": "x" * 300_000,
        "trace": [],
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    httpx.put(url + "/runs/first-large", json=snapshot, timeout=120).raise_for_status()


def large_put(url: str, args: argparse.Namespace) -> Callable[[], str]:
    """A valid 8 MB PUT, built now and sent (timed) by calling the result (see tiny_items)."""
    snapshot = {
        "runId": "large-put",
        "status": "running",
        "startedAt": 1,
        "input": "x",
        "trace": [{"step": i, "output": "x" * 4096} for i in range(2_000)],
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    body = json.dumps(snapshot).encode()

    def put() -> str:
        response = httpx.put(
            url + "/runs/large-put",
            content=body,
            headers={"content-type": "application/json"},
            timeout=600,
        )
        return f"PUT of 2,000 steps of 4 KiB ({len(body)} bytes): {response.status_code}"

    return lambda: timed(put)


def delete_large(url: str, args: argparse.Namespace) -> str:
    def delete() -> str:
        response = httpx.delete(url + "/runs/large", timeout=600)
        return f"DELETE of one run of {args.large_steps} steps: {response.status_code}"

    return timed(delete)


def storage(python: str, env: dict[str, str], args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "runs.db"
        run_id = "r" * args.id_chars
        with server(python, db, env, None) as (url, _):
            large_run(url, run_id, args.large_steps)
        # The server checkpointed the WAL into the file as it stopped.
        size = sum(path.stat().st_size for path in Path(directory).iterdir())
    return (
        f"one run of {args.large_steps} one-digit steps, a {args.id_chars}-character id: "
        f"{size / 1e6:.1f} MB of SQLite files"
    )


def delete_old(url: str, args: argparse.Namespace) -> str:
    def delete() -> str:
        response = httpx.delete(url + "/runs?completedBefore=3", timeout=600)
        return (
            f"DELETE /runs of {args.runs} runs of 40 steps: {response.status_code} {response.text}"
        )

    return timed(delete)


SCENARIOS = (
    "head",
    "connections",
    "tiny-items",
    "large-put",
    "retention",
    "large-delete",
    "storage",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)}")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--database-url", help="postgresql://... to serve from PostgreSQL instead of SQLite"
    )
    parser.add_argument("--head-mib", type=int, default=100)
    parser.add_argument("--silent", type=int, default=300)
    parser.add_argument("--half", type=int, default=300)
    parser.add_argument("--head-timeout", type=float, default=2.0)
    parser.add_argument("--tiny-steps", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=5_000)
    parser.add_argument("--large-steps", type=int, default=1_000_000)
    parser.add_argument("--id-chars", type=int, default=200)
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    env = {
        "RUNSTORE_HEAD_TIMEOUT": str(args.head_timeout),
        "RUNSTORE_MAX_ITEMS_PER_WRITE": "100000",
    }
    for scenario in args.scenarios or SCENARIOS:
        if scenario == "storage":
            print(f"storage: {storage(args.python, env, args)}", flush=True)
            continue
        with (
            tempfile.TemporaryDirectory() as directory,
            server(args.python, Path(directory) / "runs.db", env, args.database_url) as (url, pid),
        ):
            # The store to delete from, before the writer starts.
            if scenario == "retention":
                retention(url, args)
            elif scenario == "large-delete":
                large_run(url, "large", args.large_steps)
            elif scenario in ("tiny-items", "large-put"):
                start_parser(url)
                make = tiny_items if scenario == "tiny-items" else large_put
                send_large = make(url, args)
            with OrdinaryWriter(url) as writer:
                cpu_before = process_cpu(pid)
                if scenario == "head":
                    outcome = head(url, args)
                elif scenario == "connections":
                    outcome = connections(url, args)
                elif scenario in ("tiny-items", "large-put"):
                    outcome = send_large()
                elif scenario == "large-delete":
                    outcome = delete_large(url, args)
                else:
                    outcome = delete_old(url, args)
                cpu = process_cpu(pid) - cpu_before
            print(
                f"{scenario}: {outcome}\n    {writer.report()}\n    server process CPU "
                f"meanwhile {cpu * 1000:.0f} ms (its own threads, not its parser process)",
                flush=True,
            )


if __name__ == "__main__":
    main()
