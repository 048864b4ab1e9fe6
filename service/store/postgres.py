"""The PostgreSQL backend: any number of stateless replicas on one database.

Every write is one short transaction on a pooled connection. It locks the run's row
(``SELECT ... FOR UPDATE``), judges the write against what the database holds (version,
stale-write rule, preconditions, gaps), then writes the row and only the items that changed in
one statement. No replica trusts its memory: versions and trace lengths are the locked row's, so
two replicas racing on one run take turns and neither loses the other's update.

Transient failures (a lost connection, a serialization failure or deadlock, an administrator's
shutdown) are retried a bounded number of times within a deadline; past it the operation raises
:class:`StorageUnavailable` (503). A connection lost while ``COMMIT`` was in flight leaves the
outcome unknown to the client library, so the store asks the database with
``pg_xact_status(xid)`` instead of guessing: a committed write is answered as done, an aborted
one is retried, and only a database that cannot say gives a 503.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from time import monotonic
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import PreconditionFailed, RunNotFound, StaleWrite, StorageUnavailable, TraceGap
from .base import Cursor, RunPage, RunQuery, RunStore, StoredRun, WriteResult
from .postgres_schema import migrate
from .records import PatchRecord, SnapshotRecord, merge_doc, render_snapshot, render_summary

__all__ = ["PostgresStore"]

log = logging.getLogger("runstore.postgres")

T = TypeVar("T")
Connection = AsyncConnection[TupleRow]

# Two cores serve both the replica and the database here: a few connections keep the database
# busy and let concurrent commits share a WAL flush; more would only queue inside PostgreSQL.
MIN_CONNECTIONS: Final = 2
MAX_CONNECTIONS: Final = 8
# How long one operation may spend on retries before it answers 503.
OPERATION_DEADLINE: Final = 3.0
READY_DEADLINE: Final = 1.0
MAX_ATTEMPTS: Final = 5
FIRST_BACKOFF: Final = 0.05
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

_NOW_MS: Final = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
_XID: Final = "pg_current_xact_id()::text"

_LOCK_FOR_PUT: Final = (
    f"SELECT version, completed_at, trace_length, history_length, {_XID} FROM runs "
    "WHERE run_id = %s FOR UPDATE"
)
_LOCK_FOR_PATCH: Final = (
    "SELECT version, completed_at, trace_length, history_length, status, started_at, doc, "
    f"{_XID} FROM runs WHERE run_id = %s FOR UPDATE"
)

# A new run and its items in one statement; nothing is written if another transaction created
# the run first (the caller then locks that run and replaces it).
_CREATE: Final = f"""
WITH run AS (
    INSERT INTO runs (run_id, status, started_at, completed_at, version, updated_at,
                      trace_length, history_length, doc, plan)
    VALUES (%(run_id)s, %(status)s, %(started_at)s, %(completed_at)s, 1, {_NOW_MS},
            %(trace_length)s, %(history_length)s, %(doc)s, %(plan)s)
    ON CONFLICT (run_id) DO NOTHING
    RETURNING run_id
), steps_written AS (
    INSERT INTO steps (run_id, idx, item)
    SELECT run.run_id, item.ord - 1, item.text
    FROM run, unnest(%(trace)s::text[]) WITH ORDINALITY AS item (text, ord)
), turns_written AS (
    INSERT INTO turns (run_id, idx, item)
    SELECT run.run_id, item.ord - 1, item.text
    FROM run, unnest(%(history)s::text[]) WITH ORDINALITY AS item (text, ord)
)
SELECT {_XID} FROM run
"""

# An update of a locked run. Items from *_from on are upserted (unchanged ones are not
# rewritten) and items from *_end on are cut. A NULL doc keeps the stored one, so a PATCH that
# sends no field does not rewrite it: its cost stays that of what it sends.
_UPDATE: Final = f"""
WITH run AS (
    UPDATE runs SET
        status = %(status)s,
        started_at = %(started_at)s,
        completed_at = %(completed_at)s,
        doc = coalesce(%(doc)s, doc),
        plan = CASE WHEN %(set_plan)s THEN %(plan)s::text ELSE plan END,
        trace_length = %(trace_length)s,
        history_length = %(history_length)s,
        updated_at = {_NOW_MS},
        version = version + 1
    WHERE run_id = %(run_id)s
    RETURNING version
), steps_written AS (
    INSERT INTO steps (run_id, idx, item)
    SELECT %(run_id)s, %(trace_from)s + item.ord - 1, item.text
    FROM unnest(%(trace)s::text[]) WITH ORDINALITY AS item (text, ord)
    ON CONFLICT (run_id, idx) DO UPDATE SET item = excluded.item
    WHERE steps.item <> excluded.item
), steps_cut AS (
    DELETE FROM steps WHERE run_id = %(run_id)s AND idx >= %(trace_end)s
), turns_written AS (
    INSERT INTO turns (run_id, idx, item)
    SELECT %(run_id)s, %(history_from)s + item.ord - 1, item.text
    FROM unnest(%(history)s::text[]) WITH ORDINALITY AS item (text, ord)
    ON CONFLICT (run_id, idx) DO UPDATE SET item = excluded.item
    WHERE turns.item <> excluded.item
), turns_cut AS (
    DELETE FROM turns WHERE run_id = %(run_id)s AND idx >= %(history_end)s
)
SELECT version FROM run
"""

_DELETE: Final = f"DELETE FROM runs WHERE run_id = %s RETURNING version, {_XID}"

_GET: Final = """
SELECT version, doc, plan, history_length,
    (SELECT string_agg(item, ',' ORDER BY idx) FROM steps WHERE run_id = %(run_id)s),
    (SELECT string_agg(item, ',' ORDER BY idx) FROM turns WHERE run_id = %(run_id)s)
