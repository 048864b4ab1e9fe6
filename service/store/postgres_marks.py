"""Commit marks: how the PostgreSQL backend reads a lost COMMIT's outcome from the data.

Every write transaction inserts a row with a fresh token into ``commit_marks`` as its first
statement (:func:`mark`). When the connection dies while ``COMMIT`` is in flight, the store asks,
on another connection, whether the transaction still runs and then whether its mark is stored
(:func:`committed`): once it has ended, the mark is there exactly when it committed.

Only "in progress" is taken from the transaction id. After a crash, PostgreSQL may hand the id of
a transaction that never reached the WAL to another transaction, whose "committed" would answer
for the lost write (issue 19); here a reused id only makes the store wait for that other
transaction, never decide by it. An id not handed out again since the crash is "in the future",
an error, and means not running either. Marks older than :data:`LIFETIME_MS` are deleted
(:func:`forget_old`): an outcome is asked for within an operation's deadline of seconds.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

import psycopg
from psycopg import AsyncCursor
from psycopg.rows import TupleRow

from .postgres_writes import NOW_MS, Connection, fetch_one

__all__ = ["FORGET_EVERY", "LIFETIME_MS", "committed", "forget_old", "mark"]

LIFETIME_MS: Final = 600_000
FORGET_EVERY: Final = 60.0

_MARK: Final = (
    f"INSERT INTO commit_marks (token, at) VALUES (%s, {NOW_MS}) "
    "RETURNING pg_current_xact_id()::text"
)
_STATUS: Final = "SELECT pg_xact_status(%s::xid8)"
# A statement after _STATUS, so its snapshot sees a transaction that has ended.
_MARKED: Final = "SELECT EXISTS (SELECT FROM commit_marks WHERE token = %s)"
_FORGET: Final = f"DELETE FROM commit_marks WHERE at < {NOW_MS} - %s"


async def mark(connection: Connection, token: UUID) -> AsyncCursor[TupleRow]:
    """Queue the transaction's mark; the cursor's one row is then the transaction's id."""
    return await connection.execute(_MARK, (token,))


async def committed(connection: Connection, xid: str, token: UUID) -> bool | None:
    """Whether the transaction ``xid`` that wrote mark ``token`` committed; None while it runs
    (the server has not yet seen that its client went away)."""
    try:
        status = await fetch_one(connection, _STATUS, (xid,))
        if status[0] == "in progress":
            return None
    except psycopg.errors.InvalidParameterValue:
        pass  # "in the future": not handed out again since a crash, so not running
    marked = await fetch_one(connection, _MARKED, (token,))
    return bool(marked[0])


async def forget_old(connection: Connection) -> None:
    """Delete the marks no outcome will be asked of any more."""
    await connection.execute(_FORGET, (LIFETIME_MS,))
