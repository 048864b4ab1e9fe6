"""The SQLite backend: one WAL database file, one writer thread, reads on their own connections.

:class:`SQLiteEngine` is the blocking core (the embedded client uses it directly);
:class:`SQLiteStore` is the :class:`RunStore` the server uses, which runs the engine's reads on a
small thread pool and awaits its writes, so no sqlite call blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

from runstore.client.problems import RunNotFound, StoreUnavailable

from . import rules
from .base import (
    ClaimedRun,
    ClaimQuery,
    CommitObserver,
    Lease,
    RunPage,
    RunQuery,
    RunStore,
    StoredRun,
    StoreStats,
    WriteResult,
)
from .changes import ChangeListener, Committed
from .reads import GET_COLUMNS, list_sql, run_page, stored_run
from .records import PatchRecord, SnapshotRecord
from .rules import RunState
from .sqlite_batch import AcquireLease, PatchRun, PutRun, ReleaseLease, now_ms
from .sqlite_deletes import delete_batch, delete_run, purge_batch
from .sqlite_schema import connect, migrate, verify
from .sqlite_writer import WriterThread, storage_error
from .tally import RunTally, TallyDelta

__all__ = ["SQLiteEngine", "SQLiteStore"]

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger("runstore.sqlite")

T = TypeVar("T")

READER_THREADS: Final = 2

_GET: Final = f"""
SELECT {GET_COLUMNS},
    (SELECT group_concat(item, ',') FROM
        (SELECT item FROM steps WHERE steps.run_key = runs.run_key ORDER BY idx)),
    (SELECT group_concat(item, ',') FROM
        (SELECT item FROM turns WHERE turns.run_key = runs.run_key ORDER BY idx))
