"""The PostgreSQL backend: any number of stateless replicas on one database.

Concurrent writes are grouped (:mod:`.postgres_group`) and each group is one short
transaction on a pooled connection: it locks the group's rows (``SELECT ... FOR UPDATE``),
judges each write against what the database holds (version, stale-write rule, preconditions,
gaps), then writes the rows and only the items that changed. No replica trusts its memory:
versions and trace lengths are the locked rows', so two replicas racing on one run take turns
and neither loses the other's update. The transactions themselves are in
:mod:`.postgres_writes`; :class:`.postgres_pool.RetryingPool` runs them (and the reads) on
pooled connections, retries them after transient failures and resolves a COMMIT whose outcome a
lost connection hid.

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
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import psycopg
from psycopg.rows import TupleRow

from runstore.client.problems import RunNotFound, StoreUnavailable

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
from .postgres_pool import (
    CONNECTION_OPTIONS,
    MAX_CONNECTIONS,
    MIN_CONNECTIONS,
    OPERATION_DEADLINE,
    STARTUP_TIMEOUT,
    RetryingPool,
    describe,
    refused,
)
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

# How long the readiness check (check_ready) may spend on retries before it fails.
READY_DEADLINE: Final = 1.0
# How often the count of runs by status and live leases is read again (see the docstring).
TALLY_INTERVAL: Final = 15.0

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
        self._pool = RetryingPool(
            url,
            min_connections=min_connections,
            max_connections=max_connections,
            operation_deadline=operation_deadline,
            startup_timeout=startup_timeout,
        )
        self._groups: WriteGroups | None = None
        self._follower: ChangeFollower | None = None
        self._tally = RunTally()
        self._tally_task: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """``host:port/dbname`` of the database, without credentials, for messages."""
        return self._pool.target

    # Opening and closing.

    async def open(self) -> None:
        if self._pool.is_open:
            return
        await self._prepare_schema()
        await self._pool.open()
        self._groups = WriteGroups(self._apply_group)
        # Items of runs deleted before a replica stopped in the middle of purging them.
        await self._purge()
        log.info("serving runs from PostgreSQL at %s", self.target)

    async def _prepare_schema(self) -> None:
        async with await self._pool.connect() as connection:
            try:
                found = await migrate(connection)
            except psycopg.Error as exc:
                raise StoreUnavailable(
                    f"Cannot prepare the runstore schema in {self.target}: {describe(exc)}"
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
        groups, self._groups = self._groups, None
        if groups is not None:
            await groups.close()
        await self._pool.close()

    # Writes.

    async def _apply_group(self, group: Sequence[Write]) -> list[Outcome]:
        try:
            return await self._pool.write(lambda c: writes.apply_group(c, group))
        except Exception as exc:
            if len(group) == 1 or not refused(exc):
                raise
            # One write's failure undid the whole transaction: give every write its own, so
            # that the others are judged on their own (as the SQLite writer does).
            log.warning("group of %d writes failed (%s); retrying one by one", len(group), exc)
        outcomes: list[Outcome] = []
        for write in group:
            try:
                outcomes += await self._pool.write(
                    functools.partial(writes.apply_group, group=[write])
                )
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
            while await self._pool.write(writes.purge_batch):
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
        return await self._pool.write(lambda c: writes.claim_run(c, query))

    async def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        if completed_before is None and started_before is None:
            raise ValueError("delete_runs needs completed_before and/or started_before")
        deleted, more = 0, True
        while more:
            batch, more = await self._pool.write(
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

        return stored_run(await self._pool.read(op))

    async def get_version(self, run_id: str) -> int | None:
        async def op(connection: Connection) -> TupleRow | None:
            cursor = await connection.execute(_VERSION, (run_id,))
            return await cursor.fetchone()

        row = await self._pool.read(op)
        return None if row is None else int(row[0])

    async def list_runs(self, query: RunQuery) -> RunPage:
        sql, params = list_sql(query, "%s", writes.CLOCK_MS)

        async def op(connection: Connection) -> list[TupleRow]:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchall()

        return run_page(await self._pool.read(op), query)

    async def check_ready(self) -> None:
        async def op(connection: Connection) -> None:
            await writes.fetch_one(connection, _PROBE, ())

        await self._pool.read(op, READY_DEADLINE)

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

        statuses, leases = await self._pool.read(op)
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
        pool_stats, groups = self._pool.stats(), self._groups
        if pool_stats is None:
            return StoreStats()
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
            self._pool.url,
            CONNECTION_OPTIONS,
            listener,
            self._pool.read,
            self.get_run,
        )
        await self._follower.start()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
