"""The PostgreSQL backend: any number of stateless replicas on one database.

Concurrent writes are grouped (:mod:`.postgres_group`) and each group is one short
transaction on a pooled connection: it locks the group's rows (``SELECT ... FOR UPDATE``),
judges each write against what the database holds (version, stale-write rule, preconditions,
gaps), then writes the rows and only the items that changed. No replica trusts its memory:
versions and trace lengths are the locked rows', so two replicas racing on one run take turns
and neither loses the other's update. The transactions themselves are in
:mod:`.postgres_writes`; this module runs them (and the reads) on pooled connections, with
retries.

Transient failures (a lost connection, a serialization failure or deadlock, an administrator's
shutdown) are retried a bounded number of times within a deadline; past it the operation raises
:class:`StoreUnavailable` (503). A connection lost while ``COMMIT`` was in flight leaves the
outcome unknown to the client library, so the store reads it from the data, by the commit mark
each write transaction stores (:mod:`.postgres_marks`): a committed write is answered as done,
one that did not commit is retried, and only a database that cannot say before the deadline
gives a 503.

The metrics' count of runs by status and live leases (:meth:`PostgresStore.stats`) is read from
the database every :data:`TALLY_INTERVAL` seconds by a background task, never at a scrape: the
other replicas' writes do not pass through this one, so its own could not keep the count.

Each accepted write of a group also adds its event row and notifies ``runstore_events`` in the
group's transaction (:mod:`.postgres_writes`), so its notice goes out only with the COMMIT;
:meth:`PostgresStore.start_events` listens for every replica's notices (:mod:`.postgres_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, TypeVar
from uuid import UUID, uuid4

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runstore.client.problems import RunNotFound, StoreUnavailable

from . import postgres_marks as commit_marks
from . import postgres_writes as writes
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
from .changes import ChangeListener
from .postgres_events import ChangeFollower
from .postgres_group import WriteGroups
from .postgres_schema import migrate
from .postgres_writes import (
    AcquireLease,
    Connection,
    DeleteRun,
    Outcome,
    PatchRun,
    PutRun,
    ReleaseLease,
    Write,
)
from .reads import list_sql, run_page, stored_run
from .records import PatchRecord, SnapshotRecord
from .tally import RunTally

__all__ = ["PostgresStore"]

log = logging.getLogger("runstore.postgres")

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

T = TypeVar("T")

# Two cores serve both the replica and the database here: a few connections keep the database
# busy and let concurrent commits share a WAL flush; more would only queue inside PostgreSQL.
MIN_CONNECTIONS: Final = 2
MAX_CONNECTIONS: Final = 8
# How long one operation may spend on retries before it answers 503.
OPERATION_DEADLINE: Final = 3.0
READY_DEADLINE: Final = 1.0
MAX_ATTEMPTS: Final = 5
FIRST_BACKOFF: Final = 0.05
# How often the count of runs by status and live leases is read again (see the docstring).
TALLY_INTERVAL: Final = 15.0
# How long start-up waits for the database (a replica may start before it).
STARTUP_TIMEOUT: Final = 10.0
# The pool gives up re-adding a lost connection after this; the next request grows it again,
# which keeps recovery quick after a long outage instead of waiting out a long backoff.
RECONNECT_TIMEOUT: Final = 5.0

_CONNECTION_OPTIONS: Final[dict[str, Any]] = {
    "autocommit": True,
    # Every statement here runs many times on each connection: prepare it the first time.
    "prepare_threshold": 0,
    "fallback_application_name": "runstore",
}
# A replica stopped in the middle of a transaction must not hold a run's lock for ever.
_SESSION_SETUP: Final = "SET idle_in_transaction_session_timeout = '60s'"

_GET: Final = writes.GET_RUN
_VERSION: Final = "SELECT version FROM runs WHERE run_id = %s"
_COUNT_STATUSES: Final = "SELECT status, count(*) FROM runs GROUP BY status"
# Live leases with the ms they have left, by the database's clock (turned into this process's).
_LIVE_LEASES: Final = (
    f"SELECT run_id, lease_expires_at - {writes.CLOCK_MS} FROM runs "
    f"WHERE lease_expires_at > {writes.CLOCK_MS}"
)
_PROBE: Final = (
    f"INSERT INTO probe (id, at) VALUES (1, {writes.NOW_MS}) "
    "ON CONFLICT (id) DO UPDATE SET at = excluded.at RETURNING at"
)


def _connection_lost(exc: psycopg.Error) -> bool:
    """True when the error says the session ended, not that a statement failed."""
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P"))


def _transient(exc: psycopg.Error) -> bool:
    """Worth another attempt: a lost connection, a rolled-back transaction, a busy server."""
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return True  # a failover in progress: the address may soon lead to the new primary
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate or ""
    # Out of disk or memory does not pass in milliseconds; too many connections may.
    return not state.startswith("53") or state == "53300"


def _retryable(exc: psycopg.Error) -> bool:
    # A unique violation can only be a run another transaction created after the group's lock
    # found none: the next attempt finds and locks it.
    return _transient(exc) or isinstance(exc, psycopg.errors.UniqueViolation)


def _refused(exc: Exception) -> bool:
    """True when a group failed for what one of its writes is (PostgreSQL refused a statement,
    or applying it raised), not because the database was unreachable or busy past the deadline:
    its writes alone may then succeed."""
    if not isinstance(exc, StoreUnavailable):
        return True
    cause = exc.__cause__
    return isinstance(cause, psycopg.Error) and not _retryable(cause)


def _describe(exc: psycopg.Error) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {first_line}" if first_line else name


class PostgresStore(RunStore):
    """A :class:`RunStore` on a PostgreSQL database, safe to share between replicas.

    ``open`` waits up to ``startup_timeout`` seconds for the database, creates or migrates the
    schema under an advisory lock and fills a pool of ``min_connections`` to
    ``max_connections`` connections. Each operation retries transient failures for up to
    ``operation_deadline`` seconds, then raises StoreUnavailable.
    """

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = MIN_CONNECTIONS,
        max_connections: int = MAX_CONNECTIONS,
        operation_deadline: float = OPERATION_DEADLINE,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self._url = url
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._deadline = operation_deadline
        self._startup_timeout = startup_timeout
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._pool_check: asyncio.Task[None] | None = None
        self._groups: WriteGroups | None = None
        self._forget_marks: asyncio.Task[None] | None = None
        self._follower: ChangeFollower | None = None
        self._tally = RunTally()
        self._tally_task: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """``host:port/dbname`` of the database, without credentials, for messages."""
        try:
            params = conninfo_to_dict(self._url)
        except psycopg.ProgrammingError:
            return "(an invalid database URL)"
        host = params.get("host") or params.get("hostaddr") or "localhost"
        return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"

    # Opening and closing.

    async def open(self) -> None:
        if self._pool is not None:
            return
        await self._prepare_schema()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._url,
            min_size=self._min_connections,
            max_size=self._max_connections,
            kwargs=_CONNECTION_OPTIONS,
            configure=_configure,
            open=False,
            name="runstore",
            timeout=self._deadline,
            reconnect_timeout=RECONNECT_TIMEOUT,
        )
        try:
            await pool.open(wait=True, timeout=self._startup_timeout)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailable(
                f"Cannot fill the connection pool for PostgreSQL at {self.target}: {exc}"
            ) from exc
        self._pool = pool
        self._groups = WriteGroups(self._apply_group)
        self._forget_marks = asyncio.create_task(
            self._forget_marks_now_and_then(), name="runstore-pg-marks"
        )
        # Items of runs deleted before a replica stopped in the middle of purging them.
        await self._purge()
        log.info("serving runs from PostgreSQL at %s", self.target)

    async def _prepare_schema(self) -> None:
        until = monotonic() + self._startup_timeout
        waiting_logged = False
        while True:
            try:
                connection = await AsyncConnection.connect(
                    self._url,
                    **_CONNECTION_OPTIONS,
                    connect_timeout=max(2, round(until - monotonic())),
                )
                break
            except psycopg.OperationalError as exc:
                if monotonic() + 0.5 >= until:
                    raise StoreUnavailable(
                        f"Cannot connect to PostgreSQL at {self.target}: {_describe(exc)}"
                    ) from exc
                if not waiting_logged:
                    log.warning("waiting for PostgreSQL at %s: %s", self.target, _describe(exc))
                    waiting_logged = True
                await asyncio.sleep(0.5)
        async with connection:
            try:
                found = await migrate(connection)
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"Cannot prepare the runstore schema in {self.target}: {_describe(exc)}"
                ) from exc
        if found == 0:
            log.info("created the runstore schema in %s", self.target)

    async def close(self) -> None:
        tally_task, self._tally_task = self._tally_task, None
        if tally_task is not None:
            tally_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tally_task
        follower, self._follower = self._follower, None
        if follower is not None:
            await follower.close()
        groups, forget = self._groups, self._forget_marks
        self._groups = self._forget_marks = None
        if groups is not None:
            await groups.close()
        if forget is not None:
            forget.cancel()
        pool, check = self._pool, self._pool_check
        self._pool = self._pool_check = None
        if check is not None:
            check.cancel()
        if pool is not None:
            await pool.close()

    # Running operations with retries.

    @asynccontextmanager
    async def _connection(self, until: float) -> AsyncIterator[Connection]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("The store is not open.")
        async with pool.connection(timeout=max(0.001, until - monotonic())) as connection:
            yield connection

    async def _read(self, op: Callable[[Connection], Awaitable[T]], deadline: float) -> T:
        until = monotonic() + deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._connection(until) as connection:
                    return await op(connection)
            except psycopg.Error as exc:
                await self._retry_or_raise(exc, attempt, until)

    async def _write(self, op: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``op`` in one transaction, again after a transient failure, until committed."""
        until = monotonic() + self._deadline
        attempt = 0
        while True:
            attempt += 1
            token = uuid4()
            # Set once COMMIT may have been sent: the transaction id and the result.
            sent: tuple[str, T] | None = None
            try:
                async with self._connection(until) as connection:
                    try:
                        # BEGIN and the commit mark travel with op's first statement, and what
                        # op queues after its last wait travels with COMMIT: a group takes two
                        # round trips, its lock and its commit. (psycopg's transaction() would
                        # sync the pipeline as it enters and leaves, a round trip each.)
                        async with connection.pipeline():
                            # Unprepared, as psycopg sends its own: there is nothing to plan.
                            await connection.execute("BEGIN", prepare=False)
                            marked = await commit_marks.mark(connection, token)
                            result = await op(connection)
                            # op waited for an answer after the mark's, so this one is in.
                            xid = await marked.fetchone()
                            assert xid is not None
                            sent = (str(xid[0]), result)
                            await connection.execute("COMMIT", prepare=False)
                        # Leaving the pipeline sent COMMIT and read every answer: any error of
                        # the queued writes or of COMMIT was raised there.
                    except Exception:
                        await _roll_back(connection)
                        raise
                return result
            except psycopg.Error as exc:
                if sent is not None and _connection_lost(exc):
                    committed = await self._commit_outcome(sent[0], token, until)
                    if committed:
                        return sent[1]
                    if committed is None:
                        raise StoreUnavailable(
                            "The connection to PostgreSQL was lost while the write was "
                            "committing, and the database cannot tell yet whether it did; read "
                            "the run before writing again."
                        ) from exc
                await self._retry_or_raise(exc, attempt, until)

    async def _retry_or_raise(self, exc: psycopg.Error, attempt: int, until: float) -> None:
        delay = FIRST_BACKOFF * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
        if _connection_lost(exc) or isinstance(exc, PoolTimeout):
            self._check_pool_soon()
        if not _retryable(exc):
            log.error("PostgreSQL refused an operation: %s", _describe(exc), exc_info=exc)
        elif attempt < MAX_ATTEMPTS and monotonic() + delay < until:
            log.info("retrying after %s (attempt %d)", _describe(exc), attempt)
            await asyncio.sleep(delay)
            return
        else:
            log.warning("PostgreSQL unavailable after %d attempts: %s", attempt, _describe(exc))
        raise StoreUnavailable(
            f"The database cannot take this operation now ({_describe(exc)})."
        ) from exc

    def _check_pool_soon(self) -> None:
        """Weed out the pool's other dead connections at once, not one failed request each."""
        pool = self._pool
        if pool is None or (self._pool_check is not None and not self._pool_check.done()):
            return
        self._pool_check = asyncio.create_task(_check_pool(pool), name="runstore-pool-check")

    async def _commit_outcome(self, xid: str, token: UUID, until: float) -> bool | None:
        """Whether the transaction that wrote mark ``token`` committed: True, False, or None if
        it cannot be told before ``until``."""
        attempt = 0
        while monotonic() < until:
            attempt += 1
            try:
                async with self._connection(until) as connection:
                    committed = await commit_marks.committed(connection, xid, token)
                if committed is not None:
                    return committed
            except psycopg.Error as exc:
                log.info("cannot ask whether transaction %s committed yet: %s", xid, exc)
                self._check_pool_soon()
            await asyncio.sleep(min(FIRST_BACKOFF * attempt, max(0.0, until - monotonic())))
        return None

    async def _forget_marks_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(commit_marks.FORGET_EVERY)
            try:
                await self._read(commit_marks.forget_old, self._deadline)
            except StoreUnavailable as exc:  # the next round deletes them
                log.info("cannot delete old commit marks now: %s", exc)

    # Writes.

    async def _apply_group(self, group: Sequence[Write]) -> list[Outcome]:
        try:
            return await self._write(lambda c: writes.apply_group(c, group))
        except Exception as exc:
            if len(group) == 1 or not _refused(exc):
                raise
            # One write's failure undid the whole transaction: give every write its own, so
            # that the others are judged on their own (as the SQLite writer does).
            log.warning("group of %d writes failed (%s); retrying one by one", len(group), exc)
        outcomes: list[Outcome] = []
        for write in group:
            try:
                outcomes += await self._write(functools.partial(writes.apply_group, group=[write]))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _submit(self, write: Write) -> WriteResult | Lease | None:
        groups = self._groups
        if groups is None:
            raise StoreUnavailable("The store is not open.")
        return await groups.submit(write)

    async def put_run(
        self,
        record: SnapshotRecord,
        *,
        if_match: int | None = None,
        if_none_match: bool = False,
        lease: int | None = None,
    ) -> WriteResult:
        result = await self._submit(PutRun(record, if_match, if_none_match, lease))
        assert isinstance(result, WriteResult)
        return result

    async def patch_run(
        self,
        run_id: str,
        patch: PatchRecord,
        *,
        if_match: int | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        result = await self._submit(PatchRun(run_id, patch, if_match, lease))
        assert isinstance(result, WriteResult)
        return result

    async def delete_run(
        self, run_id: str, *, if_match: int | None = None, lease: int | None = None
    ) -> None:
        try:
            await self._submit(DeleteRun(run_id, if_match, lease))
        except RunNotFound:
            # A retried DELETE (the first one deleted the run) finishes what its purge left.
            await self._purge()
            raise
        await self._purge()

    async def _purge(self) -> None:
        """Delete the items deleted runs left, a batch per transaction, so that other writes
        go between the batches. The deletes that left them are done whatever happens here: a
        purge that fails is left to the next one (the next delete's, or the next start's)."""
        try:
            while await self._write(writes.purge_batch):
                pass
        except StoreUnavailable as exc:
            log.warning("items of deleted runs are left for the next purge: %s", exc)

    async def acquire_lease(
        self, run_id: str, holder: str, ttl_ms: int, *, lease: int | None = None
    ) -> Lease:
        granted = await self._submit(AcquireLease(run_id, holder, ttl_ms, lease))
        assert isinstance(granted, Lease)
        return granted

    async def release_lease(self, run_id: str, lease: int) -> None:
        await self._submit(ReleaseLease(run_id, lease))

    async def claim_run(self, query: ClaimQuery) -> ClaimedRun | None:
        return await self._write(lambda c: writes.claim_run(c, query))

    async def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        if completed_before is None and started_before is None:
            raise ValueError("delete_runs needs completed_before and/or started_before")
        deleted, more = 0, True
        while more:
            batch, more = await self._write(
                lambda c: writes.delete_runs_batch(c, completed_before, started_before)
            )
            deleted += batch
        await self._purge()
        return deleted

    # Reads.

    async def get_run(self, run_id: str) -> StoredRun | None:
        async def op(connection: Connection) -> TupleRow | None:
            cursor = await connection.execute(_GET, {"run_id": run_id})
            return await cursor.fetchone()

        return stored_run(await self._read(op, self._deadline))

    async def get_version(self, run_id: str) -> int | None:
        async def op(connection: Connection) -> TupleRow | None:
            cursor = await connection.execute(_VERSION, (run_id,))
            return await cursor.fetchone()

        row = await self._read(op, self._deadline)
        return None if row is None else int(row[0])

    async def list_runs(self, query: RunQuery) -> RunPage:
        sql, params = list_sql(query, "%s", writes.CLOCK_MS)

        async def op(connection: Connection) -> list[TupleRow]:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchall()

        return run_page(await self._read(op, self._deadline), query)

    async def check_ready(self) -> None:
        async def op(connection: Connection) -> None:
            await writes.fetch_one(connection, _PROBE, ())

        await self._read(op, READY_DEADLINE)

    async def observe(self, observer: CommitObserver) -> None:
        if self._groups is not None:
            self._groups.observer = observer
        if self._tally_task is None:
            await self._count()
            self._tally_task = asyncio.create_task(
                self._count_now_and_then(), name="runstore-pg-tally"
            )

    async def _count(self) -> None:
        async def op(connection: Connection) -> tuple[list[TupleRow], list[TupleRow]]:
            statuses = await (await connection.execute(_COUNT_STATUSES)).fetchall()
            leases = await (await connection.execute(_LIVE_LEASES)).fetchall()
            return statuses, leases

        statuses, leases = await self._read(op, self._deadline)
        now = _now_ms()
        self._tally.reset(statuses, [(run_id, now + left) for run_id, left in leases])

    async def _count_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(TALLY_INTERVAL)
            try:
                await self._count()
            except StoreUnavailable as exc:  # the gauges keep the last count
                log.warning("counting runs for the metrics failed: %s", exc.detail)

    def trace(self, tracer: Tracer) -> None:
        if self._groups is not None:
            self._groups.tracer = tracer

    def stats(self) -> StoreStats:
        pool, groups = self._pool, self._groups
        if pool is None:
            return StoreStats()
        pool_stats = pool.get_stats()
        size = pool_stats.get("pool_size", 0)
        return StoreStats(
            write_queue=groups.queued if groups is not None else 0,
            reads_waiting=pool_stats.get("requests_waiting", 0),
            pool_size=size,
            pool_in_use=size - pool_stats.get("pool_available", 0),
            runs_by_status=self._tally.runs_by_status() if self._tally.counted else None,
            live_leases=(self._tally.live_leases(_now_ms()) if self._tally.counted else None),
        )

    async def start_events(self, listener: ChangeListener) -> None:
        # Every replica's writes, this one's included, arrive as notices (postgres_events).
        if self._follower is not None:
            return
        self._follower = ChangeFollower(
            self._url,
            _CONNECTION_OPTIONS,
            listener,
            lambda op: self._read(op, self._deadline),
            self.get_run,
        )
        await self._follower.start()


async def _roll_back(connection: Connection) -> None:
    """End the failed transaction a statement left open (the pool would warn of it)."""
    if connection.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):  # a lost connection: the pool drops it
            await connection.execute("ROLLBACK")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _check_pool(pool: AsyncConnectionPool[Connection]) -> None:
    try:
        await pool.check()
    except Exception as exc:  # a closing pool, say: the next failure checks again
        log.info("checking the pool's connections failed: %s", exc)


async def _configure(connection: Connection) -> None:
    await connection.execute(_SESSION_SETUP)