FROM runs WHERE run_id = %(run_id)s
"""
_VERSION: Final = "SELECT version FROM runs WHERE run_id = %s"
_PROBE: Final = (
    f"INSERT INTO probe (id, at) VALUES (1, {_NOW_MS}) "
    "ON CONFLICT (id) DO UPDATE SET at = excluded.at RETURNING at"
)
_XACT_STATUS: Final = "SELECT pg_xact_status(%s::xid8)"


def _check_version(stored: int, if_match: int | None) -> None:
    if if_match is not None and if_match != stored:
        raise PreconditionFailed(
            f"The run is at version {stored}, not {if_match}; read it again before writing."
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


def _describe(exc: psycopg.Error) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {first_line}" if first_line else name


class PostgresStore(RunStore):
    """A :class:`RunStore` on a PostgreSQL database, safe to share between replicas.

    ``open`` waits up to ``startup_timeout`` seconds for the database, creates or migrates the
    schema under an advisory lock and fills a pool of ``min_connections`` to
    ``max_connections`` connections. Each operation retries transient failures for up to
    ``operation_deadline`` seconds, then raises StorageUnavailable.
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
            raise StorageUnavailable(
                f"Cannot fill the connection pool for PostgreSQL at {self.target}: {exc}"
            ) from exc
        self._pool = pool
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
                    raise StorageUnavailable(
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
                raise StorageUnavailable(
                    f"Cannot prepare the runstore schema in {self.target}: {_describe(exc)}"
                ) from exc
        if found == 0:
            log.info("created the runstore schema in %s", self.target)

    async def close(self) -> None:
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
            raise StorageUnavailable("The store is not open.")
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

    async def _write(self, op: Callable[[Connection], Awaitable[tuple[T, str]]]) -> T:
        until = monotonic() + self._deadline
        attempt = 0
        while True:
            attempt += 1
            outcome: tuple[T, str] | None = None
            try:
                # In a pipeline, BEGIN travels with the first statement, and the last write
                # with COMMIT: two round trips for a PATCH instead of four.
                async with (
                    self._connection(until) as connection,
                    connection.pipeline(),
                    connection.transaction(),
                ):
                    outcome = await op(connection)
                # Leaving the pipeline sent COMMIT and read every answer: any error of the
                # queued write or of COMMIT was raised there.
                return outcome[0]
            except psycopg.Error as exc:
                if outcome is not None and _connection_lost(exc):
                    committed = await self._commit_outcome(outcome[1], until)
                    if committed:
                        return outcome[0]
                    if committed is None:
                        raise StorageUnavailable(
                            "The connection to PostgreSQL was lost while the write was "
                            "committing, and the database cannot tell yet whether it did; read "
                            "the run before writing again."
                        ) from exc
                await self._retry_or_raise(exc, attempt, until)

    async def _retry_or_raise(self, exc: psycopg.Error, attempt: int, until: float) -> None:
        delay = FIRST_BACKOFF * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
        if _connection_lost(exc) or isinstance(exc, PoolTimeout):
            self._check_pool_soon()
        if not _transient(exc):
            log.error("PostgreSQL refused an operation: %s", _describe(exc), exc_info=exc)
        elif attempt < MAX_ATTEMPTS and monotonic() + delay < until:
            log.info("retrying after %s (attempt %d)", _describe(exc), attempt)
            await asyncio.sleep(delay)
            return
        else:
            log.warning("PostgreSQL unavailable after %d attempts: %s", attempt, _describe(exc))
        raise StorageUnavailable(
            f"The database cannot take this operation now ({_describe(exc)})."
        ) from exc

    def _check_pool_soon(self) -> None:
        """Weed out the pool's other dead connections at once, not one failed request each."""
        pool = self._pool
        if pool is None or (self._pool_check is not None and not self._pool_check.done()):
            return
        self._pool_check = asyncio.create_task(pool.check(), name="runstore-pool-check")

    async def _commit_outcome(self, xid: str, until: float) -> bool | None:
        """Whether transaction ``xid`` committed: True, False, or None if it cannot be told
        before ``until``."""
        attempt = 0
        while monotonic() < until:
            attempt += 1
            try:
                async with self._connection(until) as connection:
                    cursor = await connection.execute(_XACT_STATUS, (xid,))
                    row = await cursor.fetchone()
            except psycopg.Error as exc:
                log.info("cannot ask whether transaction %s committed yet: %s", xid, exc)
                row = ("in progress",)
            status = None if row is None else row[0]
            if status == "committed":
                return True
            if status == "aborted":
                return False
            if status is None:
                return None
            # "in progress": the server has not yet seen that its client went away.
            await asyncio.sleep(min(FIRST_BACKOFF * attempt, max(0.0, until - monotonic())))
        return None

    # Writes.

    async def put_run(
        self, record: SnapshotRecord, *, if_match: int | None = None, if_none_match: bool = False
    ) -> WriteResult:
        return await self._write(lambda c: _put(c, record, if_match, if_none_match))

    async def patch_run(
        self, run_id: str, patch: PatchRecord, *, if_match: int | None = None
    ) -> WriteResult:
        return await self._write(lambda c: _patch(c, run_id, patch, if_match))

    async def delete_run(self, run_id: str, *, if_match: int | None = None) -> None:
        await self._write(lambda c: _delete(c, run_id, if_match))

    async def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        clauses: list[str] = []
        params: list[int] = []
        if completed_before is not None:
            clauses.append("completed_at < %s")
            params.append(completed_before)
        if started_before is not None:
            clauses.append("started_at < %s")
            params.append(started_before)
        if not clauses:
            raise ValueError("delete_runs needs completed_before and/or started_before")
        sql = (
            f"WITH gone AS (DELETE FROM runs WHERE {' AND '.join(clauses)} RETURNING 1) "
            f"SELECT count(*), {_XID} FROM gone"
        )

        async def op(connection: Connection) -> tuple[int, str]:
            row = await _fetch_one(connection, sql, params)
            return int(row[0]), str(row[1])

        return await self._write(op)

    # Reads.

    async def get_run(self, run_id: str) -> StoredRun | None:
        async def op(connection: Connection) -> TupleRow | None:
            cursor = await connection.execute(_GET, {"run_id": run_id})
            return await cursor.fetchone()

        row = await self._read(op, self._deadline)
        if row is None:
            return None
        version, doc, plan, history_length, trace, history = row
        if history_length is not None and history is None:
            history = ""
        return StoredRun(int(version), render_snapshot(doc, plan, trace or "", history))

    async def get_version(self, run_id: str) -> int | None:
        async def op(connection: Connection) -> TupleRow | None:
            cursor = await connection.execute(_VERSION, (run_id,))
            return await cursor.fetchone()

        row = await self._read(op, self._deadline)
        return None if row is None else int(row[0])

    async def list_runs(self, query: RunQuery) -> RunPage:
        clauses: list[str] = []
        params: list[Any] = []
        if len(query.statuses) == 1:
            clauses.append("status = %s")
            params.append(query.statuses[0])
        elif query.statuses:
            clauses.append("status = ANY(%s::text[])")
            params.append(list(query.statuses))
        if query.started_after is not None:
            clauses.append("started_at > %s")
            params.append(query.started_after)
        if query.started_before is not None:
            clauses.append("started_at < %s")
            params.append(query.started_before)
        if query.cursor is not None:
            clauses.append("(started_at, run_id) < (%s, %s)")
            params += (query.cursor.started_at, query.cursor.run_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT run_id, started_at, doc, trace_length, version, updated_at FROM runs "
            f"{where} ORDER BY started_at DESC, run_id DESC LIMIT %s"
        )
        params.append(query.limit + 1)

        async def op(connection: Connection) -> list[TupleRow]:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchall()

        rows = await self._read(op, self._deadline)
        next_cursor = None
        if len(rows) > query.limit:
            rows = rows[: query.limit]
            next_cursor = Cursor(int(rows[-1][1]), str(rows[-1][0]))
        return RunPage(
            [render_summary(doc, length, version, at) for _, _, doc, length, version, at in rows],
            next_cursor,
        )

    async def check_ready(self) -> None:
        async def op(connection: Connection) -> None:
            await _fetch_one(connection, _PROBE, ())

        await self._read(op, READY_DEADLINE)


async def _configure(connection: Connection) -> None:
    await connection.execute(_SESSION_SETUP)


async def _fetch_one(connection: Connection, sql: str, params: Any) -> TupleRow:
    cursor = await connection.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return row


# The transactions. Each runs inside BEGIN ... COMMIT on a connection in pipeline mode, and
# returns its result with the transaction id, which tells a lost COMMIT's outcome. A statement
# whose answer decides what comes next is fetched at once; the final write is only queued, and
# its errors surface when the pipeline ends, after COMMIT was sent (a failed statement makes
# PostgreSQL refuse the COMMIT, so nothing half-done is kept).

_CREATE_RACE_LIMIT: Final = 8


async def _put(
    connection: Connection, record: SnapshotRecord, if_match: int | None, if_none_match: bool
) -> tuple[WriteResult, str]:
    run_id = record.run_id
    trace_length = len(record.trace)
    history_length = None if record.history is None else len(record.history)
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": record.status,
        "started_at": record.started_at,
        "completed_at": record.completed_at,
        "trace_length": trace_length,
        "history_length": history_length,
        "doc": record.doc,
        "set_plan": True,
        "plan": record.plan,
        "trace": record.trace,
        "trace_from": 0,
        "trace_end": trace_length,
        "history": record.history or [],
        "history_from": 0,
        "history_end": history_length or 0,
    }
    for _ in range(_CREATE_RACE_LIMIT):
        cursor = await connection.execute(_LOCK_FOR_PUT, (run_id,))
        row = await cursor.fetchone()
        if row is not None:
            break
        if if_match is not None:
            raise PreconditionFailed("The run does not exist, so no version can match If-Match.")
        cursor = await connection.execute(_CREATE, values)
        created = await cursor.fetchone()
        if created is not None:
            return WriteResult(run_id, 1, trace_length, created=True), str(created[0])
        # Another transaction created the run after the lock found nothing: lock that one.
    else:
        raise psycopg.errors.SerializationFailure("the run was created and deleted repeatedly")
    version, stored_completed_at, stored_trace_length, _, xid = row
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
    await connection.execute(_UPDATE, values)
    # The row is locked: no other write can come between, so the new version is known.
    return WriteResult(run_id, version + 1, trace_length), str(xid)


