"""What a committed write changed, as the watchers of runs are told it (docs/api.md, "Events").

A backend hands each committed write to its change sink as a :class:`Change`: the run, its new
version, and the kind of event it makes: ``patch`` (the PATCH-shaped delta that turns the
previous version into this one), ``run`` (a PUT: the whole run) or ``deleted``. The delta is
built from the write itself, the validated request and the state the rules accepted, never by
comparing stored runs; and only when someone watches (:meth:`Change.data` is computed on first
use), so a store without watchers pays for a reference to objects it holds anyway.

Everything here is pure: no I/O, no event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Protocol

from .records import PatchRecord, SnapshotRecord, dump_json, render_snapshot, render_summary
from .rules import RunState, live_lease
from .tally import TallyDelta

__all__ = ["Change", "ChangeListener", "Committed", "EventKind", "patch_delta"]

EventKind = Literal["run", "patch", "deleted"]


class ChangeListener(Protocol):
    """What a store tells of its committed writes (the server's event broker)."""

    def publish(self, changes: list[Change]) -> None:
        """The changes of one commit, in order; called on the event loop, must not wait."""

    def publish_threadsafe(self, changes: list[Change]) -> None:
        """:meth:`publish`, from any thread."""

    def known_version(self, run_id: str) -> int | None:
        """The newest version of the run its watchers were told (0: none yet), or None when
        nobody watches that run."""

    @property
    def following_all(self) -> bool:
        """Whether anyone watches every run (and so every run's summary is wanted)."""

    def watched_runs(self) -> list[str]:
        """The runs someone watches."""


def patch_delta(record: PatchRecord, version: int) -> bytes:
    """The body of a ``patch`` event: what the PATCH sent, as the store validated it, and the
    run's new version. Applied to the previous version it gives this one (the PATCH rules)."""
    parts = [dump_json(name) + ":" + dump_json(value) for name, value in record.fields.items()]
    if record.set_plan:
        parts.append('"plan":' + (record.plan if record.plan is not None else "null"))
    if record.trace is not None:
        parts.append(f'"traceFrom":{record.trace_from},"trace":[{",".join(record.trace)}]')
    if record.history is not None:
        parts.append(f'"historyFrom":{record.history_from},"history":[{",".join(record.history)}]')
    elif record.clear_history:
        parts.append('"history":null')
    parts.append(f'"version":{version}')
    return ("{" + ",".join(parts) + "}").encode()


def _lease(run_id: str, state: RunState, now: int) -> str:
    """The run's live lease at ``now`` as JSON (a write keeps the lease), or null."""
    lease = live_lease(run_id, state, now)
    return "null" if lease is None else lease.to_json()


def _deleted(run_id: str) -> bytes:
    return ('{"runId":' + json.dumps(run_id) + "}").encode()


class Change:
    """One committed write of one run, with its event's data and the run's summary made on
    first use. ``version`` is the run's new version (0 for a delete)."""

    __slots__ = (
        "_data",
        "_frame",
        "_make",
        "_summary",
        "finished",
        "kind",
        "run_id",
        "status",
        "version",
    )

    def __init__(
        self,
        run_id: str,
        version: int,
        kind: EventKind,
        status: str | None,
        finished: bool,
        make: Callable[[], tuple[bytes, str | None]],
    ) -> None:
        self.run_id = run_id
        self.version = version
        self.kind: EventKind = kind
        # The run's status after the write (None after a delete), for status filters.
        self.status = status
        self.finished = finished
        self._make: Callable[[], tuple[bytes, str | None]] | None = make
        self._data: bytes = b""
        self._summary: str | None = None
        self._frame: bytes | None = None

    def _built(self) -> None:
        if self._make is not None:
            self._data, self._summary = self._make()
            self._make = None

    @property
    def data(self) -> bytes:
        """The event's ``data``: the delta, the whole run, or ``{"runId"}``."""
        self._built()
        return self._data

    @property
    def frame(self) -> bytes:
        """The server-sent event of a run's stream (``event``, ``id``: the version, ``data``),
        made once for all the run's watchers. The data is one line of JSON."""
        if self._frame is None:
            self._frame = b"event: %s\nid: %d\ndata: %s\n\n" % (
                self.kind.encode(),
                self.version,
                self.data,
            )
        return self._frame

    @property
    def summary(self) -> str | None:
        """The run's summary after the write (None after a delete)."""
        self._built()
        return self._summary

    @classmethod
    def of_patch(
        cls, run_id: str, record: PatchRecord, state: RunState, doc: str, updated_at: int
    ) -> Change:
        """A PATCH that left the run at ``state``, ``doc`` (the whole doc after it)."""

        def make() -> tuple[bytes, str]:
            return (
                patch_delta(record, state.version),
                render_summary(
                    doc,
                    state.trace_length,
                    state.version,
                    updated_at,
                    _lease(run_id, state, updated_at),
                ),
            )

        return cls(
            run_id, state.version, "patch", state.status, state.completed_at is not None, make
        )

    @classmethod
    def of_put(cls, record: SnapshotRecord, state: RunState, updated_at: int) -> Change:
        """A PUT that stored ``record`` whole."""

        def make() -> tuple[bytes, str]:
            history = None if record.history is None else ",".join(record.history)
            body = render_snapshot(record.doc, record.plan, ",".join(record.trace), history)
            lease = _lease(record.run_id, state, updated_at)
            summary = render_summary(
                record.doc, state.trace_length, state.version, updated_at, lease
            )
            return body, summary

        finished = state.completed_at is not None
        return cls(record.run_id, state.version, "run", state.status, finished, make)

    @classmethod
    def of_delete(cls, run_id: str) -> Change:
        return cls(run_id, 0, "deleted", None, True, lambda: (_deleted(run_id), None))

    @classmethod
    def ready(
        cls,
        run_id: str,
        version: int,
        kind: EventKind,
        status: str,
        finished: bool,
        data: bytes,
        summary: str | None,
    ) -> Change:
        """A change whose data was read back (another replica's write); ``summary`` None when
        it is not the run's summary at ``version`` (watchers of all runs then skip it)."""
        return cls(run_id, version, kind, status, finished, lambda: (data, summary))


class Committed(NamedTuple):
    """A write op's outcome with the changes it made: the writer publishes ``changes`` once
    the transaction has committed, adds ``tally`` to the store's count of runs, and answers
    ``result``."""

    result: Any
    changes: list[Change]
    tally: TallyDelta | None = None
