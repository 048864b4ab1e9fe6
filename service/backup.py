"""``runstore backup OUT``: a consistent copy of a live SQLite store, safe to restore.

The copy is taken with SQLite's online backup API in a single step, inside one read
transaction: in WAL mode that reads one committed snapshot while the server goes on writing, so
the copy holds every write committed before the backup started and none half-done. The copy is
written next to ``OUT`` under a temporary name, checked with ``PRAGMA integrity_check``, fsync'd,
renamed into place and the directory fsync'd; ``OUT`` is either the old file or a whole, checked
new one, never something in between. An ``OUT`` that exists and is not a regular file (a device
such as ``/dev/full``, a pipe, a link) is refused rather than replaced.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .store.sqlite_schema import connect

__all__ = ["BackupError", "BackupReport", "backup_sqlite"]


class BackupError(Exception):
    """The backup could not be made; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What a finished backup holds."""

    source: Path
    target: Path
    runs: int
    size: int
    seconds: float

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"backed up {self.source} to {self.target}: {self.runs} runs, "
            f"{self.size} bytes, integrity ok, in {self.seconds:.2f} s"
        )


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise BackupError(f"{path}: no such database file; pass --db or set RUNSTORE_DB.")
    # query_only: a backup never changes the store. Unlike mode=ro, the connection may still
    # tidy the -wal and -shm files away when it is the last one to close.
    return connect(str(path), readonly=True)


def _fsync(path: Path, *, directory: bool = False) -> None:
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _check_copy(connection: sqlite3.Connection) -> int:
    try:
        problems = [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:  # damage bad enough that the check cannot finish
        problems = [str(exc)]
    if problems != ["ok"]:
        raise BackupError(
            "the copy fails PRAGMA integrity_check (" + "; ".join(problems[:5]) + "); the "
            "database itself is damaged: restore an earlier backup"
        )
    try:
        runs: int = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the file is not a runstore database ({exc})") from exc
    return runs


def backup_sqlite(source: str | Path, target: str | Path) -> BackupReport:
    """Copy the database ``source`` to ``target`` while writers keep writing; see the module."""
    started = time.monotonic()
    source_path, target_path = Path(source), Path(target)
    if target_path.is_dir():
        raise BackupError(f"{target_path} is a directory; name the backup file, e.g. runs.bak.db")
    try:
        existing = target_path.lstat()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BackupError(f"{target_path}: {exc.strerror or exc}") from exc
    else:
        # Replacing it would swap a device node (/dev/full), a pipe or a link for a file.
        if not stat.S_ISREG(existing.st_mode):
            raise BackupError(
                f"{target_path} exists and is not a regular file (a device, pipe, socket or "
                "symbolic link); name a new or regular file"
            )
    if target_path.exists() and target_path.resolve() == source_path.resolve():
        raise BackupError(f"{target_path} is the database itself; name another file")
    directory = target_path.parent
    if not directory.is_dir():
        raise BackupError(f"{directory}: no such directory for the backup")
    partial = directory / f".{target_path.name}.partial-{os.getpid()}"
    partial.unlink(missing_ok=True)
    try:
        # Created here, so that a directory the backup cannot write to is named as such.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise BackupError(
            f"{target_path}: cannot create the backup in {directory}: {exc.strerror or exc}"
        ) from exc
    try:
        with (
            contextlib.closing(_open_source(source_path)) as reader,
            contextlib.closing(sqlite3.connect(partial)) as copy,
        ):
            # pages=-1: the whole database in one step, so the copy is one snapshot; a stepped
            # backup would start over on every commit of a busy server.
            reader.backup(copy, pages=-1)
            runs = _check_copy(copy)
            # The copy's header says WAL, as the source's does; leave it a single file.
            copy.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _fsync(partial)
        os.replace(partial, target_path)
        _fsync(directory, directory=True)
    except sqlite3.Error as exc:
        raise BackupError(f"copying {source_path} to {target_path}: {exc}") from exc
    except OSError as exc:
        raise BackupError(f"{target_path}: {exc.strerror or exc}") from exc
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
    return BackupReport(
        source=source_path,
        target=target_path,
        runs=runs,
        size=target_path.stat().st_size,
        seconds=time.monotonic() - started,
    )
