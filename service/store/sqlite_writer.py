"""The one thread that writes to a SQLite database, committing queued writes in groups.

Every write is a function of the write connection, queued with a place to put its outcome. The
thread takes whatever is queued, runs it all inside one ``BEGIN IMMEDIATE ... COMMIT`` (each
write in a savepoint of its own, so one refused write does not undo its neighbours), and hands
each outcome back only after the commit, which with ``synchronous=FULL`` means after the fsync.
Writes that arrive while a commit is on disk share the next one: group commit.

An op that changes runs returns a :class:`~.changes.Committed`; once the transaction has
committed, the thread hands the group's changes, in commit order, to ``on_commit`` (the server's
event broker), before it answers the writers; and tells ``observer`` (the server's metrics)
how long the commit took, how many writes it held and what it changed in the runs' tally.

With a ``tracer`` (OpenTelemetry; the server sets one when ``RUNSTORE_TELEMETRY`` is on), each
asynchronous write is a span, ``runstore.store.write``, from its queueing to its answer, and each
commit a span, ``runstore.store.commit``: a child of its first write's span, linked from the
others' (a commit serves many requests; a span has one parent).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final

from runstore.client.problems import RunStoreError, StoreUnavailable

from .base import CommitObserver
from .spans import commit_span

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, Tracer

from .changes import Change, Committed
from .tally import TallyDelta

__all__ = ["WriteOp", "WriterThread", "storage_error"]

log = logging.getLogger("runstore.sqlite")

WriteOp = Callable[[sqlite3.Connection], Any]
# An outcome goes to a concurrent Future (threads) or to an asyncio Future on its loop.
_Sink = Future[Any] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
# The op, where its outcome goes, and the span context of its write (None: not traced).
_Item = tuple[WriteOp, _Sink, "SpanContext | None"]
_Outcome = tuple[_Sink, Any, BaseException | None]
_Batch = tuple[list[_Outcome], list[Change], list[TallyDelta]]

_STOP: Final = object()
MAX_BATCH: Final = 256


def storage_error(exc: sqlite3.Error) -> StoreUnavailable:
    """A StoreUnavailable that says what SQLite said."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return StoreUnavailable(f"The database cannot take this operation now ({name}: {exc}).")


