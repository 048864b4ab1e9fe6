"""Group commit for the PostgreSQL backend: a replica's concurrent writes in one transaction.

Writes that reach a replica together wait in one queue; a writer task takes what is waiting
(up to :data:`MAX_GROUP` writes) and applies it as one transaction
(:func:`.postgres_writes.apply_group`), so one COMMIT and one WAL flush serve the whole group,
and the next group gathers while this one commits. Each write is answered only after its
group's transaction committed, in :meth:`WriteGroups._answer`, the one place that sees every
accepted change after commit. A write its own rules refuse is answered with its refusal alone.
A group the database refuses is applied again one write per transaction (by ``apply``, the
store's), so only the writes that fail alone fail; a group that cannot be committed (the
database unreachable past the deadline) answers every write of it with the same error (a 503).

The queue is asyncio's; the grouping mirrors the SQLite writer thread's (:mod:`.sqlite_writer`),
and so do the spans of writes and commits when a ``tracer`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from runstore.client.problems import StoreUnavailable

from .base import CommitObserver, Lease, WriteResult
from .postgres_writes import Outcome, Write
from .spans import commit_span

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, Tracer

__all__ = ["GROUP_WRITERS", "MAX_GROUP", "WriteGroups"]

# One group in flight: the next gathers while it locks and commits, so it is as large as the
# writes that arrived meanwhile. On two shared cores a second writer task made the groups half
# as large and each write cost the database about a quarter more CPU (bench/http_load.py,
# docs/performance.md); a group takes two round trips, so one writer still keeps up with
# thousands of writes per second when the database is on another machine.
GROUP_WRITERS: Final = 1
# Enough to fill a WAL flush; a group's statements are queued in one pipeline.
MAX_GROUP: Final = 64

ApplyGroup = Callable[[Sequence[Write]], Awaitable[list[Outcome]]]
# The write, where its outcome goes, and its span's context (None: not traced).
_Pending = tuple[Write, "asyncio.Future[WriteResult | Lease | None]", "SpanContext | None"]


class WriteGroups:
    """Collects concurrent writes into groups and applies each with ``apply`` (which runs one
    transaction, with the store's retries, and returns each write's outcome)."""

    def __init__(self, apply: ApplyGroup, *, writers: int = GROUP_WRITERS) -> None:
        self._apply = apply
        # Told of each group that committed (the server's metrics).
        self.observer: CommitObserver | None = None
        self.tracer: Tracer | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"runstore-pg-writer-{n}") for n in range(writers)
        ]

    async def submit(self, write: Write) -> WriteResult | Lease | None:
        """Apply ``write`` in the next group; its result once that group committed."""
        if not self._tasks:
            raise StoreUnavailable("The store is not open.")
        future: asyncio.Future[WriteResult | Lease | None] = (
            asyncio.get_running_loop().create_future()
        )
        tracer = self.tracer
        if tracer is None:
            self._queue.put_nowait((write, future, None))
            return await future
        attributes = {"runstore.write": type(write).__name__}
        with tracer.start_as_current_span("runstore.store.write", attributes=attributes) as span:
            self._queue.put_nowait((write, future, span.get_span_context()))
            return await future

    @property
    def queued(self) -> int:
        """Writes waiting for a group."""
        return self._queue.qsize()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            if not future.done():
                future.set_exception(StoreUnavailable("The store closed."))

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            # A write whose request went away before its group began is not applied.
            group = [pending for pending in group if not pending[1].done()]
            if not group:
                continue
            started = time.perf_counter()
            started_ns = time.time_ns()
            try:
                outcomes = await self._apply([write for write, _, _ in group])
            except asyncio.CancelledError:
                for _, future, _ in group:
                    if not future.done():
                        future.set_exception(StoreUnavailable("The store closed."))
                raise
            except Exception as exc:  # every write of a group that did not commit shares it
                for _, future, _ in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.observer is not None:
                self.observer.committed(time.perf_counter() - started, len(group), [])
            if self.tracer is not None:
                commit_span(self.tracer, [context for _, _, context in group], started_ns)
            self._answer(group, outcomes)

    @staticmethod
    def _answer(group: list[_Pending], outcomes: list[Outcome]) -> None:
        """After commit, for each write of the group: its result or its refusal."""
        for (_, future, _), outcome in zip(group, outcomes, strict=True):
            if future.done():  # its request went away; the write stands
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
