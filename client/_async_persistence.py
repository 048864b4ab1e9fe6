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

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._concurrency import (
    AsyncAcquireLease,
    AsyncClose,
    AsyncReadRun,
    AsyncReleaseLease,
    AsyncRenewer,
    AsyncSendWrite,
)
from ._ledger import DEFAULT_CAPACITY, RunLedger
from ._wire import SnapshotLike, run_path, view_of
from .models import MAX_TTL_MS, MIN_TTL_MS, ClaimedRun, Lease, RunSnapshot
from .problems import (
    LeaseHeld,
    LeaseLost,
    RunNotFound,
    RunStoreError,
    StoreUnavailable,
    TraceGap,
)

__all__ = ["AsyncPersistence", "AsyncRunPersistence"]


@runtime_checkable
class AsyncPersistence(Protocol):
    """What an agent framework calls to save runs as they go and to load one to resume it:
    :class:`Persistence` blocks, :class:`AsyncPersistence` is awaited.

    A snapshot is a :class:`RunSnapshot` or a mapping in the camelCase wire shape, and is the
    whole run each time; the implementation decides what to send.
    """

    async def on_run_start(self, snapshot: SnapshotLike) -> None:
        """The run has started."""

    async def on_step_complete(self, snapshot: SnapshotLike) -> None:
        """A step has completed; ``snapshot.trace`` ends with it."""

    async def on_run_complete(self, snapshot: SnapshotLike) -> None:
        """The run has ended (completed, failed or cancelled)."""

    async def load_run(self, run_id: str) -> RunSnapshot | None:
        """The stored run, to resume it, or None."""

    async def close(self) -> None:
        """Release what the hooks hold."""


def _refused(error: RunStoreError) -> bool:
    # After "not now" the ledger still holds what the store confirmed, so the next hook sends
    # everything since (appends are idempotent). After a refusal, what is stored is unknown.
    return not isinstance(error, StoreUnavailable)


@dataclass(slots=True)
class _HeldRun:
    """A run these hooks hold a lease on, its renewer, and why the lease was lost (if it was)."""

    lease: Lease
    renewer: AsyncRenewer | None = None
    lost: LeaseLost | None = None


def _lost(lease: Lease, error: RunStoreError) -> LeaseLost:
    if isinstance(error, LeaseLost):
        return error
    return LeaseLost(
        f"The lease {lease.lease} on run {lease.run_id!r} could not be renewed ({error.detail}); "
        "another worker owns the run now."
    )