FROM runs WHERE run_id = ?1
"""


_CLAIMABLE: Final = (
    f"SELECT run_id, updated_at, {rules.STATE_COLUMNS} FROM runs WHERE status IN ({{marks}}) "
    f"AND {rules.ORPHANED_SQL.format(now='?1', stale='?2')} ORDER BY {rules.CLAIM_ORDER} LIMIT 1"
)
_SET_LEASE: Final = (
    "UPDATE runs SET lease = ?, lease_holder = ?, lease_expires_at = ?, lease_ttl_ms = ?, "
    "updated_at = ? WHERE run_id = ?"
)


def _claim(query: ClaimQuery, connection: sqlite3.Connection) -> Committed | None:
    """The claim, inside the one writer's transaction: no other write comes between the
    choice of the run and its new lease."""
    now = now_ms()
    marks = ", ".join(f"?{3 + index}" for index in range(len(query.statuses)))
    row = connection.execute(
        _CLAIMABLE.format(marks=marks), (now, query.stale_after_ms, *query.statuses)
    ).fetchone()
    if row is None:
        return None
    run_id, updated_at = row[0], row[1]
    state, lease = rules.claim(
        run_id,
        RunState._make(row[2:]),
        updated_at,
        query.holder,
        query.ttl_ms,
        query.stale_after_ms,
        now,
    )
    connection.execute(
        _SET_LEASE,
        (state.lease, state.lease_holder, state.lease_expires_at, state.lease_ttl_ms, now, run_id),
    )
    run = stored_run(connection.execute(_GET, (run_id,)).fetchone())
    assert run is not None
    tally = TallyDelta()
    tally.leased(run_id, state.lease_expires_at)
    return Committed(ClaimedRun(run, lease), [], tally)


def _count(
    tally: RunTally, writer: WriterThread, observer: CommitObserver, connection: sqlite3.Connection
) -> None:
    """Count runs by status and live leases into ``tally``, and have ``writer`` tell
    ``observer`` of every commit after this one."""
    statuses = connection.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
    leases = connection.execute(
        "SELECT run_id, lease_expires_at FROM runs WHERE lease_expires_at > ?", (now_ms(),)
    ).fetchall()
    tally.reset(statuses, leases)
    writer.observer = observer


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
        """Changes of committed writes go to :attr:`writer`'s ``on_commit``, if set."""
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
        # Items of runs deleted while the store last ran, if it stopped before purging them.
        if self._read(lambda c: c.execute("SELECT 1 FROM deleted_runs LIMIT 1").fetchone()):
            self.purge()

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
        self,
        record: SnapshotRecord,
        *,
        if_match: int | None = None,
        if_none_match: bool = False,
        lease: int | None = None,
    ) -> WriteResult:
        result: WriteResult = self._writer.write(PutRun(record, if_match, if_none_match, lease))
        return result

    def patch_run(
        self,
        run_id: str,
        patch: PatchRecord,
        *,
        if_match: int | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        result: WriteResult = self._writer.write(PatchRun(run_id, patch, if_match, lease))
        return result

    def delete_run(
        self, run_id: str, *, if_match: int | None = None, lease: int | None = None
    ) -> None:
        try:
            self._writer.write(partial(delete_run, run_id, if_match, lease))
        except RunNotFound:
            # A retried DELETE (the first one deleted the run) finishes what its purge left.
            self.purge()
            raise
        self.purge()

    def purge(self) -> None:
        """Delete the items deleted runs left, a batch per transaction, so that other writes
        go between the batches. The deletes that left them are done whatever happens here: a
        purge that fails is left to the next one (the next delete's, or the next opening's)."""
        try:
            while self._writer.write(purge_batch):
                pass
        except StoreUnavailable as exc:
            log.warning("items of deleted runs are left for the next purge: %s", exc)

    def acquire_lease(
        self, run_id: str, holder: str, ttl_ms: int, *, lease: int | None = None
    ) -> Lease:
        granted: Lease = self._writer.write(AcquireLease(run_id, holder, ttl_ms, lease))
        return granted

    def release_lease(self, run_id: str, lease: int) -> None:
        self._writer.write(ReleaseLease(run_id, lease))

    def claim_run(self, query: ClaimQuery) -> ClaimedRun | None:
        claimed: ClaimedRun | None = self._writer.write(partial(_claim, query))
        return claimed

    def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        deleted = 0
        while batch := self._writer.write(partial(delete_batch, completed_before, started_before)):
            deleted += batch
        self.purge()
        return deleted

    @property
    def writer(self) -> WriterThread:
        return self._writer

    # Reads: on this thread's own connection.

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise StoreUnavailable("The store is closed.")
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
        return stored_run(self._read(lambda c: c.execute(_GET, (run_id,)).fetchone()))

    def get_version(self, run_id: str) -> int | None:
        row = self._read(
            lambda c: c.execute("SELECT version FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        )
        return None if row is None else int(row[0])

    def list_runs(self, query: RunQuery) -> RunPage:
        sql, params = list_sql(query, "?", "?", (now_ms(),))
        return run_page(self._read(lambda c: c.execute(sql, params).fetchall()), query)

    def check_readable(self) -> None:
        self._read(lambda c: c.execute("SELECT count(*) FROM probe").fetchone())

    def check_ready(self) -> None:
        self.check_readable()
        self._writer.write(_probe)


class SQLiteStore(RunStore):
    """The server's :class:`RunStore` on a :class:`SQLiteEngine`."""

    def __init__(
        self,
        path: str | Path,
        *,
        wal_autocheckpoint: int = 1000,
        engine: SQLiteEngine | None = None,
    ) -> None:
        """``engine``: one already opened on ``path`` (so its checks are not run twice), which
        the store then owns and closes."""
        self.path = str(path)
        self.wal_autocheckpoint = wal_autocheckpoint
        self._opened = engine
        self._engine: SQLiteEngine | None = None
        self._readers: ThreadPoolExecutor | None = None
        # Reads handed to the reader threads and not yet done (on the event loop only).
        self._reads_in_flight = 0
        self._tally = RunTally()
        self._observer: CommitObserver | None = None

    @property
    def engine(self) -> SQLiteEngine:
        if self._engine is None:
            raise StoreUnavailable("The store is not open.")
        return self._engine

    async def open(self) -> None:
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="runstore-reader")
        if self._opened is not None:
            self._engine, self._opened = self._opened, None
            return
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
            raise StoreUnavailable("The store is not open.")
        self._reads_in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, read, *args)
        finally:
            self._reads_in_flight -= 1

    async def observe(self, observer: CommitObserver) -> None:
        self._observer = observer
        engine = self.engine
        if engine.writer.observer is not self:
            # Counted by the writer thread, between two commits: none is missed or counted
            # twice. Done once, at start-up; the writes keep the tally from then on.
            await engine.writer.write_async(partial(_count, self._tally, engine.writer, self))

    def committed(self, seconds: float, writes: int, tallies: list[TallyDelta]) -> None:
        """The writer thread's commits (see CommitObserver): the tally, then the observer."""
        if tallies:
            self._tally.apply(tallies)
        observer = self._observer
        if observer is not None:
            observer.committed(seconds, writes, tallies)

    def trace(self, tracer: Tracer) -> None:
        self.engine.writer.tracer = tracer

    def stats(self) -> StoreStats:
        engine = self._engine
        if engine is None:
            return StoreStats()
        try:
            wal_bytes = os.stat(engine.path + "-wal").st_size
        except OSError:  # no WAL file between a checkpoint that truncated it and a write
            wal_bytes = 0
        return StoreStats(
            write_queue=engine.writer.queued,
            reads_waiting=max(0, self._reads_in_flight - READER_THREADS),
            wal_bytes=wal_bytes,
            runs_by_status=self._tally.runs_by_status() if self._tally.counted else None,
            live_leases=self._tally.live_leases(now_ms()) if self._tally.counted else None,
        )

    async def put_run(
        self,
        record: SnapshotRecord,
        *,
        if_match: int | None = None,
        if_none_match: bool = False,
        lease: int | None = None,
    ) -> WriteResult:
        result: WriteResult = await self.engine.writer.write_async(
            PutRun(record, if_match, if_none_match, lease)
        )
        return result

    async def patch_run(
        self,
        run_id: str,
        patch: PatchRecord,
        *,
        if_match: int | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        result: WriteResult = await self.engine.writer.write_async(
            PatchRun(run_id, patch, if_match, lease)
        )
        return result

    async def delete_run(
        self, run_id: str, *, if_match: int | None = None, lease: int | None = None
    ) -> None:
        try:
            await self.engine.writer.write_async(partial(delete_run, run_id, if_match, lease))
        except RunNotFound:
            # As in SQLiteEngine.delete_run: a retried DELETE finishes a purge that failed.
            await self._purge()
            raise
        await self._purge()

    async def _purge(self) -> None:
        # Each batch is queued after the writes waiting now: they go between the batches. As
        # in SQLiteEngine.purge, a failure leaves the rest to the next purge.
        try:
            while await self.engine.writer.write_async(purge_batch):
                pass
        except StoreUnavailable as exc:
            log.warning("items of deleted runs are left for the next purge: %s", exc)

    async def acquire_lease(
        self, run_id: str, holder: str, ttl_ms: int, *, lease: int | None = None
    ) -> Lease:
        granted: Lease = await self.engine.writer.write_async(
            AcquireLease(run_id, holder, ttl_ms, lease)
        )
        return granted

    async def release_lease(self, run_id: str, lease: int) -> None:
        await self.engine.writer.write_async(ReleaseLease(run_id, lease))

    async def claim_run(self, query: ClaimQuery) -> ClaimedRun | None:
        claimed: ClaimedRun | None = await self.engine.writer.write_async(partial(_claim, query))
        return claimed

    async def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        # Each batch is queued after the writes waiting now: they go between the batches.
        deleted = 0
        while batch := await self.engine.writer.write_async(
            partial(delete_batch, completed_before, started_before)
        ):
            deleted += batch
        await self._purge()
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

    async def start_events(self, listener: ChangeListener) -> None:
        # The writer thread hands each commit's changes to the loop (one wake-up per group).
        self.engine.writer.on_commit = listener.publish_threadsafe
