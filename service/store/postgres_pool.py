"""The PostgreSQL backend's connections: a pool that runs reads and transactions, with retries.

:class:`RetryingPool` keeps a pool of connections to one database and runs an operation on one
of them: a read as it comes, a write in one transaction that also stores a commit mark. What the
operations do (the write groups, the reads, the schema) is :class:`.postgres.PostgresStore`'s
business; here is what every one of them needs alike, written once: a connection with the
session's settings, another attempt after a failure that may pass, and the outcome of a COMMIT
that a lost connection hid.

Transient failures (a lost connection, a serialization failure or deadlock, an administrator's
shutdown) are retried a bounded number of times within a deadline; past it the operation raises
:class:`StoreUnavailable` (503). A connection lost while ``COMMIT`` was in flight leaves the
outcome unknown to the client library, so the pool reads it from the data, by the commit mark
each write transaction stores (:mod:`.postgres_marks`): a committed write is answered as done,
one that did not commit is retried, and only a database that cannot say before the deadline
gives a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from time import monotonic
from typing import Any, Final, TypeVar
from uuid import UUID, uuid4

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from runstore.client.problems import StoreUnavailable

from . import postgres_marks as commit_marks
from .postgres_writes import Connection

__all__ = [
    "CONNECTION_OPTIONS",
    "MAX_CONNECTIONS",
    "MIN_CONNECTIONS",
    "OPERATION_DEADLINE",
    "STARTUP_TIMEOUT",
    "RetryingPool",
    "describe",
    "refused",
]

log = logging.getLogger("runstore.postgres")

T = TypeVar("T")

# Two cores serve both the replica and the database here: a few connections keep the database
# busy and let concurrent commits share a WAL flush; more would only queue inside PostgreSQL.
MIN_CONNECTIONS: Final = 2
MAX_CONNECTIONS: Final = 8
# How long one operation may spend on retries before it answers 503.
OPERATION_DEADLINE: Final = 3.0
MAX_ATTEMPTS: Final = 5
FIRST_BACKOFF: Final = 0.05
# How long start-up waits for the database (a replica may start before it).
STARTUP_TIMEOUT: Final = 10.0
# The pool gives up re-adding a lost connection after this; the next request grows it again,
# which keeps recovery quick after a long outage instead of waiting out a long backoff.
RECONNECT_TIMEOUT: Final = 5.0

CONNECTION_OPTIONS: Final[dict[str, Any]] = {
    "autocommit": True,
    # Every statement here runs many times on each connection: prepare it the first time.
    "prepare_threshold": 0,
    "fallback_application_name": "runstore",
}
# A replica stopped in the middle of a transaction must not hold a run's lock for ever.
_SESSION_SETUP: Final = "SET idle_in_transaction_session_timeout = '60s'"


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


def refused(exc: Exception) -> bool:
    """True when a group failed for what one of its writes is (PostgreSQL refused a statement,
    or applying it raised), not because the database was unreachable or busy past the deadline:
    its writes alone may then succeed."""
    if not isinstance(exc, StoreUnavailable):
        return True
    cause = exc.__cause__
    return isinstance(cause, psycopg.Error) and not _retryable(cause)


def describe(exc: psycopg.Error) -> str:
    """The error's class and first line, for messages and logs."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {first_line}" if first_line else name


