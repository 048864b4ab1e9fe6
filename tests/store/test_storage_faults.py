"""Storage faults under a real server: a full disk and a read-only database.

Writes answer 503 problem+json (``storage-unavailable``, ``Retry-After``), reads keep working,
the process stays up, and writes work again by themselves once the storage is back. A refused
write leaves nothing behind: no half-written run, no step, no damage.

A full disk is made two ways: a small tmpfs filled to the brim (needs root, to mount), and a
file-size limit (``RLIMIT_FSIZE``) set on the running server and lifted again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ServerProcess, assert_problem, make_snapshot

from runstore.service.store.records import snapshot_record
from runstore.service.store.sqlite import SQLiteEngine

pytestmark = pytest.mark.server

TMPFS_SIZE = "8m"
# Large enough that a few of them outgrow whatever room the WAL file already has.
STEP_PADDING = 64 * 1024
MAX_WRITES_TO_FILL = 400


def big_step(index: int) -> dict[str, Any]:
    return {"index": index, "output": f"{index:08d}" * (STEP_PADDING // 8)}


@dataclass
class FullDisk:
    """How one kind of full disk is made and taken away again for a server's database."""

    directory: Path
    kind: str
    filler: Path | None = None
    limit: tuple[int, int] | None = None

    def fill(self, server: ServerProcess) -> None:
        if self.kind == "tmpfs":
            self.filler = self.directory / "filler"
            descriptor = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
            try:
                for chunk in (b"\0" * 65536, b"\0" * 4096):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(descriptor, chunk)
            finally:
                os.close(descriptor)
            with pytest.raises(OSError, match="No space left") as full:
                (self.directory / "probe").write_bytes(b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        else:
            self.limit = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
            # Soft limit only, so that the test can lift it again without privileges.
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (1, self.limit[1]))

    def free(self, server: ServerProcess) -> None:
        if self.kind == "tmpfs":
            assert self.filler is not None
            self.filler.unlink()
            (self.directory / "probe").unlink(missing_ok=True)
        else:
            assert self.limit is not None
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, self.limit)


@contextlib.contextmanager
def small_tmpfs(mount_point: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the file-size-limit case covers disk full")
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "runstore-test", mount_point],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the file-size-limit "
            "case covers disk full"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", mount_point], check=True)


@pytest.fixture(params=["tmpfs", "file-size-limit"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullDisk]:
    if request.param == "tmpfs":
        with small_tmpfs(tmp_path / "small") as directory:
            yield FullDisk(directory, "tmpfs")
    else:
        yield FullDisk(tmp_path, "file-size-limit")


def integrity(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        return [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]


def assert_unavailable(response: httpx.Response) -> None:
    assert_problem(response, 503, "storage-unavailable")
    assert response.headers["retry-after"] == "1"


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers(full_disk: FullDisk) -> None:
    db = full_disk.directory / "runs.db"
    kept = make_snapshot("kept", 3)
    with ServerProcess(db) as server, server.client(timeout=30) as http:
        assert http.put("/runs/kept", json=kept).status_code == 201
        assert http.put("/runs/growing", json=make_snapshot("growing")).status_code == 201
        full_disk.fill(server)

        # The WAL may still have room for a few writes; the store fills up within a bound.
        length = 0
        for _ in range(MAX_WRITES_TO_FILL):
            refused = http.patch(
                "/runs/growing", json={"trace": [big_step(length)], "traceFrom": length}
            )
            if refused.status_code != 200:
                break
            length += 1
        assert_unavailable(refused)
        assert_unavailable(http.put("/runs/new", json=make_snapshot("new", 5)))
        assert_unavailable(http.get("/readyz"))

        # Reads keep working, and the refused writes left nothing behind.
        assert http.get("/healthz").status_code == 200
        assert http.get("/runs/kept").json() == kept
        assert_problem(http.get("/runs/new"), 404, "not-found")
        growing = http.get("/runs/growing").json()
        assert growing["trace"] == [big_step(index) for index in range(length)]
        listing = http.get("/runs").json()["runs"]
        assert {summary["runId"] for summary in listing} == {"kept", "growing"}

        full_disk.free(server)
        # Back by itself: the same writes succeed now, with no restart.
        appended = http.patch(
            "/runs/growing", json={"trace": [big_step(length)], "traceFrom": length}
        )
        assert appended.status_code == 200, appended.text
        assert http.put("/runs/new", json=make_snapshot("new", 5)).status_code == 201
        assert http.get("/readyz").status_code == 200
        assert server.terminate() == 0
    assert integrity(db) == ["ok"]
    with SQLiteEngine(db) as engine:
        stored = engine.get_run("growing")
        assert stored is not None
        assert len(httpx.Response(200, content=stored.body).json()["trace"]) == length + 1


def _without_dac_override() -> tuple[str, ...]:
    """A command prefix under which file modes bind the server, even when the tests run as root."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, file modes bind only without CAP_DAC_OVERRIDE: no setpriv")
    return ("setpriv", "--bounding-set", "-dac_override", "--inh-caps", "-dac_override", "--")


def test_a_read_only_database_serves_reads_and_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    kept = make_snapshot("kept", 3)
    with SQLiteEngine(db) as engine:
        engine.put_run(snapshot_record(kept))
    db.chmod(0o444)
    with (
        ServerProcess(db, prefix=_without_dac_override()) as server,
        server.client(timeout=30) as http,
    ):
        assert http.get("/runs/kept").json() == kept
        assert_unavailable(http.put("/runs/new", json=make_snapshot("new", 2)))
        assert_unavailable(http.patch("/runs/kept", json={"trace": [{"x": 1}], "traceFrom": 3}))
        assert_unavailable(http.delete("/runs/kept"))
        # A bound that matches the stored run: one that matches nothing writes nothing, and is
        # answered {"deleted": 0} even here.
        assert_unavailable(http.delete("/runs", params={"startedBefore": 2**41}))
        assert_unavailable(http.get("/readyz"))
        assert http.get("/healthz").status_code == 200
        assert http.get("/runs/kept").json() == kept
        assert_problem(http.get("/runs/new"), 404, "not-found")
        assert [summary["runId"] for summary in http.get("/runs").json()["runs"]] == ["kept"]
        assert server.terminate() == 0
    assert integrity(db) == ["ok"]

    # SQLite keeps a file it opened read-only so for the life of the process (and makes the
    # -wal and -shm files with the database's mode): once all three are writable, a restart
    # writes again.
    for path in tmp_path.glob("runs.db*"):
        path.chmod(0o644)
    with ServerProcess(db) as server, server.client(timeout=30) as http:
        assert http.put("/runs/new", json=make_snapshot("new", 2)).status_code == 201
        assert http.get("/runs/kept").json() == kept
        assert http.get("/readyz").status_code == 200
