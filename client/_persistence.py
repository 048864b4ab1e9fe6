# Generated from client/_async_persistence.py by scripts/generate_sync.py: edit that file and run
# `make sync-clients`; tests/client/test_sync_generated.py keeps this file current.

"""The persistence hooks agent frameworks call, sending only what is new.

:class:`Persistence` and :class:`AsyncPersistence` name the shape (the framework's
``IPersistence``): ``on_run_start``, ``on_step_complete``, ``on_run_complete``, ``load_run`` and
``close``. :class:`RunPersistence` and :class:`AsyncRunPersistence` implement it over any store
that can take a :class:`~._wire.Write` and read a run back: the HTTP clients and the embedded
store. The :class:`~._ledger.RunLedger` works out each write; this module sends it and handles
the answers that mean the store holds less than this process thought (404, trace gap), by
sending the run whole.

The awaited hooks are written in ``_async_persistence.py``; the blocking ones in
``_persistence.py`` are generated from it by ``scripts/generate_sync.py`` (why: the docstring of
:mod:`._async_client`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._concurrency import Close, ReadRun, SendWrite
from ._ledger import DEFAULT_CAPACITY, RunLedger
from ._wire import SnapshotLike, run_path, view_of
from .models import RunSnapshot
from .problems import RunNotFound, RunStoreError, StoreUnavailable, TraceGap

__all__ = ["Persistence", "RunPersistence"]


@runtime_checkable
class Persistence(Protocol):
    """What an agent framework calls to save runs as they go and to load one to resume it:
    :class:`Persistence` blocks, :class:`AsyncPersistence` is awaited.

    A snapshot is a :class:`RunSnapshot` or a mapping in the camelCase wire shape, and is the
    whole run each time; the implementation decides what to send.
    """

    def on_run_start(self, snapshot: SnapshotLike) -> None:
        """The run has started."""

    def on_step_complete(self, snapshot: SnapshotLike) -> None:
        """A step has completed; ``snapshot.trace`` ends with it."""

    def on_run_complete(self, snapshot: SnapshotLike) -> None:
        """The run has ended (completed, failed or cancelled)."""

    def load_run(self, run_id: str) -> RunSnapshot | None:
        """The stored run, to resume it, or None."""

    def close(self) -> None:
        """Release what the hooks hold."""


def _refused(error: RunStoreError) -> bool:
    # After "not now" the ledger still holds what the store confirmed, so the next hook sends
    # everything since (appends are idempotent). After a refusal, what is stored is unknown.
    return not isinstance(error, StoreUnavailable)


class RunPersistence:
    """The hooks over one store: :class:`RunPersistence` blocks (made by
    :meth:`RunStoreClient.persistence` and by :func:`embedded_persistence`),
    :class:`AsyncRunPersistence` is awaited (made by :meth:`AsyncRunStoreClient.persistence`).

    ``on_run_start`` sends the whole snapshot unless the run is known here (after ``load_run``);
    ``on_step_complete`` and ``on_run_complete`` send a PATCH of the new steps, the new history
    turns and the changed fields. Errors are the client's typed errors. Calls for one run must
    come one at a time; different runs may be saved from different threads or tasks.
    """

    def __init__(
        self,
        send: SendWrite,
        read: ReadRun,
        *,
        close: Close | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self._send = send
        self._read = read
        self._close = close
        self._ledger = RunLedger(capacity)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def on_run_start(self, snapshot: SnapshotLike) -> None:
        """Store the run as it starts."""
        self._save(snapshot, final=False)

    def on_step_complete(self, snapshot: SnapshotLike) -> None:
        """Send the new steps, turns and changed fields."""
        self._save(snapshot, final=False)

    def on_run_complete(self, snapshot: SnapshotLike) -> None:
        """Send what is new, after checking every step and turn sent before (once per run)."""
        self._save(snapshot, final=True)

    def load_run(self, run_id: str) -> RunSnapshot | None:
        """The stored run, or None; later hooks for it continue with deltas."""
        run_path(run_id)
        stored = self._read(run_id)
        if stored is None:
            self._ledger.forget(run_id)
            return None
        self._ledger.learn(stored.wire, stored.version)
        return stored.snapshot()

    def close(self) -> None:
        """Forget every run, and close the store or client these hooks own; idempotent."""
        self._ledger.clear()
        close, self._close = self._close, None
        if close is not None:
            close()

    def _save(self, snapshot: SnapshotLike, *, final: bool) -> None:
        view = view_of(snapshot)
        write = self._ledger.plan(view, check_all=final)
        if write is not None:
            try:
                try:
                    ack = self._send(write)
                except (RunNotFound, TraceGap):
                    if write.whole:
                        raise
                    write = self._ledger.whole(view)
                    ack = self._send(write)
            except RunStoreError as error:
                if _refused(error):
                    self._ledger.forget(view.run_id)
                raise
            self._ledger.confirm(write, ack)
        if final:
            self._ledger.forget(view.run_id)
