"""An acknowledged write is on disk before its answer: the fsync calls, traced with strace.

The SIGKILL tests in test_durability.py keep the operating system's page cache, so a commit that
was never fsync'd survives them; only a power cut would lose it. These tests watch the system
calls instead (``strace -f``): for every acknowledged write, the store's WAL is fsync'd after
the previous answer and before this one's first byte. ``PRAGMA synchronous = OFF`` (no fsync at
all) or ``NORMAL`` (a WAL commit without one) fails them. ``runstore backup`` must fsync the
copy after its last write and before the rename, and the directory after the rename.

strace orders its lines as it handles the traced threads' stops: a thread stopped at the end of
``fsync`` is not resumed until its line is written, so an answer sent because of that commit
is logged after it. CI installs strace (.ci/run); elsewhere these tests skip without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import ServerProcess, make_snapshot

WRITES = 12
TRACED_CALLS = "fsync,fdatasync,write,writev,pwrite64,sendto,sendmsg,rename,renameat,renameat2"


@pytest.fixture
def strace() -> str:
    found = shutil.which("strace")
    if found is None:
        message = "these tests trace fsync calls with strace: apt-get install strace"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI must run them; .ci/run installs it)")
        pytest.skip(message)
    return found


def strace_prefix(strace: str, log: Path) -> tuple[str, ...]:
    """Run a command under strace: every thread, file descriptors shown with their paths."""
    return (strace, "-f", "-qq", "-yy", "-s", "0", "-e", f"trace={TRACED_CALLS}", "-o", str(log))


@dataclass(frozen=True)
class Call:
    """One traced call: its name and the path (or socket) of its first argument."""

    name: str
    target: str
    arguments: str


# "1234 fsync(7</tmp/x/runs.db-wal>) = 0", "1234 rename("/a", "/b") = 0", possibly split by
# another thread into "... <unfinished ...>" and "1234 <... fsync resumed>) = 0".
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
_DESCRIPTOR = re.compile(r"^\d+<(.*?)>(?:,|\)|$)")


def traced_calls(log: Path) -> list[Call]:
    """The calls in strace's log in its order; fsyncs at their end, the others at their start.

    An fsync counts once it has returned (the data is then on disk); a write counts from its
    start (an answer has begun to leave).
    """
    calls: list[Call] = []
    pending: dict[str, Call] = {}
    for line in log.read_text(errors="replace").splitlines():
        if match := _RESUMED.match(line):
            pid, name, _ = match.groups()
            started = pending.pop(pid, None)
            if started is not None and started.name == name:
                calls.append(started)
            continue
        match = _CALL.match(line)
        if match is None:
            continue
        pid, name, rest = match.groups()
        descriptor = _DESCRIPTOR.match(rest)
        call = Call(name, descriptor.group(1) if descriptor else "", rest)
        syncs = name in ("fsync", "fdatasync")
        if syncs and rest.endswith("<unfinished ...>"):
            pending[pid] = call
        elif syncs:
            if rest.rstrip().endswith("= 0"):
                calls.append(call)
        else:
            calls.append(call)
    return calls


def assert_synced_before_each_answer(
    calls: list[Call], database: Path, is_answer: re.Pattern[str], answers: int
) -> None:
    """Between one answer's first byte and the next's, the database's WAL was fsync'd."""
    wal = f"{database}-wal"
    synced_since_answer = 0
    seen: list[str] = []
    for call in calls:
        if call.name in ("fsync", "fdatasync") and call.target in (wal, str(database)):
            synced_since_answer += 1
        elif is_answer.search(call.target) and call.target not in seen:
            seen.append(call.target)
            assert synced_since_answer > 0, (
                f"answer {len(seen)} of {answers} was sent with no fsync of {wal} since the "
                "previous answer: an acknowledged write could be lost in a power cut"
            )
            synced_since_answer = 0
    assert len(seen) == answers, f"expected {answers} answers in the trace, found {seen}"


@pytest.mark.server
def test_the_server_fsyncs_each_acknowledged_write_before_answering(
    strace: str, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    log = tmp_path / "strace.log"
    with ServerProcess(db, prefix=strace_prefix(strace, log)) as server:
        # A fresh connection per request, so each answer is told apart by its socket.
        for number in range(WRITES // 2):
            run_id = f"run-{number}"
            created = httpx.put(f"{server.url}/runs/{run_id}", json=make_snapshot(run_id))
            assert created.status_code == 201, created.text
            patch = {"trace": [{"step": 0}], "traceFrom": 0, "stepIndex": 1}
            patched = httpx.patch(f"{server.url}/runs/{run_id}", json=patch)
            assert patched.status_code == 200, patched.text
        port = server.port
    # The server's own side of each connection: local address on its port.
    answer = re.compile(rf"^TCP:\[127\.0\.0\.1:{port}->127\.0\.0\.1:\d+\]$")
    assert_synced_before_each_answer(traced_calls(log), db, answer, WRITES)


@pytest.mark.server
def test_a_commit_writes_the_wal_and_no_temporary_file(strace: str, tmp_path: Path) -> None:
    """A statement that changes many stored pages keeps their old content in a statement
    journal; SQLite spills one over 64 KiB to a temporary file (``etilqs_...``), created and
    unlinked within the commit: a file-system transaction more on every commit. The store keeps
    it in memory (``PRAGMA temp_store = MEMORY``)."""
    db = tmp_path / "runs.db"
    log = tmp_path / "strace.log"
    prefix = (strace, "-f", "-qq", "-e", "trace=openat,unlink,unlinkat", "-o", str(log))
    steps = [{"step": i, "output": "x" * 3000} for i in range(128)]
    with ServerProcess(db, prefix=prefix) as server:
        run = f"{server.url}/runs/big"
        created = httpx.put(run, json=make_snapshot("big", trace=steps))
        assert created.status_code == 201, created.text
        # Every stored step changes: each statement of 64 rows rewrites about 64 stored pages.
        changed = [{**step, "output": "y" * 3000} for step in steps]
        replaced = httpx.put(run, json=make_snapshot("big", trace=changed))
        assert replaced.status_code == 200, replaced.text
        assert httpx.get(run).json()["trace"] == changed
    temporary = [line for line in log.read_text().splitlines() if "etilqs_" in line]
    assert not temporary, "a commit made a temporary file:\n" + "\n".join(temporary[:5])


EMBEDDED_AGENT = textwrap.dedent(
    """
    import os, sys
    from runstore.client import embedded_persistence

    path, acks, writes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    snapshot = {"runId": "solo", "status": "running", "startedAt": 1, "input": "hi",
                "trace": [], "usage": {}, "stepIndex": 0, "iterations": 0, "revisions": 0}
    with embedded_persistence(path) as hooks:
        hooks.on_run_start(snapshot)
        for step in range(writes):
            # Each returned write is an acknowledgement: record it in a file of its own.
            with open(f"{acks}-{step}", "wb") as ack:
                ack.write(b"ack")
            if step + 1 < writes:
                snapshot["trace"].append({"step": step})
                hooks.on_step_complete(snapshot)
    """
)


def test_embedded_mode_fsyncs_each_write_before_it_returns(strace: str, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    log = tmp_path / "strace.log"
    acks = tmp_path / "ack"
    done = subprocess.run(
        [
            *strace_prefix(strace, log),
            sys.executable,
            "-c",
            EMBEDDED_AGENT,
            str(db),
            str(acks),
            str(WRITES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = re.compile(rf"^{re.escape(str(acks))}-\d+$")
    assert_synced_before_each_answer(traced_calls(log), db, answer, WRITES)


def _rename_target(call: Call) -> tuple[str, str]:
    paths = re.findall(r'"([^"]*)"', call.arguments)
    assert len(paths) == 2, call
    return paths[0], paths[1]


def test_backup_fsyncs_the_copy_before_the_rename_and_the_directory_after(
    strace: str, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    from runstore.service.store.records import snapshot_record
    from runstore.service.store.sqlite import SQLiteEngine

    with SQLiteEngine(db) as engine:
        for number in range(50):
            engine.put_run(snapshot_record(make_snapshot(f"run-{number}", steps=3)))
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    out = out_dir / "runs.bak.db"
    log = tmp_path / "strace.log"
    done = subprocess.run(
        [
            *strace_prefix(strace, log),
            sys.executable,
            "-m",
            "runstore.service",
            "backup",
            "--db",
            str(db),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    calls = traced_calls(log)
    renames = [
        (index, _rename_target(call))
        for index, call in enumerate(calls)
        if call.name.startswith("rename") and _rename_target(call)[1] == str(out)
    ]
    assert len(renames) == 1, renames
    at, (partial, _) = renames[0]
    before, after = calls[:at], calls[at + 1 :]
    writes = [i for i, call in enumerate(before) if call.target == partial and "write" in call.name]
    assert writes, f"no write to {partial} traced"
    synced = [
        i
        for i, call in enumerate(before)
        if call.target == partial and call.name in ("fsync", "fdatasync")
    ]
    unsynced = f"{partial} was renamed into place with writes not fsync'd after its last write"
    assert synced, unsynced
    assert synced[-1] > writes[-1], unsynced
    assert any(
        call.name in ("fsync", "fdatasync") and call.target == str(out_dir) for call in after
    ), "the directory was not fsync'd after the rename: the new name could be lost"