class RetryingPool:
    """A pool of ``min_connections`` to ``max_connections`` connections to the database at
    ``url`` that runs reads (:meth:`read`) and write transactions (:meth:`write`), each
    retried after transient failures for up to ``operation_deadline`` seconds. Opening waits up
    to ``startup_timeout`` seconds for the database. (The defaults are
    :class:`.postgres.PostgresStore`'s, which makes one.)"""

    def __init__(
        self,
        url: str,
        *,
        min_connections: int,
        max_connections: int,
        operation_deadline: float,
        startup_timeout: float,
    ) -> None:
        self.url = url
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._deadline = operation_deadline
        self._startup_timeout = startup_timeout
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._pool_check: asyncio.Task[None] | None = None
        self._forget_marks: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        """``host:port/dbname`` of the database, without credentials, for messages."""
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.ProgrammingError:
            return "(an invalid database URL)"
        host = params.get("host") or params.get("hostaddr") or "localhost"
        return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def connect(self) -> Connection:
        """One connection outside the pool, waiting for the database up to the start-up timeout
        (a replica may start before it)."""
        until = monotonic() + self._startup_timeout
        waiting_logged = False
        while True:
            try:
                return await AsyncConnection.connect(
                    self.url,
                    **CONNECTION_OPTIONS,
                    connect_timeout=max(2, round(until - monotonic())),
                )
            except psycopg.OperationalError as exc:
                if monotonic() + 0.5 >= until:
                    raise StoreUnavailable(
                        f"Cannot connect to PostgreSQL at {self.target}: {describe(exc)}"
                    ) from exc
                if not waiting_logged:
                    log.warning("waiting for PostgreSQL at %s: %s", self.target, describe(exc))
                    waiting_logged = True
                await asyncio.sleep(0.5)

    async def open(self) -> None:
        """Fill the pool, waiting up to the start-up timeout, and start deleting old marks."""
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.url,
            min_size=self._min_connections,
            max_size=self._max_connections,
            kwargs=CONNECTION_OPTIONS,
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
        self._forget_marks = asyncio.create_task(
            self._forget_marks_now_and_then(), name="runstore-pg-marks"
        )

    async def close(self) -> None:
        forget, self._forget_marks = self._forget_marks, None
        if forget is not None:
            forget.cancel()
        pool, check = self._pool, self._pool_check
        self._pool = self._pool_check = None
        if check is not None:
            check.cancel()
        if pool is not None:
            await pool.close()

    def stats(self) -> dict[str, int] | None:
        """The pool's own counts (psycopg_pool's names), None while it is not open."""
        return None if self._pool is None else self._pool.get_stats()

    # Running operations with retries.

    @asynccontextmanager
    async def _connection(self, until: float) -> AsyncIterator[Connection]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("The store is not open.")
        async with pool.connection(timeout=max(0.001, until - monotonic())) as connection:
            yield connection

    async def read(
        self, op: Callable[[Connection], Awaitable[T]], deadline: float | None = None
    ) -> T:
        """Run ``op`` on a pooled connection, again after a transient failure, for up to
        ``deadline`` seconds (the operation deadline if None)."""
        until = monotonic() + (self._deadline if deadline is None else deadline)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._connection(until) as connection:
                    return await op(connection)
            except psycopg.Error as exc:
                await self._retry_or_raise(exc, attempt, until)

    async def write(self, op: Callable[[Connection], Awaitable[T]]) -> T:
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
            log.error("PostgreSQL refused an operation: %s", describe(exc), exc_info=exc)
        elif attempt < MAX_ATTEMPTS and monotonic() + delay < until:
            log.info("retrying after %s (attempt %d)", describe(exc), attempt)
            await asyncio.sleep(delay)
            return
        else:
            log.warning("PostgreSQL unavailable after %d attempts: %s", attempt, describe(exc))
        raise StoreUnavailable(
            f"The database cannot take this operation now ({describe(exc)})."
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
                await self.read(commit_marks.forget_old)
            except StoreUnavailable as exc:  # the next round deletes them
                log.info("cannot delete old commit marks now: %s", exc)


async def _roll_back(connection: Connection) -> None:
    """End the failed transaction a statement left open (the pool would warn of it)."""
    if connection.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        with contextlib.suppress(psycopg.Error):  # a lost connection: the pool drops it
            await connection.execute("ROLLBACK")


async def _check_pool(pool: AsyncConnectionPool[Connection]) -> None:
    try:
        await pool.check()
    except Exception as exc:  # a closing pool, say: the next failure checks again
        log.info("checking the pool's connections failed: %s", exc)


async def _configure(connection: Connection) -> None:
    await connection.execute(_SESSION_SETUP)
