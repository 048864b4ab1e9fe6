"""The rules of a write, decided once for every backend.

A backend reads the run's row (locking it, or inside its one writer's transaction), asks this
module whether the write may happen, and writes what the answer says. Nothing here does I/O: a
verdict depends only on the stored state and the request, so every backend reaches the same one,
and a refused write leaves nothing behind because it is refused before anything is written.

The refusals, in the order they are judged::

    RunNotFound          a PATCH or DELETE of no stored run
    LeaseLost            Runstore-Lease named a lease that is not the run's latest
    LeaseHeld            no Runstore-Lease, and another holder's lease on the run is live
    PreconditionFailed   If-None-Match: * met a stored run; If-Match named another version (or
                         no run is stored)
    TraceGap             traceFrom or historyFrom starts past the stored end
    StaleWrite           without If-Match, a write that would un-finish a finished run or
                         shorten its trace

What a request states about the stored run (its lease, If-Match) is checked in one place,
:func:`_check_conditions`, before any rule about content. Lease fencing ("a write carrying lease
n proceeds only if n is the run's latest lease") is the first check there, with the lease
columns fields of :class:`RunState`. Taking, renewing and releasing a lease, and which runs a
claim may take, are decided here too (:func:`acquire`, :func:`release`, :func:`orphaned` and
its SQL twin :data:`ORPHANED_SQL`, :func:`claim`); ``now`` is always the store's clock, read by
the backend in the write's transaction.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from runstore.client.problems import (
    LeaseHeld,
    LeaseLost,
    PreconditionFailed,
    RunNotFound,
    StaleWrite,
    TraceGap,
    retry_after_of,
)

from .base import Lease, WriteResult
from .records import PatchRecord, SnapshotRecord, merge_doc

__all__ = [
    "LEASE_COLUMNS",
    "ORPHANED_SQL",
    "STATE_COLUMNS",
    "RunChange",
    "RunState",
    "acquire",
    "claim",
    "delete",
    "live_lease",
    "orphaned",
    "patch",
    "put",
    "release",
]


class RunState(NamedTuple):
    """What the rules judge a write by: a stored run's row, but for its content (doc, plan).

    The fields are named and ordered as the columns of ``runs`` in both schemas, so a backend
    selects :data:`STATE_COLUMNS` and builds this from the row as it comes.
    """

    version: int
    status: str
    started_at: int
    completed_at: int | None
    trace_length: int
    history_length: int | None
    # The latest lease granted on the run (0: none ever), its holder and ttl, and when it
    # expires (ms by the store's clock; None once released, and before the first lease).
    lease: int = 0
    lease_holder: str | None = None
    lease_expires_at: int | None = None
    lease_ttl_ms: int | None = None

    def with_lease(
        self, lease: int, holder: str | None, expires_at: int | None, ttl_ms: int | None
    ) -> RunState:
        # Built field by field: NamedTuple._replace goes through a dict of keywords, several
        # times slower, and a write's state is built once per write.
        return RunState(
            self.version,
            self.status,
            self.started_at,
            self.completed_at,
            self.trace_length,
            self.history_length,
            lease,
            holder,
            expires_at,
            ttl_ms,
        )

    def lease_of(self, stored: RunState | None) -> RunState:
        """This state with ``stored``'s lease: a write keeps the run's lease as it is."""
        if stored is None:
            return self
        return self.with_lease(
            stored.lease, stored.lease_holder, stored.lease_expires_at, stored.lease_ttl_ms
        )


STATE_COLUMNS: Final = ", ".join(RunState._fields)
LEASE_COLUMNS: Final = ("lease", "lease_holder", "lease_expires_at", "lease_ttl_ms")

# The SQL twin of :func:`orphaned`, over the columns of ``runs``: ``{now}`` and ``{stale}`` are
# the backend's placeholders (or expressions) for the store's clock and the cut-off age.
ORPHANED_SQL: Final = (
    "completed_at IS NULL AND ("
    "(lease > 0 AND lease_expires_at IS NOT NULL AND lease_expires_at <= {now})"
    " OR (lease = 0 AND updated_at < {now} - {stale}))"
)
# Who has waited longest comes first: since its lease expired, or since it was last written.
CLAIM_ORDER: Final = "coalesce(lease_expires_at, updated_at), run_id"


class RunChange(NamedTuple):
    """A write the rules accepted: the run's new state and what to write for it.

    ``doc`` is the new doc text, or None to keep the stored one (so a PATCH that sends no field
    does not rewrite it); ``plan`` replaces the stored plan only when ``set_plan``. The items of
    ``trace`` go at positions ``trace_from`` on, and stored steps at ``state.trace_length`` and
    beyond are cut (none when the length did not shrink); likewise ``history``, with the turns
    cut from ``state.history_length`` (from 0 when it is None).
    """

    state: RunState
    created: bool
    doc: str | None
    set_plan: bool
    plan: str | None
    trace_from: int
    trace: list[str]
    history_from: int
    history: list[str]

    def result(self, run_id: str) -> WriteResult:
        """What the write answers."""
        return WriteResult(run_id, self.state.version, self.state.trace_length, self.created)


def live_lease(run_id: str, stored: RunState, now: int) -> Lease | None:
    """The run's lease if it is live at ``now``, else None."""
    expires_at = stored.lease_expires_at
    if stored.lease == 0 or expires_at is None or expires_at <= now:
        return None
    assert stored.lease_holder is not None
    assert stored.lease_ttl_ms is not None
    return Lease(run_id, stored.lease_holder, stored.lease, expires_at, stored.lease_ttl_ms)


