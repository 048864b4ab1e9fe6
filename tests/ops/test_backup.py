"""``runstore backup OUT``: an online, consistent, checked copy that restores.

The main test runs writers against a real server, backs the store up while they write, serves
the copy and finds every run (and every step) acknowledged before the backup started, and in the
copy only states that some write actually produced.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ServerProcess, damage_database, make_snapshot

from runstore.service.backup import BackupError, backup_sqlite
from runstore.service.cli import main
from runstore.service.store.records import snapshot_record
from runstore.service.store.sqlite import SQLiteEngine

WRITERS = 3
STEPS_PER_RUN = 8


def step(run_id: str, index: int) -> dict[str, Any]:
    """The step a writer sends at ``index`` of ``run_id``; the checks recompute it."""
    return {"run": run_id, "index": index, "output": f"{run_id} step {index} " + "x" * 200}


@dataclass
class Acks:
    """Per run, the trace lengths a writer got a 2xx for, with the time of each answer."""

    lengths: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, run_id: str, length: int) -> None:
        at = time.monotonic()
        with self.lock:
            self.lengths.setdefault(run_id, []).append((at, length))

    def acknowledged_before(self, moment: float) -> dict[str, int]:
        with self.lock:
            return {
                run_id: max(length for at, length in answers if at < moment)
                for run_id, answers in self.lengths.items()
                if any(at < moment for at, _ in answers)
            }


def write_runs(url: str, writer: int, acks: Acks, stop: threading.Event) -> None:
    """Create runs one after another and append their steps one PATCH at a time."""
    with httpx.Client(base_url=url, timeout=30) as http:
        number = 0
        while not stop.is_set():
            run_id = f"w{writer}-run-{number}"
            number += 1
            created = http.put(f"/runs/{run_id}", json=make_snapshot(run_id))
            assert created.status_code == 201, created.text
            acks.record(run_id, 0)
            for index in range(STEPS_PER_RUN):
                appended = http.patch(
                    f"/runs/{run_id}",
                    json={"trace": [step(run_id, index)], "traceFrom": index},
                )
                assert appended.status_code == 200, appended.text
                acks.record(run_id, index + 1)


def run_backup(db: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstore.service", "backup", str(out), "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.server
def test_a_backup_taken_under_load_restores_every_acknowledged_run(tmp_path: Path) -> None:
    db, copy = tmp_path / "runs.db", tmp_path / "backup" / "runs-copy.db"
    copy.parent.mkdir()
    acks = Acks()
    stop = threading.Event()
    with ServerProcess(db) as server:
        writers = [
            threading.Thread(target=write_runs, args=(server.url, n, acks, stop), daemon=True)
            for n in range(WRITERS)
        ]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 30
        while len(acks.acknowledged_before(time.monotonic())) < 10:
            assert time.monotonic() < deadline, "the writers made no progress"
            time.sleep(0.05)
        started = time.monotonic()
        done = run_backup(db, copy)
        stop.set()
        for writer in writers:
            writer.join(30)
    assert done.returncode == 0, done.stderr
    assert "integrity ok" in done.stdout
    expected = acks.acknowledged_before(started)
    with ServerProcess(copy) as restored, restored.client() as http:
        listing = http.get("/runs", params={"limit": 1000}).json()
        served = {summary["runId"]: summary["traceLength"] for summary in listing["runs"]}
        assert listing["nextCursor"] is None
        for run_id, length in expected.items():
            assert run_id in served, f"{run_id} was acknowledged before the backup began"
            assert served[run_id] >= length
        for run_id, length in served.items():
            trace = http.get(f"/runs/{run_id}").json()["trace"]
            assert trace == [step(run_id, index) for index in range(length)]


def _store_with_runs(db: Path, count: int) -> None:
    with SQLiteEngine(db) as engine:
        for number in range(count):
            engine.put_run(snapshot_record(make_snapshot(f"run-{number}", steps=3)))


def test_backup_writes_a_checked_single_file_and_replaces_an_old_one(tmp_path: Path) -> None:
    db, out = tmp_path / "runs.db", tmp_path / "runs.bak"
    _store_with_runs(db, 5)
    out.write_bytes(b"yesterday's backup")
    report = backup_sqlite(db, out)
    assert report.runs == 5
    assert report.size == out.stat().st_size
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs.bak", "runs.db"]
    with sqlite3.connect(out) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert copy.execute("SELECT count(*) FROM steps").fetchone() == (15,)
    copy.close()


def test_backup_of_a_damaged_store_fails_and_keeps_the_old_backup(tmp_path: Path) -> None:
    db, out = tmp_path / "runs.db", tmp_path / "runs.bak"
    _store_with_runs(db, 300)
    damage_database(db)
    out.write_bytes(b"yesterday's backup")
    with pytest.raises(BackupError, match="integrity_check"):
        backup_sqlite(db, out)
    assert out.read_bytes() == b"yesterday's backup"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs.bak", "runs.db"]


@pytest.mark.parametrize(
    ("target", "message"),
    [("db", "the database itself"), ("dir", "is a directory"), ("missing/out.db", "no such")],
)
def test_backup_refuses_a_target_it_cannot_write(tmp_path: Path, target: str, message: str) -> None:
    db = tmp_path / "db"
    _store_with_runs(db, 1)
    (tmp_path / "dir").mkdir()
    with pytest.raises(BackupError, match=message):
        backup_sqlite(db, tmp_path / target)


def test_the_backup_command_reports_and_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "runs.db"
    _store_with_runs(db, 2)
    assert main(["backup", str(tmp_path / "copy.db"), "--db", str(db)]) == 0
    assert "2 runs" in capsys.readouterr().out
    assert main(["backup", str(tmp_path / "other.db"), "--db", str(tmp_path / "absent.db")]) == 1
    assert "no such database file" in capsys.readouterr().err
    assert not (tmp_path / "other.db").exists()


def test_the_backup_command_points_a_postgres_store_to_pg_dump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNSTORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    assert main(["backup", str(tmp_path / "copy.db")]) == 2
    err = capsys.readouterr().err
    assert "SQLite" in err
    assert "pg_dump" in err
    assert not (tmp_path / "copy.db").exists()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _link(path: Path) -> None:
    path.symlink_to(path.with_name("elsewhere.db"))


@pytest.mark.parametrize("make", [_fifo, _link], ids=["fifo", "symlink"])
def test_backup_refuses_a_target_that_is_not_a_regular_file(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    # As /dev/full would be: replacing it with a file is never what was meant (issue 14).
    db, out = tmp_path / "runs.db", tmp_path / "special"
    _store_with_runs(db, 1)
    make(out)
    before = out.lstat()
    with pytest.raises(BackupError, match=f"{out} exists and is not a regular file"):
        backup_sqlite(db, out)
    after = out.lstat()
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert main(["backup", str(out), "--db", str(db)]) == 1


def test_a_directory_the_backup_cannot_write_to_is_named_not_the_source(tmp_path: Path) -> None:
    # Nobody, root included, creates files in /proc.
    db = tmp_path / "runs.db"
    _store_with_runs(db, 1)
    with pytest.raises(BackupError) as refused:
        backup_sqlite(db, "/proc/runs.bak")
    assert str(refused.value).startswith("/proc/runs.bak: cannot create the backup in /proc")
    assert str(db) not in str(refused.value)