async def _patch(
    connection: Connection, run_id: str, patch: PatchRecord, if_match: int | None
) -> tuple[WriteResult, str]:
    cursor = await connection.execute(_LOCK_FOR_PATCH, (run_id,))
    row = await cursor.fetchone()
    if row is None:
        raise RunNotFound(f"No run is stored under {run_id!r}; PUT it first.")
    version, completed_at, trace_length, history_length, status, started_at, doc, xid = row
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
    new_doc: str | None = None
    if patch.fields:
        new_doc, merged = merge_doc(doc, patch.fields)
        status, started_at = merged["status"], merged["startedAt"]
        completed_at = merged.get("completedAt")
    values: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "started_at": started_at,
        "completed_at": completed_at,
        "trace_length": new_trace_length,
        "history_length": new_history_length,
        "doc": new_doc,
        "set_plan": patch.set_plan,
        "plan": patch.plan,
        "trace": patch.trace or [],
        "trace_from": patch.trace_from if patch.trace is not None else 0,
        # Without a trace in the patch this is the stored length, so nothing is cut.
        "trace_end": new_trace_length,
        "history": patch.history or [],
        "history_from": patch.history_from if patch.history is not None else 0,
        # Unless the patch changes the history, its new length is the stored one: nothing cut.
        "history_end": new_history_length or 0,
    }
    await connection.execute(_UPDATE, values)
    return WriteResult(run_id, version + 1, new_trace_length), str(xid)


async def _delete(connection: Connection, run_id: str, if_match: int | None) -> tuple[None, str]:
    cursor = await connection.execute(_DELETE, (run_id,))
    row = await cursor.fetchone()
    if row is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    # A refused precondition raises here, and leaving the transaction rolls the delete back.
    _check_version(int(row[0]), if_match)
    return None, str(row[1])
