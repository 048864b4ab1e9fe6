"""The rules of a write, decided once for every backend.

A backend reads the run's row (locking it, or inside its one writer's transaction), asks this
module whether the write may happen, and writes what the answer says. Nothing here does I/O: a
verdict depends only on the stored state and the request, so every backend reaches the same one,
and a refused write leaves nothing behind because it is refused before anything is written.

The refusals, in the order they are judged::

    RunNotFound          a PATCH or DELETE of no stored run
    PreconditionFailed   If-None-Match: * met a stored run; If-Match named another version (or
                         no run is stored)
    TraceGap             traceFrom or historyFrom starts past the stored end
    StaleWrite           without If-Match, a write that would un-finish a finished run or
                         shorten its trace

What a request states about the stored run (If-Match today) is checked in one place,
:func:`_check_conditions`, before any rule about content. Lease fencing ("a write carrying lease
n proceeds only if n is the run's latest lease") is one more check there, with the lease a
field of :class:`RunState`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from runstore.client.problems import PreconditionFailed, RunNotFound, StaleWrite, TraceGap

from .base import WriteResult
from .records import PatchRecord, SnapshotRecord, merge_doc

__all__ = ["STATE_COLUMNS", "RunChange", "RunState", "delete", "patch", "put"]


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


STATE_COLUMNS: Final = ", ".join(RunState._fields)


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


def _check_conditions(stored: RunState, if_match: int | None) -> None:
    """The request's conditions on the stored run: the one place for each (leases next)."""
    if if_match is not None and if_match != stored.version:
        raise PreconditionFailed(
            f"The run is at version {stored.version}, not {if_match}; read it again before writing."
        )


def _check_no_gap(name: str, start: int, stored: int, what: str, unit: str) -> None:
    if start > stored:
        raise TraceGap(f"{name} is {start} but the stored {what} has {stored} {unit}.")


def put(
    stored: RunState | None, record: SnapshotRecord, if_match: int | None, if_none_match: bool
) -> RunChange:
    """PUT ``record`` over ``stored`` (None: no run yet), or the refusal."""
    trace_length = len(record.trace)
    if stored is None:
        if if_match is not None:
            raise PreconditionFailed("The run does not exist, so no version can match If-Match.")
        version = 1
    else:
        if if_none_match:
            raise PreconditionFailed("The run exists already (If-None-Match: *).")
        _check_conditions(stored, if_match)
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
    )
    return RunChange(
        state, stored is None, record.doc, True, record.plan, 0, record.trace, 0, history or []
    )


def patch(
    run_id: str,
    stored: RunState | None,
    doc: str | None,
    record: PatchRecord,
    if_match: int | None,
) -> RunChange:
    """Apply ``record`` to ``stored`` and its ``doc`` (None: no run), or the refusal."""
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}; PUT it first.")
    _check_conditions(stored, if_match)
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
    )
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


def delete(run_id: str, stored: RunState | None, if_match: int | None) -> None:
    """Nothing if ``stored`` may be deleted; else the refusal."""
    if stored is None:
        raise RunNotFound(f"No run is stored under {run_id!r}.")
    _check_conditions(stored, if_match)