def _held(live: Lease, now: int, detail: str) -> LeaseHeld:
    return LeaseHeld(
        f"{detail} {live.holder!r} holds lease {live.lease} on run {live.run_id!r} for "
        f"{max(0, live.expires_at - now)} ms more.",
        holder=live.holder,
        expires_at=live.expires_at,
        retry_after=retry_after_of(live.expires_at, now),
    )


def _check_fence(run_id: str, stored: RunState, lease: int | None, now: int) -> None:
    """Fencing: a write under lease n proceeds only while n is the run's latest lease; a write
    under none, only while no lease is live."""
    if lease is None:
        live = live_lease(run_id, stored, now)
        if live is not None:
            raise _held(live, now, "The write carries no Runstore-Lease, and")
    elif lease != stored.lease or lease == 0:
        raise LeaseLost(
            f"Lease {lease} is not the latest lease on run {run_id!r} (that is "
            f"{stored.lease}): another worker has taken the run over. Stop working on it."
        )


def _check_conditions(
    run_id: str, stored: RunState, if_match: int | None, lease: int | None, now: int
) -> None:
    """The request's conditions on the stored run: the one place for each."""
    _check_fence(run_id, stored, lease, now)
    if if_match is not None and if_match != stored.version:
        raise PreconditionFailed(
            f"The run is at version {stored.version}, not {if_match}; read it again before writing."
        )


def _check_no_gap(name: str, start: int, stored: int, what: str, unit: str) -> None:
    if start > stored:
        raise TraceGap(f"{name} is {start} but the stored {what} has {stored} {unit}.")


def put(
    stored: RunState | None,
    record: SnapshotRecord,
    if_match: int | None,
    if_none_match: bool,
    lease: int | None = None,
    now: int = 0,
) -> RunChange:
    """PUT ``record`` over ``stored`` (None: no run yet), or the refusal."""
    trace_length = len(record.trace)
    if stored is None:
        if lease is not None:
            raise LeaseLost(
                f"Lease {lease} does not exist: no run {record.run_id!r} is stored (deleted?)."
            )
        if if_match is not None:
            raise PreconditionFailed("The run does not exist, so no version can match If-Match.")
        version = 1
    else:
        if if_none_match:
            raise PreconditionFailed("The run exists already (If-None-Match: *).")
        _check_conditions(record.run_id, stored, if_match, lease, now)
        if if_match is None:
            # If-Match says the writer has seen the stored run: it may then move it back.
            if stored.completed_at is not None and record.completed_at is None:
                raise StaleWrite(
                    "The run is finished; a write without completedAt would un-finish it."
                )
            if trace_length < stored.trace_length:
                raise StaleWrite(
                    f"The stored trace has {stored.trace_length} steps; this write has "
                    f"{trace_length}."
                )
        version = stored.version + 1
    history = record.history
    state = RunState(
        version,
        record.status,
        record.started_at,
        record.completed_at,
        trace_length,
        None if history is None else len(history),
    ).lease_of(stored)
    return RunChange(
        state, stored is None, record.doc, True, record.plan, 0, record.trace, 0, history or []
    )