class WriterThread(threading.Thread):
    """Owns the write connection; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        name: str,
        *,
        checkpoint_at_close: bool = True,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._connect = connect
        # False when a replicator (Litestream) owns checkpoints: one it did not make costs it
        # a fresh snapshot.
        self._checkpoint_at_close = checkpoint_at_close
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._stopping = False
        # Told the changes of each commit, on this thread, before the writers are answered.
        self.on_commit: Callable[[list[Change]], None] | None = None
        self.observer: CommitObserver | None = None
        self.tracer: Tracer | None = None

    def start_and_wait(self) -> None:
        """Start the thread and wait until its connection is open (re-raising a failure)."""
        self.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    @property
    def queued(self) -> int:
        """Writes waiting for the next commit (approximate, as any queue's size)."""
        return self._queue.qsize()

    def write(self, op: WriteOp) -> Any:
        """Queue ``op`` and block until it is committed; returns its result or raises."""
        future: Future[Any] = Future()
        self._put((op, future, None))
        return future.result()

    async def write_async(self, op: WriteOp) -> Any:
        """Queue ``op`` and wait, without blocking the loop, until it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        tracer = self.tracer
        if tracer is None:
            self._put((op, (loop, future), None))
            return await future
        name = getattr(op, "func", op)  # a partial's function
        attributes = {"runstore.write": getattr(name, "__name__", type(name).__name__)}
        with tracer.start_as_current_span("runstore.store.write", attributes=attributes) as span:
            self._put((op, (loop, future), span.get_span_context()))
            return await future

    def _put(self, item: _Item) -> None:
        if self._closed:
            raise StoreUnavailable("The store is shutting down.")
        self._queue.put(item)

    def close(self) -> None:
        """Commit what is queued, checkpoint, close the connection; safe to call twice."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self.is_alive():
            self._queue.put(_STOP)
            self.join()

    def run(self) -> None:
        try:
            connection = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._serve(connection)
        finally:
            try:
                if self._checkpoint_at_close:
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("checkpoint at close failed: %s", exc)
            connection.close()

    def _serve(self, connection: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            self._stopping = False
            # The observer as the transaction began: the one that sets it is not its own.
            observer = self.observer
            started = time.perf_counter()
            started_ns = time.time_ns()
            batch: list[_Item] = [first]  # type: ignore[list-item]
            outcomes, changes, tallies = self._commit(connection, batch)
            if observer is not None:
                observer.committed(time.perf_counter() - started, len(batch), tallies)
            if self.tracer is not None:
                commit_span(self.tracer, [item[2] for item in batch], started_ns)
            on_commit = self.on_commit
            if changes and on_commit is not None:
                try:
                    on_commit(changes)
                except Exception:  # a watcher's trouble is never a writer's
                    log.exception("publishing %d changes failed", len(changes))
            _deliver(outcomes)
            if self._stopping:
                return

    def _take_queued(self, batch: list[_Item]) -> None:
        """Add what is queued now to ``batch`` (up to MAX_BATCH); a stop ends the taking."""
        # This thread alone takes from the queue, so what empty() denies is there to take
        # (and no queue.Empty is raised at every commit).
        while len(batch) < MAX_BATCH and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP:
                self._stopping = True
                return
            batch.append(item)  # type: ignore[arg-type]

    def _commit(self, connection: sqlite3.Connection, batch: list[_Item]) -> _Batch:
        try:
            return _run_batch(connection, batch, self._take_queued)
        except (sqlite3.Error, _OpFailed) as exc:
            _rollback(connection)
            if len(batch) == 1:
                return [(batch[0][1], None, _failure(exc))], [], []
            # One write's failure may have undone the whole transaction; give every write its
            # own so that the others are judged on their own.
            log.warning(
                "group commit of %d writes failed (%s); retrying one by one", len(batch), exc
            )
            outcomes: list[_Outcome] = []
            changes: list[Change] = []
            tallies: list[TallyDelta] = []
            for item in batch:
                try:
                    single, single_changes, single_tallies = _run_batch(connection, [item])
                except (sqlite3.Error, _OpFailed) as single_exc:
                    _rollback(connection)
                    outcomes.append((item[1], None, _failure(single_exc)))
                else:
                    outcomes += single
                    changes += single_changes
                    tallies += single_tallies
            return outcomes, changes, tallies


def _failure(exc: Exception) -> BaseException:
    if isinstance(exc, _OpFailed):
        cause = exc.__cause__
        log.error("a write failed", exc_info=cause)
        return cause if cause is not None else exc
    assert isinstance(exc, sqlite3.Error)
    return storage_error(exc)


class _OpFailed(Exception):
    """An op raised something other than a RunStoreError, possibly after writing: undo the batch."""


def _run_batch(
    connection: sqlite3.Connection,
    batch: list[_Item],
    take_queued: Callable[[list[_Item]], None] | None = None,
) -> _Batch:
    # Ops check everything before they write (a RunStoreError leaves nothing behind), so the
    # batch needs no savepoint per op. Consecutive ops whose class has the same ``group``
    # function are handed to it together, to be applied with as few statements as it can.
    outcomes: list[_Outcome] = []
    changes: list[Change] = []
    tallies: list[TallyDelta] = []
    connection.execute("BEGIN IMMEDIATE")
    if take_queued is not None:
        # Taken only now: the event loop went on queueing writes while BEGIN waited for the
        # lock (and, first, while this thread waited for the GIL), so the group is larger.
        take_queued(batch)
    start = 0
    while start < len(batch):
        op = batch[start][0]
        group = getattr(type(op), "group", None)
        end = start + 1
        if group is not None:
            while end < len(batch) and getattr(type(batch[end][0]), "group", None) is group:
                end += 1
        try:
            if group is None:
                results = [_outcome_of(op, connection)]
            else:
                results = group(connection, [item[0] for item in batch[start:end]])
        except sqlite3.Error:
            raise
        except Exception as exc:
            raise _OpFailed() from exc
        for (_, sink, _), result in zip(batch[start:end], results, strict=True):
            if isinstance(result, RunStoreError):
                outcomes.append((sink, None, result))
            elif isinstance(result, Committed):
                outcomes.append((sink, result.result, None))
                changes += result.changes
                if result.tally is not None:
                    tallies.append(result.tally)
            else:
                outcomes.append((sink, result, None))
        start = end
    connection.execute("COMMIT")
    return outcomes, changes, tallies


def _outcome_of(op: WriteOp, connection: sqlite3.Connection) -> Any:
    try:
        return op(connection)
    except RunStoreError as exc:
        return exc


def _rollback(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("rollback failed: %s", exc)


def _deliver(outcomes: list[_Outcome]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        sink = outcome[0]
        if isinstance(sink, Future):
            _settle(sink, outcome[1], outcome[2])
        else:
            by_loop.setdefault(sink[0], []).append(outcome)
    for loop, items in by_loop.items():
        try:
            # One wake-up of each loop per batch, not one per write.
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:
            log.warning("an event loop closed before %d writes were answered", len(items))


def _settle_all(items: list[_Outcome]) -> None:
    for sink, result, error in items:
        assert not isinstance(sink, Future)
        _settle(sink[1], result, error)


def _settle(
    future: Future[Any] | asyncio.Future[Any], result: Any, error: BaseException | None
) -> None:
    if future.done():  # an asyncio waiter that was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
