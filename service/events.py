"""The event broker: who watches which run, and handing them the changes of committed writes.

The store tells the broker every committed write (:class:`~.store.changes.Change`), on the event
loop: the SQLite writer thread through ``loop.call_soon_threadsafe``, once per group commit; the
PostgreSQL store after its own commits and for the other replicas' writes it hears of. The
broker puts each change in the queue of every watcher of that run, and of every watcher of all
runs (``GET /events``) whose status filter it passes.

Watchers never slow writers: :meth:`EventBroker.publish` never awaits and never blocks. Each
watcher's queue is bounded; a watcher whose queue is full has it emptied and marked for a
resync (its stream then sends the whole run again, or, for ``GET /events``, says it skipped
some). A stream's watcher is removed when the stream ends for any reason, a client that went
away included (``api.events``). :meth:`EventBroker.close` ends every stream: the server calls it
when it is asked to stop, so that open streams do not hold up its shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from runstore.client.problems import StoreUnavailable

from .store.base import StoredRun
from .store.changes import Change

__all__ = ["EventBroker", "Watcher"]

log = logging.getLogger("runstore.events")

DEFAULT_QUEUE_LIMIT: Final = 1000
# Streams are woken together, at most once per interval, and the interval grows with their
# number: waking a stream and sending what it has queued costs the event loop some tens of
# microseconds, so 1,000 streams woken at every write would leave the writers little of it.
# This keeps the streams' share of the loop near STREAMS_SHARE of it whatever the write rate; a
# stream then sends several changes at once (bench/events.py measures both sides).
WAKE_COST: Final = 100e-6
STREAMS_SHARE: Final = 0.1
MAX_WAKE_INTERVAL: Final = 0.5
WAKE_CHUNK: Final = 32


class Watcher:
    """One event stream's queue of changes."""

    __slots__ = ("_wakeup", "closed", "limit", "pending", "resync", "resync_after", "statuses")

    def __init__(self, limit: int, statuses: frozenset[str] = frozenset()) -> None:
        self.limit = limit
        # For a watcher of all runs: the statuses it follows (empty: every status).
        self.statuses = statuses
        self.pending: deque[Change] = deque()
        # Set when changes were dropped because the queue was full; a read of the run that
        # started after publication number ``resync_after`` holds them all.
        self.resync = False
        self.resync_after = 0
        self.closed = False
        self._wakeup = asyncio.Event()

    def offer(self, change: Change, publication: int) -> None:
        """Queue ``change`` of publication number ``publication`` (the broker wakes the stream
        later, :meth:`wake`); a full queue is emptied and the watcher marked for a resync."""
        if len(self.pending) >= self.limit:
            self.pending.clear()
            self.resync = True
            self.resync_after = publication
        else:
            self.pending.append(change)

    def wake(self) -> None:
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    async def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a change, a resync or the end; False if none came."""
        if not (self.pending or self.resync or self.closed):
            self._wakeup.clear()
            try:
                async with asyncio.timeout(seconds):
                    await self._wakeup.wait()
            except TimeoutError:
                return False
        return True

    def take(self) -> tuple[list[Change], bool]:
        """The queued changes, and whether a resync is due; both are then cleared."""
        changes = list(self.pending)
        self.pending.clear()
        resync, self.resync = self.resync, False
        return changes, resync


class _RunWatchers:
    """The watchers of one run, and the newest version of it this replica has seen."""

    __slots__ = ("version", "watchers")

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.version = 0


class EventBroker:
    """Watchers by run, and of all runs; see the module docstring."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.queue_limit = queue_limit
        self._runs: dict[str, _RunWatchers] = {}
        self._all: set[Watcher] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        # Watchers with something queued, woken by the next _wake_all.
        self._due: set[Watcher] = set()
        self._wake_scheduled = False
        self._last_wake = 0.0
        # Publications so far, and the reads of runs for resyncs in flight, with the number
        # of publications made when each started: one read serves every stream of the run
        # that overflowed before it started.
        self._publications = 0
        # Open watchers, kept as a number: the metrics read it, from any thread.
        self._watchers = 0
        self._resync_reads: dict[str, tuple[int, asyncio.Future[StoredRun | None]]] = {}

    # What the store calls.

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop :meth:`publish_threadsafe` hands changes to."""
        self._loop = loop
        self.closed = False

    def publish(self, changes: Iterable[Change]) -> None:
        """Queue each change for its watchers (on the event loop; never waits)."""
        self._publications += 1
        publication = self._publications
        for change in changes:
            group = self._runs.get(change.run_id)
            if group is not None:
                if change.kind == "deleted":
                    group.version = 0
                elif change.version > group.version:
                    group.version = change.version
                for watcher in group.watchers:
                    watcher.offer(change, publication)
                self._due.update(group.watchers)
            if self._all and (change.kind == "deleted" or change.summary is not None):
                for watcher in self._all:
                    if (
                        not watcher.statuses
                        or change.kind == "deleted"
                        or change.status in watcher.statuses
                    ):
                        watcher.offer(change, publication)
                        self._due.add(watcher)
        if self._due and not self._wake_scheduled:
            self._schedule_wake()

    async def resync_read(
        self, run_id: str, after: int, read: Callable[[str], Awaitable[StoredRun | None]]
    ) -> StoredRun | None:
        """The run read by ``read`` at a moment after publication ``after``, shared by the
        streams that resync together (1,000 watchers of a run overflow at once)."""
        entry = self._resync_reads.get(run_id)
        if entry is None or entry[0] < after:
            future = asyncio.ensure_future(read(run_id))
            entry = self._resync_reads[run_id] = (self._publications, future)

            def forget(_: object, run_id: str = run_id, entry: Any = entry) -> None:
                if self._resync_reads.get(run_id) is entry:
                    del self._resync_reads[run_id]

            future.add_done_callback(forget)
        return await asyncio.shield(entry[1])

    def _schedule_wake(self) -> None:
        loop = asyncio.get_running_loop()
        interval = min(MAX_WAKE_INTERVAL, self.watcher_count * WAKE_COST / STREAMS_SHARE)
        delay = self._last_wake + interval - loop.time()
        self._wake_scheduled = True
        if delay <= 0:
            loop.call_soon(self._wake_all)
        else:
            loop.call_later(delay, self._wake_all)

    def _wake_all(self) -> None:
        self._wake_scheduled = False
        self._last_wake = asyncio.get_running_loop().time()
        due, self._due = list(self._due), set()
        self._wake_some(due, 0)

    def _wake_some(self, due: list[Watcher], start: int) -> None:
        # A few streams per turn of the loop: the loop reads sockets between turns, so
        # requests go on being served while 1,000 streams send.
        for watcher in due[start : start + WAKE_CHUNK]:
            watcher.wake()
        if start + WAKE_CHUNK < len(due):
            asyncio.get_running_loop().call_soon(self._wake_some, due, start + WAKE_CHUNK)

    def publish_threadsafe(self, changes: list[Change]) -> None:
        """:meth:`publish` from another thread (the SQLite writer): one wake-up of the loop per
        call. Changes of a commit made while no loop is bound are nobody's to hear."""
        loop = self._loop
        if loop is None or (not self._runs and not self._all):
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is left to tell
            loop.call_soon_threadsafe(self.publish, changes)

    def watching(self, run_id: str) -> bool:
        """Whether anyone here follows ``run_id`` (or every run)."""
        return bool(self._all) or run_id in self._runs

    def known_version(self, run_id: str) -> int | None:
        """The newest version of ``run_id`` handed to its watchers (0: none yet); None when
        nobody here follows the run itself."""
        group = self._runs.get(run_id)
        return None if group is None else group.version

    @property
    def following_all(self) -> bool:
        return bool(self._all)

    def watched_runs(self) -> list[str]:
        return list(self._runs)

    def saw(self, run_id: str, version: int) -> None:
        """A stream of ``run_id`` read it at ``version``: its watchers have that much."""
        group = self._runs.get(run_id)
        if group is not None and version > group.version:
            group.version = version

    # What the streams call.

    @contextmanager
    def watch_run(self, run_id: str) -> Iterator[Watcher]:
        """A watcher of ``run_id`` for the ``with`` block."""
        watcher = self._new_watcher()
        group = self._runs.get(run_id)
        if group is None:
            group = self._runs[run_id] = _RunWatchers()
        group.watchers.add(watcher)
        self._watchers += 1
        try:
            yield watcher
        finally:
            self._watchers -= 1
            watcher.close()
            self._due.discard(watcher)
            group.watchers.discard(watcher)
            if not group.watchers and self._runs.get(run_id) is group:
                del self._runs[run_id]

    @contextmanager
    def watch_all(self, statuses: Iterable[str] = ()) -> Iterator[Watcher]:
        """A watcher of every run (of these statuses, if any) for the ``with`` block."""
        watcher = self._new_watcher(frozenset(statuses))
        self._all.add(watcher)
        self._watchers += 1
        try:
            yield watcher
        finally:
            self._watchers -= 1
            watcher.close()
            self._due.discard(watcher)
            self._all.discard(watcher)

    def _new_watcher(self, statuses: frozenset[str] = frozenset()) -> Watcher:
        if self.closed:
            raise StoreUnavailable("The server is shutting down; follow the run elsewhere.")
        return Watcher(self.queue_limit, statuses)

    @property
    def watcher_count(self) -> int:
        """Open watchers: one per open event stream."""
        return self._watchers

    def close_threadsafe(self) -> None:
        """:meth:`close` from a signal handler or another thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.closed = True
            return
        loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """End every stream (each sends what it has queued first) and refuse new ones."""
        self.closed = True
        for group in self._runs.values():
            for watcher in group.watchers:
                watcher.close()
        for watcher in self._all:
            watcher.close()
