"""The SQLite backend: one WAL database file, one writer thread, reads on their own connections.

:class:`SQLiteEngine` is the blocking core (the embedded client uses it directly);
:class:`SQLiteStore` is the :class:`RunStore` the server uses, which runs the engine's reads on a
small thread pool and awaits its writes, so no sqlite call blocks the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from ..errors import PreconditionFailed, RunNotFound, StaleWrite, StorageUnavailable, TraceGap
from .base import Cursor, RunPage, RunQuery, RunStore, StoredRun, WriteResult
from .records import PatchRecord, SnapshotRecord, merge_doc, render_snapshot, render_summary
from .sqlite_schema import connect, migrate, verify
from .sqlite_writer import WriterThread, storage_error

__all__ = ["SQLiteEngine", "SQLiteStore"]

T = TypeVar("T")

READER_THREADS: Final = 4

_GET: Final = """
SELECT version, doc, plan, history_length,
    (SELECT group_concat(item, ',') FROM (SELECT item FROM steps WHERE run_id = ?1 ORDER BY idx)),
    (SELECT group_concat(item, ',') FROM (SELECT item FROM turns WHERE run_id = ?1 ORDER BY idx))
FROM runs WHERE run_id = ?1
"""
_UPSERT_STEP: Final = (
    "INSERT INTO {table} (run_id, idx, item) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id, idx) DO UPDATE SET item = excluded.item WHERE item != excluded.item"
)
_UPSERT_STEPS: Final = _UPSERT_STEP.format(table="steps")
_UPSERT_TURNS: Final = _UPSERT_STEP.format(table="turns")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_version(stored: int, if_match: int | None) -> None:
    if if_match is not None and if_match != stored:
        raise PreconditionFailed(
            f"The run is at version {stored}, not {if_match}; read it again before writing."
        )


def _write_items(
    connection: sqlite3.Connection,
    sql: str,
    table: str,
    run_id: str,
    start: int,
    items: list[str],
    old_length: int,
) -> None:
    if items:
        connection.executemany(sql, [(run_id, start + i, item) for i, item in enumerate(items)])
    end = start + len(items)
    if end < old_length:
        connection.execute(f"DELETE FROM {table} WHERE run_id = ? AND idx >= ?", (run_id, end))


def _put(
    record: SnapshotRecord,
    if_match: int | None,
    if_none_match: bool,
    connection: sqlite3.Connection,
) -> WriteResult:
    run_id = record.run_id
    row = connection.execute(
        "SELECT version, completed_at, trace_length, history_length FROM runs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    trace_length = len(record.trace)
    history_length = None if record.history is None else len(record.history)
    values = (
        record.status,
        record.started_at,
        record.completed_at,
        now_ms(),
        trace_length,
        history_length,
        record.doc,
        record.plan,
        run_id,
    )
    if row is None:
        if if_match is not None:
            raise PreconditionFailed("The run does not exist, so no version can match If-Match.")
        connection.execute(
            "INSERT INTO runs (status, started_at, completed_at, updated_at, trace_length, "
            "history_length, doc, plan, run_id, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            values,
        )
        _write_items(connection, _UPSERT_STEPS, "steps", run_id, 0, record.trace, 0)
        _write_items(connection, _UPSERT_TURNS, "turns", run_id, 0, record.history or [], 0)
        return WriteResult(run_id, 1, trace_length, created=True)
    version, stored_completed_at, stored_trace_length, stored_history_length = row
    if if_none_match:
        raise PreconditionFailed("The run exists already (If-None-Match: *).")
    _check_version(version, if_match)
    if if_match is None:
        if stored_completed_at is not None and record.completed_at is None:
            raise StaleWrite("The run is finished; a write without completedAt would un-finish it.")
        if trace_length < stored_trace_length:
            raise StaleWrite(
                f"The stored trace has {stored_trace_length} steps; this write has {trace_length}."
            )
    connection.execute(
        "UPDATE runs SET status = ?, started_at = ?, completed_at = ?, updated_at = ?, "
        "trace_length = ?, history_length = ?, doc = ?, plan = ?, version = version + 1 "
        "WHERE run_id = ?",
        values,
    )
    _write_items(connection, _UPSERT_STEPS, "steps", run_id, 0, record.trace, stored_trace_length)
    _write_items(
        connection,
        _UPSERT_TURNS,
        "turns",
        run_id,
        0,
        record.history or [],
        stored_history_length or 0,
    )
    return WriteResult(run_id, version + 1, trace_length)


def _patch(
    run_id: str, patch: PatchRecord, if_match: int | None, connection: sqlite3.Connection
) -> WriteResult:
    row = connection.execute(
        "SELECT version, completed_at, trace_length, history_length, doc, plan "
        "FROM runs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        raise RunNotFound(f"No run is stored under {run_id!r}; PUT it first.")
    version, completed_at, trace_length, history_length, doc, plan = row
    _check_version(version, if_match)
    new_trace_length = trace_length
    if patch.trace is not None:
        if patch.trace_from > trace_length:
            raise TraceGap(
                f"traceFrom is {patch.trace_from} but the stored trace has {trace_length} steps."
            )
        new_trace_length = patch.trace_from + len(patch.trace)
    new_history_length = history_length
    if patch.history is not None:
        if patch.history_from > (history_length or 0):
            raise TraceGap(
                f"historyFrom is {patch.history_from} but the stored history has "
                f"{history_length or 0} turns."
            )
        new_history_length = patch.history_from + len(patch.history)
    elif patch.clear_history:
        new_history_length = None
    if if_match is None:
        if patch.clears_completed_at and completed_at is not None:
            raise StaleWrite("The run is finished; clearing completedAt would un-finish it.")
        if new_trace_length < trace_length:
            raise StaleWrite(
                f"The stored trace has {trace_length} steps; this write would leave "
                f"{new_trace_length}."
            )
    status_and_times: tuple[Any, ...] = ()
    if patch.fields:
        doc, merged = merge_doc(doc, patch.fields)
        status_and_times = (merged["status"], merged["startedAt"], merged.get("completedAt"))
    if patch.set_plan:
        plan = patch.plan
    if status_and_times:
        connection.execute(
            "UPDATE runs SET status = ?, started_at = ?, completed_at = ?, doc = ?, plan = ?, "
            "trace_length = ?, history_length = ?, updated_at = ?, version = version + 1 "
            "WHERE run_id = ?",
            (*status_and_times, doc, plan, new_trace_length, new_history_length, now_ms(), run_id),
        )
    else:
        connection.execute(
            "UPDATE runs SET plan = ?, trace_length = ?, history_length = ?, updated_at = ?, "
            "version = version + 1 WHERE run_id = ?",
            (plan, new_trace_length, new_history_length, now_ms(), run_id),
        )
    if patch.trace is not None:
        _write_items(
            connection,
            _UPSERT_STEPS,
            "steps",
            run_id,
            patch.trace_from,
            patch.trace,
            trace_length,
        )
    if patch.history is not None:
        _write_items(
            connection,
            _UPSERT_TURNS,
            "turns",
            run_id,
            patch.history_from,
            patch.history,
            history_length or 0,
        )
    elif patch.clear_history:
        connection.execute("DELETE FROM turns WHERE run_id = ?", (run_id,))
    return WriteResult(run_id, version + 1, new_trace_length)


def _delete(run_id: str, if_match: int | None, connection: sqlite3.Connection) -> None:
    row = connection.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    _check_version(row[0], if_match)
    connection.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


def _delete_many(
    completed_before: int | None, started_before: int | None, connection: sqlite3.Connection
) -> int:
    clauses, params = [], []
    if completed_before is not None:
        clauses.append("completed_at < ?")
        params.append(completed_before)
    if started_before is not None:
        clauses.append("started_at < ?")
        params.append(started_before)
    if not clauses:
        raise ValueError("delete_runs needs completed_before and/or started_before")
    cursor = connection.execute(f"DELETE FROM runs WHERE {' AND '.join(clauses)}", params)
    return cursor.rowcount


def _probe(connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        (now_ms(),),
    )


class SQLiteEngine:
    """Blocking access to one database file, safe to share between threads.

    Opening runs ``PRAGMA quick_check`` and refuses a damaged file (CorruptDatabase); then it
    creates or migrates the schema. Writes go through the writer thread; each calling thread
    reads on a connection of its own.
    """

    def __init__(self, path: str | Path, *, wal_autocheckpoint: int = 1000) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._wal_autocheckpoint = int(wal_autocheckpoint)
        self._writer = WriterThread(
            self._open_writer,
            name=f"runstore-writer:{self.path}",
            checkpoint_at_close=self._wal_autocheckpoint > 0,
        )
        self._closed = False
        self._writer.start_and_wait()

    def _open_writer(self) -> sqlite3.Connection:
        connection = connect(self.path)
        try:
            connection.execute(f"PRAGMA wal_autocheckpoint = {self._wal_autocheckpoint}")
            verify(connection)
            migrate(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Commit queued writes, checkpoint the WAL and close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
            self._readers.clear()

    # Writes: each an op queued to the writer thread.

    def put_run(
        self, record: SnapshotRecord, *, if_match: int | None = None, if_none_match: bool = False
    ) -> WriteResult:
        result: WriteResult = self._writer.write(partial(_put, record, if_match, if_none_match))
        return result

    def patch_run(
        self, run_id: str, patch: PatchRecord, *, if_match: int | None = None
    ) -> WriteResult:
        result: WriteResult = self._writer.write(partial(_patch, run_id, patch, if_match))
        return result

    def delete_run(self, run_id: str, *, if_match: int | None = None) -> None:
        self._writer.write(partial(_delete, run_id, if_match))

    def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        deleted: int = self._writer.write(partial(_delete_many, completed_before, started_before))
        return deleted

    @property
    def writer(self) -> WriterThread:
        return self._writer

    # Reads: on this thread's own connection.

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise StorageUnavailable("The store is closed.")
            connection = connect(self.path, readonly=True)
            self._local.connection = connection
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return read(self._reader())
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc

    def get_run(self, run_id: str) -> StoredRun | None:
        row = self._read(lambda c: c.execute(_GET, (run_id,)).fetchone())
        if row is None:
            return None
        version, doc, plan, history_length, trace, history = row
        if history_length is not None and history is None:
            history = ""
        return StoredRun(version, render_snapshot(doc, plan, trace or "", history))

    def get_version(self, run_id: str) -> int | None:
        row = self._read(
            lambda c: c.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        )
        return None if row is None else int(row[0])

    def list_runs(self, query: RunQuery) -> RunPage:
        clauses: list[str] = []
        params: list[Any] = []
        if query.statuses:
            clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
            params += query.statuses
        if query.started_after is not None:
            clauses.append("started_at > ?")
            params.append(query.started_after)
        if query.started_before is not None:
            clauses.append("started_at < ?")
            params.append(query.started_before)
        if query.cursor is not None:
            clauses.append("(started_at, run_id) < (?, ?)")
            params += (query.cursor.started_at, query.cursor.run_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT run_id, started_at, doc, trace_length, version, updated_at FROM runs "
            f"{where} ORDER BY started_at DESC, run_id DESC LIMIT ?"
        )
        params.append(query.limit + 1)
        rows = self._read(lambda c: c.execute(sql, params).fetchall())
        next_cursor = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            next_cursor = Cursor(rows[-1][1], rows[-1][0])
        return RunPage(
            [render_summary(doc, length, version, at) for _, _, doc, length, version, at in rows],
            next_cursor,
        )

    def check_readable(self) -> None:
        self._read(lambda c: c.execute("SELECT count(*) FROM probe").fetchone())

    def check_ready(self) -> None:
        self.check_readable()
        self._writer.write(_probe)


class SQLiteStore(RunStore):
    """The server's :class:`RunStore` on a :class:`SQLiteEngine`."""

    def __init__(self, path: str | Path, *, wal_autocheckpoint: int = 1000) -> None:
        self.path = str(path)
        self.wal_autocheckpoint = wal_autocheckpoint
        self._engine: SQLiteEngine | None = None
        self._readers: ThreadPoolExecutor | None = None

    @property
    def engine(self) -> SQLiteEngine:
        if self._engine is None:
            raise StorageUnavailable("The store is not open.")
        return self._engine

    async def open(self) -> None:
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="runstore-reader")
        loop = asyncio.get_running_loop()
        self._engine = await loop.run_in_executor(
            self._readers,
            partial(SQLiteEngine, self.path, wal_autocheckpoint=self.wal_autocheckpoint),
        )

    async def close(self) -> None:
        engine, readers = self._engine, self._readers
        self._engine = self._readers = None
        if readers is not None:
            readers.shutdown(wait=True)
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, engine.close)

    async def _read(self, read: Callable[..., T], *args: Any) -> T:
        if self._readers is None:
            raise StorageUnavailable("The store is not open.")
        return await asyncio.get_running_loop().run_in_executor(self._readers, read, *args)

    async def put_run(
        self, record: SnapshotRecord, *, if_match: int | None = None, if_none_match: bool = False
    ) -> WriteResult:
        result: WriteResult = await self.engine.writer.write_async(
            partial(_put, record, if_match, if_none_match)
        )
        return result

    async def patch_run(
        self, run_id: str, patch: PatchRecord, *, if_match: int | None = None
    ) -> WriteResult:
        result: WriteResult = await self.engine.writer.write_async(
            partial(_patch, run_id, patch, if_match)
        )
        return result

    async def delete_run(self, run_id: str, *, if_match: int | None = None) -> None:
        await self.engine.writer.write_async(partial(_delete, run_id, if_match))

    async def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        deleted: int = await self.engine.writer.write_async(
            partial(_delete_many, completed_before, started_before)
        )
        return deleted

    async def get_run(self, run_id: str) -> StoredRun | None:
        return await self._read(self.engine.get_run, run_id)

    async def get_version(self, run_id: str) -> int | None:
        return await self._read(self.engine.get_version, run_id)

    async def list_runs(self, query: RunQuery) -> RunPage:
        return await self._read(self.engine.list_runs, query)

    async def check_ready(self) -> None:
        await self._read(self.engine.check_readable)
        await self.engine.writer.write_async(_probe)
