"""How a PostgreSQL replica hears of every replica's writes: ``LISTEN`` on one connection.

Each committed write notifies ``runstore_events`` with ``<runId>:<version>`` or
``<runId>:deleted`` (:mod:`.postgres_writes`); PostgreSQL delivers it to every listening
session, this replica's own included, so a replica's watchers learn of its own writes the same
way as of the others'. On a notice for a run someone here follows, the replica reads what its
watchers lack: the event rows after the version they were last told (``run_events``: a PATCH's
delta each) and the run's summary; when those rows no longer reach back far enough, or a PUT
replaced the run, it reads the run and sends it whole. Runs nobody here follows cost nothing
but the notice.

The listening connection is its own, outside the pool. When it is lost the task reconnects
with a backoff, and then catches every followed run up, since notices sent meanwhile are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from .base import StoredRun
from .changes import Change, ChangeListener
from .postgres_writes import CHANNEL, CLOCK_MS
from .reads import live_lease_json
from .records import is_finished, render_summary

__all__ = ["ChangeFollower"]

log = logging.getLogger("runstore.postgres")

Connection = AsyncConnection[TupleRow]
# Runs whose last summary sent to watchers of all runs is remembered, to send each once.
SUMMARIZED_KEPT: Final = 10_000
RECONNECT_DELAYS: Final = (0.1, 0.5, 1.0, 2.0)

_SUMMARY: Final = (
    "SELECT version, status, completed_at, doc, trace_length, updated_at, "
    f"lease, lease_holder, lease_expires_at, lease_ttl_ms, {CLOCK_MS} "
    "FROM runs WHERE run_id = %s"
)
_EVENTS: Final = (
    "SELECT version, kind, finished, data FROM run_events "
    "WHERE run_key = (SELECT run_key FROM runs WHERE run_id = %s) AND version > %s "
    "ORDER BY version"
)

# How the follower reads: an operation on a pooled connection, with the store's retries.
Read = Callable[[Callable[[Connection], Awaitable[Any]]], Awaitable[Any]]


class ChangeFollower:
    """The task that listens for notices and tells ``listener`` the changes they announce."""

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        listener: ChangeListener,
        read: Read,
        get_run: Callable[[str], Awaitable[StoredRun | None]],
    ) -> None:
        self._url = url
        self._options = options
        self._listener = listener
        self._read = read
        self._get_run = get_run
        self._summarized: OrderedDict[str, int] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self) -> None:
        """Start listening; returns once the first LISTEN is in place (or failed once)."""
        self._task = asyncio.create_task(self._run(), name="runstore-events-listener")
        await self._listening.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        attempt = 0
        caught_up = True
        while True:
            try:
                async with await AsyncConnection.connect(self._url, **self._options) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    attempt = 0
                    if not caught_up:
                        await self._catch_up_all()
                    caught_up = False
                    async for notice in connection.notifies():
                        await self._on_notice(notice.payload)
            except psycopg.Error as exc:
                self._listening.set()
                delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
                attempt += 1
                log.warning(
                    "listening for other replicas' writes failed (%s); again in %ss", exc, delay
                )
                await asyncio.sleep(delay)

    async def _catch_up_all(self) -> None:
        for run_id in self._listener.watched_runs():
            await self._follow(run_id, None)

    async def _on_notice(self, payload: str) -> None:
        run_id, _, version = payload.rpartition(":")
        try:
            if version == "deleted":
                self._summarized.pop(run_id, None)
                self._listener.publish([Change.of_delete(run_id)])
            elif version.isdigit():
                await self._follow(run_id, int(version))
        except Exception:  # one run's trouble must not stop the others' events
            log.exception("following the change %r failed", payload)

    async def _follow(self, run_id: str, version: int | None) -> None:
        """Tell the watchers of ``run_id`` what they lack, up to at least ``version`` (None:
        whatever is there)."""
        known = self._listener.known_version(run_id)
        wants_summary = self._listener.following_all
        if known is None and not wants_summary:
            return
        if version is not None and known is not None and known >= version and not wants_summary:
            return
        since = known if known is not None else (version or 0)

        async def op(connection: Connection) -> tuple[TupleRow | None, list[TupleRow]]:
            summary = await (await connection.execute(_SUMMARY, (run_id,))).fetchone()
            events: list[TupleRow] = []
            if known is not None and summary is not None and summary[0] > known:
                events = await (await connection.execute(_EVENTS, (run_id, since))).fetchall()
            return summary, events

        row, events = await self._read(op)
        if row is None:
            if version is None and known is not None:
                self._listener.publish([Change.of_delete(run_id)])
            return  # deleted: its own notice says so
        current, status, completed_at, doc, trace_length, updated_at = row[:6]
        summary: str | None = None
        if wants_summary and self._summarized.get(run_id, 0) < current:
            summary = render_summary(
                doc, trace_length, current, updated_at, live_lease_json(run_id, *row[6:])
            )
            self._summarized[run_id] = current
            self._summarized.move_to_end(run_id)
            while len(self._summarized) > SUMMARIZED_KEPT:
                self._summarized.popitem(last=False)
        changes: list[Change] = []
        if known is not None and current > known:
            changes = await self._changes_after(run_id, known, events)
        finished = completed_at is not None
        if changes and changes[-1].version == current:
            last = changes[-1]
            changes[-1] = Change.ready(
                run_id, last.version, last.kind, status, last.finished, last.data, summary
            )
        elif summary is not None:
            # For the watchers of all runs only (the run's own are told by the changes).
            changes.append(Change.ready(run_id, current, "patch", status, finished, b"", summary))
        if changes:
            self._listener.publish(changes)

    async def _changes_after(self, run_id: str, known: int, events: list[TupleRow]) -> list[Change]:
        """Patches from ``known`` on, or the whole run when they do not follow on from it."""
        changes: list[Change] = []
        expected = known + 1
        for version, kind, finished, data in events:
            if version != expected or kind != "patch":
                break
            changes.append(
                Change.ready(run_id, version, "patch", "", finished, data.encode(), None)
            )
            expected += 1
        else:
            if changes:
                return changes
        # A PUT, or rows that no longer reach back to ``known``: the run as it is now.
        stored = await self._get_run(run_id)
        if stored is not None and stored.version >= expected:
            changes.append(
                Change.ready(
                    run_id, stored.version, "run", "", is_finished(stored.body), stored.body, None
                )
            )
        return changes
