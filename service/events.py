"""The event broker: who watches which run, and handing them the changes of committed writes.

The store tells the broker every committed write (:class:`~.store.changes.Change`), on the event
loop: the SQLite writer thread through ``loop.call_soon_threadsafe``, once per group commit; the
PostgreSQL store after its own commits and for the other replicas' writes it hears of.

**Feeds.** Each watched run has a :class:`Feed`: its recent changes in version order, each with
its server-sent event made once; ``GET /events`` has one feed of every run's summaries. A
watcher is a position in its feed. Publishing appends to the feed, whatever the number of
watchers, and schedules a hand-out, which gives each watcher what lies past its position, made
once per distinct position (usually one: every watcher is caught up). A feed keeps its last
``queue_limit`` changes and drops what every watcher has been given.

**Two ways to serve a watcher.** When the server offers the connection's writer (the ASGI
extension :data:`DIRECT_WRITER`, :class:`~.connections.DirectBody`) and the stream's task has
handed its watcher over (:meth:`EventBroker.attach`), the hand-out writes the bytes to the
connection itself: a change reaches 1,000 streams without waking 1,000 tasks (issue 13). In
every other case the stream's task takes the bytes (:meth:`EventBroker.take`) and sends them
through ASGI ``send``, which waits for a slow connection to drain: a server without the
extension (tests in process), and any watcher the hand-out lets go of: its connection is not
taking what was written (the server paused writing to it), it must resync, or its stream ends.
Only one of the two writes to a watcher's connection at a time, so its events stay in order.

**Watchers never slow writers.** :meth:`EventBroker.publish` never awaits. A watcher whose
position fell off its feed (more than ``queue_limit`` changes behind) is resynced: its stream
sends the whole run again (one read shared by the streams of the run that resync together) or,
for ``GET /events``, says it skipped some. Hand-outs go in slices of a few watchers with a
pause between them, so a request arriving meanwhile waits for one slice, not for a thousand
writes; and the next hand-out waits long enough to keep the streams' share of the loop's CPU
time near ``STREAMS_SHARE``, by the time the last one took (delivery latency grows with the
number of watchers instead).

A stream's watcher is removed when the stream ends for any reason, a client that went away
included (``api.events``). :meth:`EventBroker.close` ends every stream: the server calls it when
it is asked to stop, so that open streams do not hold up its shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from time import monotonic, thread_time
from typing import Final

from runstore.client.problems import StoreUnavailable

from .feeds import DIRECT_WRITER, DirectWriter, Feed, Watcher, sse_frame
from .store.base import StoredRun
from .store.changes import Change

__all__ = ["DIRECT_WRITER", "DirectWriter", "EventBroker", "Feed", "Watcher", "sse_frame"]

log = logging.getLogger("runstore.events")

DEFAULT_QUEUE_LIMIT: Final = 1000
# The share of the loop's thread's CPU time hand-outs may take when changes come faster than
# they go out. A write to a connection costs the kernel some microseconds, so a change handed
# to 1,000 streams costs milliseconds: more share, fresher events, slower writes (issue 13,
# docs/performance.md).
STREAMS_SHARE: Final = 0.1
# Watchers written to per slice, and the pause between slices: a request that arrives during a
# hand-out waits for one slice, not for 1,000 writes; and in the pause the loop sleeps, so
# the SQLite writer thread, which needs the GIL to commit, need not wait for it.
HAND_OUT_SLICE: Final = 32
HAND_OUT_PAUSE: Final = 0.001


class EventBroker:
    """Feeds by run, and of all runs; see the module docstring."""

    def __init__(self, queue_limit: int = DEFAULT_QUEUE_LIMIT) -> None:
        self.queue_limit = queue_limit
        self._runs: dict[str, Feed] = {}
        self._all = Feed(queue_limit, ends_streams=False)
        self._event_ids = itertools.count(1)  # GET /events' ids: opaque, rising
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        # Feeds with entries not yet handed out, and the state of hand-outs.
        self._due: set[Feed] = set()
        self._hand_out_scheduled = False
        self._handing_out = False
        self._next_hand_out = 0.0
        # Open watchers, kept as a number: the metrics read it, from any thread.
        self._watchers = 0
        # Reads of runs for resyncs in flight, with the feed's end when each began.
        self._resync_reads: dict[str, tuple[int, asyncio.Future[StoredRun | None]]] = {}

    # What the store calls.

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop :meth:`publish_threadsafe` hands changes to."""
        self._loop = loop
        self.closed = False

    def publish(self, changes: Iterable[Change]) -> None:
        """Append each change to its feeds (on the event loop; never waits)."""
        everything = self._all
        for change in changes:
            feed = self._runs.get(change.run_id)
            if feed is not None:
                if change.kind == "deleted":
                    feed.version = feed.last_version = 0
                    feed.append(change, sse_frame("deleted", change.data))
                    self._due.add(feed)
                else:
                    feed.version = max(feed.version, change.version)
                    # A version already appended (a replica may hear of a write twice) is not.
                    if change.version > feed.last_version:
                        feed.last_version = change.version
                        feed.append(change, change.frame)
                        self._due.add(feed)
            if everything.watchers:
                if change.kind == "deleted":
                    everything.append(
                        change, sse_frame("deleted", change.data, next(self._event_ids))
                    )
                elif change.summary is not None:
                    summary = change.summary.encode()
                    everything.append(change, sse_frame("summary", summary, next(self._event_ids)))
                else:
                    continue
                self._due.add(everything)
        if self._due:
            self._schedule_hand_out()

    def publish_threadsafe(self, changes: list[Change]) -> None:
        """:meth:`publish` from another thread (the SQLite writer): one wake-up of the loop per
        call. Changes of a commit made while no loop is bound are nobody's to hear."""
        loop = self._loop
        if loop is None or (not self._runs and not self._all.watchers):
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is left to tell
            loop.call_soon_threadsafe(self.publish, changes)

    def watching(self, run_id: str) -> bool:
        """Whether anyone here follows ``run_id`` (or every run)."""
        return bool(self._all.watchers) or run_id in self._runs

    def known_version(self, run_id: str) -> int | None:
        """The newest version of ``run_id`` handed to its watchers (0: none yet); None when
        nobody here follows the run itself."""
        feed = self._runs.get(run_id)
        return None if feed is None else feed.version

    @property
    def following_all(self) -> bool:
        return bool(self._all.watchers)

    def watched_runs(self) -> list[str]:
        return list(self._runs)

    def saw(self, run_id: str, version: int) -> None:
        """A stream of ``run_id`` read it at ``version``: its watchers have that much."""
        feed = self._runs.get(run_id)
        if feed is not None and version > feed.version:
            feed.version = version

    # Hand-outs.

    def _schedule_hand_out(self) -> None:
        if self._hand_out_scheduled or self._handing_out:
            return  # the hand-out under way schedules the next when it is done
        loop = asyncio.get_running_loop()
        self._hand_out_scheduled = True
        delay = self._next_hand_out - loop.time()
        if delay <= 0:
            loop.call_soon(self._hand_out)
        else:
            loop.call_later(delay, self._hand_out)

    def _hand_out(self) -> None:
        self._hand_out_scheduled = False
        self._handing_out = True
        feeds, self._due = self._due, set()
        served = [(feed, watcher) for feed in feeds for watcher in feed.watchers]
        self._hand_out_slice(feeds, served, 0, 0.0)

    def _hand_out_slice(
        self,
        feeds: set[Feed],
        served: list[tuple[Feed, Watcher]],
        start: int,
        spent: float,
    ) -> None:
        # The thread's CPU time, not the clock's: time the process spent preempted by others
        # was not the loop's to give.
        began = thread_time()
        now = monotonic()
        for feed, watcher in served[start : start + HAND_OUT_SLICE]:
            self._serve(feed, watcher, now)
        spent += thread_time() - began
        start += HAND_OUT_SLICE
        loop = asyncio.get_running_loop()
        if start < len(served):
            loop.call_later(HAND_OUT_PAUSE, self._hand_out_slice, feeds, served, start, spent)
            return
        for feed in feeds:
            feed.trim()
        self._handing_out = False
        self._next_hand_out = loop.time() + spent * (1 - STREAMS_SHARE) / STREAMS_SHARE
        if self._due:
            self._schedule_hand_out()

    def _serve(
        self,
        feed: Feed,
        watcher: Watcher,
        now: float,
    ) -> None:
        """Write to ``watcher``'s connection what it lacks, or wake its task to."""
        if watcher.closed or watcher.position >= feed.end:
            return
        if not watcher.attached or watcher.direct is None:
            watcher.wake()
            return
        if watcher.position < feed.start:
            watcher.let_go()  # its task resyncs it (take)
            return
        batch = feed.since(watcher.position, watcher.statuses)
        if batch.body:
            if batch.encoded is None:
                batch.encoded = watcher.direct.encode(batch.body)
            if not watcher.direct.write(batch.encoded):
                watcher.let_go()  # the connection is not taking more: ASGI send waits for it
                return
            watcher.sent_at = now
        watcher.position = batch.after
        if batch.ends:
            watcher.ended = True
            watcher.let_go()

    # What the streams call.

    def take(self, watcher: Watcher) -> bytes:
        """What lies past the watcher's position, for its task to send (moving it on); empty
        when there is nothing, or when a resync is due (``watcher.resync`` is then set)."""
        feed = watcher.feed
        if watcher.position >= feed.end or watcher.ended:
            return b""
        if watcher.position < feed.start:
            watcher.resync = True
            watcher.resync_after = feed.end
            return b""
        batch = feed.since(watcher.position, watcher.statuses)
        watcher.position, watcher.ended = batch.after, batch.ends
        if batch.body:
            watcher.sent_at = monotonic()
        return batch.body

    def attach(self, watcher: Watcher) -> None:
        """The broker writes to the watcher's connection from now on, if the server offers a
        writer; call with nothing left to take and nothing being sent."""
        if watcher.direct is not None and not watcher.has_work():
            watcher.attached = True

    def skip_seen(self, watcher: Watcher, version: int) -> None:
        """Move past the changes a read of the run at ``version`` holds."""
        feed = watcher.feed
        if watcher.position < feed.start:
            return  # a resync is due anyway
        for change, _ in itertools.islice(feed.entries, watcher.position - feed.start, None):
            if change.kind == "deleted" or change.version > version:
                break
            watcher.position += 1

    def skip_all(self, watcher: Watcher) -> None:
        """Give up what the watcher missed: it moves to the end of its feed."""
        watcher.position = watcher.feed.end
        watcher.resync = False

    async def resync_read(
        self, watcher: Watcher, run_id: str, read: Callable[[str], Awaitable[StoredRun | None]]
    ) -> StoredRun | None:
        """The run, read by ``read`` late enough to hold what ``watcher`` missed; one read is
        shared by the streams that resync together (1,000 watchers of a run fall behind at
        once). The watcher's position moves to where the read began."""
        feed = watcher.feed
        entry = self._resync_reads.get(run_id)
        if entry is None or entry[0] < watcher.resync_after:
            future = asyncio.ensure_future(read(run_id))
            entry = self._resync_reads[run_id] = (feed.end, future)

            def forget(_: object, run_id: str = run_id, entry: tuple[int, object] = entry) -> None:
                if self._resync_reads.get(run_id) is entry:
                    del self._resync_reads[run_id]

            future.add_done_callback(forget)
        began_at, reading = entry
        stored = await asyncio.shield(reading)
        watcher.position = max(watcher.position, began_at)
        watcher.resync = False
        return stored

    @contextmanager
    def watch_run(self, run_id: str, direct: DirectWriter | None = None) -> Iterator[Watcher]:
        """A watcher of ``run_id`` for the ``with`` block, served through ``direct`` when
        given (once attached)."""
        self._refuse_if_closed()
        feed = self._runs.get(run_id)
        if feed is None:
            feed = self._runs[run_id] = Feed(self.queue_limit, ends_streams=True)
        try:
            with self._watching(feed, Watcher(feed, direct=direct)) as watcher:
                yield watcher
        finally:
            if not feed.watchers and self._runs.get(run_id) is feed:
                del self._runs[run_id]

    @contextmanager
    def watch_all(
        self, statuses: Iterable[str] = (), direct: DirectWriter | None = None
    ) -> Iterator[Watcher]:
        """A watcher of every run (of these statuses, if any) for the ``with`` block."""
        self._refuse_if_closed()
        try:
            with self._watching(self._all, Watcher(self._all, frozenset(statuses), direct)) as w:
                yield w
        finally:
            if not self._all.watchers:
                self._all.entries.clear()

    @contextmanager
    def _watching(self, feed: Feed, watcher: Watcher) -> Iterator[Watcher]:
        feed.watchers.add(watcher)
        self._watchers += 1
        try:
            yield watcher
        finally:
            self._watchers -= 1
            watcher.close()
            feed.watchers.discard(watcher)

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise StoreUnavailable("The server is shutting down; follow the run elsewhere.")

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
        """End every stream (each sends what it has been handed first) and refuse new ones."""
        self.closed = True
        for feed in [*self._runs.values(), self._all]:
            for watcher in feed.watchers:
                watcher.close()