class AsyncRunPersistence:
    """The hooks over one store: :class:`RunPersistence` blocks (made by
    :meth:`RunStoreClient.persistence` and by :func:`embedded_persistence`),
    :class:`AsyncRunPersistence` is awaited (made by :meth:`AsyncRunStoreClient.persistence`).

    ``on_run_start`` sends the whole snapshot unless the run is known here (after ``load_run``);
    ``on_step_complete`` and ``on_run_complete`` send a PATCH of the new steps, the new history
    turns and the changed fields. Errors are the client's typed errors. Calls for one run must
    come one at a time; different runs may be saved from different threads or tasks.

    With ``holder`` (leases): ``on_run_start`` also takes the run's lease (``lease_ttl``
    seconds), every write carries it, a renewer (a thread for the blocking hooks, an asyncio
    task for the awaited ones) renews it every third of the ttl while the run is open, and
    ``on_run_complete`` releases it after the final write. :meth:`resume` goes on with a run
    taken by a claim (or takes an existing run's lease). Once the lease is lost (another worker
    took the run over), the renewer stops and the next hook for that run raises
    :class:`LeaseLost`: stop working on it. :class:`LeaseHeld` says another holder owns a run
    being started or resumed. ``close()`` stops the renewers without releasing: a closed
    worker's runs become claimable when their leases expire.
    """

    def __init__(
        self,
        send: AsyncSendWrite,
        read: AsyncReadRun,
        *,
        close: AsyncClose | None = None,
        capacity: int = DEFAULT_CAPACITY,
        holder: str | None = None,
        lease_ttl: float = 30.0,
        acquire_lease: AsyncAcquireLease | None = None,
        release_lease: AsyncReleaseLease | None = None,
    ) -> None:
        self._send = send
        self._read = read
        self._close = close
        self._ledger = RunLedger(capacity)
        if holder is not None and (acquire_lease is None or release_lease is None):
            raise ValueError("holder needs a store that takes leases")
        ttl_ms = round(lease_ttl * 1000)
        if not MIN_TTL_MS <= ttl_ms <= MAX_TTL_MS:
            raise ValueError(f"lease_ttl must be 1 to 3600 seconds, not {lease_ttl}")
        self.holder = holder
        self._ttl_ms = ttl_ms
        self._acquire = acquire_lease
        self._release = release_lease
        self._held: dict[str, _HeldRun] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def on_run_start(self, snapshot: SnapshotLike) -> None:
        """Store the run as it starts (and, with a holder, take its lease)."""
        view = view_of(snapshot)
        await self._save(snapshot, final=False)
        if self.holder is not None and view.run_id not in self._held:
            await self._hold(await self._take(view.run_id, None))

    async def on_step_complete(self, snapshot: SnapshotLike) -> None:
        """Send the new steps, turns and changed fields."""
        await self._save(snapshot, final=False)

    async def on_run_complete(self, snapshot: SnapshotLike) -> None:
        """Send what is new, after checking every step and turn sent before (once per run);
        then release the run's lease, if these hooks hold one."""
        run_id = view_of(snapshot).run_id
        try:
            await self._save(snapshot, final=True)
        finally:
            held = self._held.pop(run_id, None)
            if held is not None and held.renewer is not None:
                await held.renewer.stop()
        if held is not None and held.lost is None and self._release is not None:
            await self._release(run_id, held.lease.lease)

    async def resume(self, claimed: ClaimedRun | str) -> RunSnapshot:
        """Go on with a run under a lease: one a claim took (``client.claim(...)``), or, given
        a run id, the stored run, whose lease is taken first (LeaseHeld if another holder has
        it; RunNotFound). Later hooks for it send deltas under the lease."""
        if self.holder is None:
            raise ValueError("resume needs hooks made with a holder")
        if isinstance(claimed, str):
            lease = await self._take(claimed, None)
            snapshot = await self.load_run(claimed)
            if snapshot is None:
                raise RunNotFound(f"No run is stored under {claimed!r}.")
        else:
            lease, snapshot = claimed.lease, claimed.run
            self._ledger.learn(snapshot.to_wire(), claimed.version)
        await self._hold(lease)
        return snapshot

    def lease(self, run_id: str) -> Lease | None:
        """The lease these hooks hold on the run (as last granted or renewed), or None."""
        held = self._held.get(run_id)
        return None if held is None or held.lost is not None else held.lease

    async def _take(self, run_id: str, lease: int | None) -> Lease:
        assert self._acquire is not None
        assert self.holder is not None
        return await self._acquire(run_id, self.holder, self._ttl_ms, lease)

    async def _hold(self, lease: Lease) -> None:
        held = self._held.get(lease.run_id)
        if held is not None and held.renewer is not None:
            await held.renewer.stop()
        held = self._held[lease.run_id] = _HeldRun(lease)

        async def renew() -> bool:
            try:
                held.lease = await self._take(lease.run_id, held.lease.lease)
            except (LeaseLost, LeaseHeld, RunNotFound) as error:
                held.lost = _lost(lease, error)
                return False
            except StoreUnavailable:
                pass  # the store is busy or unreachable: try again at the next turn
            return True

        held.renewer = AsyncRenewer(renew, self._ttl_ms / 3000, f"runstore-lease:{lease.run_id}")
        held.renewer.start()

    async def load_run(self, run_id: str) -> RunSnapshot | None:
        """The stored run, or None; later hooks for it continue with deltas."""
        run_path(run_id)
        stored = await self._read(run_id)
        if stored is None:
            self._ledger.forget(run_id)
            return None
        self._ledger.learn(stored.wire, stored.version)
        return stored.snapshot()

    async def close(self) -> None:
        """Stop renewing leases, forget every run, and close the store or client these hooks
        own; idempotent."""
        held, self._held = self._held, {}
        for run in held.values():
            if run.renewer is not None:
                await run.renewer.stop()
        self._ledger.clear()
        close, self._close = self._close, None
        if close is not None:
            await close()

    async def _save(self, snapshot: SnapshotLike, *, final: bool) -> None:
        view = view_of(snapshot)
        held = self._held.get(view.run_id)
        if held is not None and held.lost is not None:
            raise held.lost
        write = self._ledger.plan(view, check_all=final)
        if write is not None:
            if held is not None:
                write.lease = held.lease.lease
            try:
                try:
                    ack = await self._send(write)
                except (RunNotFound, TraceGap):
                    if write.whole:
                        raise
                    write = self._ledger.whole(view)
                    if held is not None:
                        write.lease = held.lease.lease
                    ack = await self._send(write)
            except RunStoreError as error:
                if _refused(error):
                    self._ledger.forget(view.run_id)
                if isinstance(error, LeaseLost) and held is not None:
                    held.lost = error
                    if held.renewer is not None:
                        await held.renewer.stop()
                raise
            self._ledger.confirm(write, ack)
        if final:
            self._ledger.forget(view.run_id)