def patch(
    run_id: str,
    stored: RunState | None,
    doc: str | None,
    record: PatchRecord,
    if_match: int | None,
    lease: int | None = None,
    now: int = 0,
) -> RunChange:
    """Apply ``record`` to ``stored`` and its ``doc`` (None: no run), or the refusal."""
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}; PUT it first.")
    _check_conditions(run_id, stored, if_match, lease, now)
    trace_length = stored.trace_length
    if record.trace is not None:
        _check_no_gap("traceFrom", record.trace_from, trace_length, "trace", "steps")
        trace_length = record.trace_from + len(record.trace)
    history_length = stored.history_length
    if record.history is not None:
        _check_no_gap("historyFrom", record.history_from, history_length or 0, "history", "turns")
        history_length = record.history_from + len(record.history)
    elif record.clear_history:
        history_length = None
    if if_match is None:
        if record.clears_completed_at and stored.completed_at is not None:
            raise StaleWrite("The run is finished; clearing completedAt would un-finish it.")
        if trace_length < stored.trace_length:
            raise StaleWrite(
                f"The stored trace has {stored.trace_length} steps; this write would leave "
                f"{trace_length}."
            )
    status, started_at, completed_at = stored.status, stored.started_at, stored.completed_at
    new_doc = None
    if record.fields:
        assert doc is not None, "a stored run has a doc"
        new_doc, merged = merge_doc(doc, record.fields)
        status, started_at = merged["status"], merged["startedAt"]
        completed_at = merged.get("completedAt")
    state = RunState(
        stored.version + 1, status, started_at, completed_at, trace_length, history_length
    ).lease_of(stored)
    return RunChange(
        state,
        False,
        new_doc,
        record.set_plan,
        record.plan,
        record.trace_from if record.trace is not None else 0,
        record.trace or [],
        record.history_from if record.history is not None else 0,
        record.history or [],
    )


def delete(
    run_id: str,
    stored: RunState | None,
    if_match: int | None,
    lease: int | None = None,
    now: int = 0,
) -> None:
    """Nothing if ``stored`` may be deleted; else the refusal."""
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    _check_conditions(run_id, stored, if_match, lease, now)


def _granted(
    run_id: str, stored: RunState, holder: str, ttl_ms: int, lease: int, now: int
) -> tuple[RunState, Lease]:
    state = stored.with_lease(lease, holder, now + ttl_ms, ttl_ms)
    return state, Lease(run_id, holder, lease, now + ttl_ms, ttl_ms)


def acquire(
    run_id: str,
    stored: RunState | None,
    holder: str,
    ttl_ms: int,
    lease: int | None,
    now: int,
) -> tuple[RunState, Lease]:
    """``POST /runs/{id}/lease``: the run's new state and the lease granted or renewed.

    Without ``lease``: a new lease (the latest + 1) when none is live; the live one, extended,
    when ``holder`` holds it already (so a retried acquire is safe); else LeaseHeld. With
    ``lease``: a renewal, which extends lease n while it is the run's latest, unreleased lease
    of ``holder`` (live, or expired with nobody having taken a newer one); else LeaseLost.
    """
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}; PUT it before taking a lease.")
    live = live_lease(run_id, stored, now)
    if lease is None:
        if live is None:
            return _granted(run_id, stored, holder, ttl_ms, stored.lease + 1, now)
        if live.holder == holder:
            return _granted(run_id, stored, holder, ttl_ms, live.lease, now)
        raise _held(live, now, "The lease is taken:")
    if (
        lease != stored.lease
        or stored.lease_expires_at is None  # released, or never granted
        or stored.lease_holder != holder
    ):
        if live is not None and live.lease == lease:
            raise _held(live, now, f"Lease {lease} is not {holder!r}'s:")
        raise LeaseLost(
            f"Lease {lease} on run {run_id!r} can no longer be renewed: the latest lease is "
            f"{stored.lease}{' (released)' if stored.lease_expires_at is None else ''}."
        )
    return _granted(run_id, stored, holder, ttl_ms, lease, now)


def release(run_id: str, stored: RunState | None, lease: int, now: int) -> RunState:
    """``DELETE /runs/{id}/lease``: the run's state with lease n ended now (safe to repeat
    while n is the latest lease), or the refusal."""
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    if lease != stored.lease or lease == 0:
        raise LeaseLost(
            f"Lease {lease} is not the latest lease on run {run_id!r} (that is {stored.lease})."
        )
    return stored.with_lease(stored.lease, stored.lease_holder, None, stored.lease_ttl_ms)


def orphaned(stored: RunState, updated_at: int, now: int, stale_after_ms: int) -> bool:
    """Whether a claim may take the run: unfinished, and its last lease expired unreleased, or
    it never had one and was last written more than ``stale_after_ms`` ago (ORPHANED_SQL)."""
    if stored.completed_at is not None:
        return False
    if stored.lease > 0:
        return stored.lease_expires_at is not None and stored.lease_expires_at <= now
    return updated_at < now - stale_after_ms


def claim(
    run_id: str,
    stored: RunState,
    updated_at: int,
    holder: str,
    ttl_ms: int,
    stale_after_ms: int,
    now: int,
) -> tuple[RunState, Lease]:
    """``POST /claims`` on a run the backend found with ORPHANED_SQL: the next lease, to
    ``holder``. The backend holds the run's row, so the check here cannot be overtaken."""
    if not orphaned(stored, updated_at, now, stale_after_ms):
        raise AssertionError(f"run {run_id!r} was selected for a claim but is not orphaned")
    return _granted(run_id, stored, holder, ttl_ms, stored.lease + 1, now)
