"""What the store holds of each run, as far as this process knows, and the write that brings it
up to date with a snapshot, worked out in time that does not grow with the run.

Per run the ledger keeps the store's version, one fingerprint (the hash of its JSON text) per
stored step and turn, and a fingerprint of every other top-level field. A fingerprint is made
once, when its step is sent; the trace itself is never serialised or compared again. At each
hook:

- new steps are ``trace[known:]`` and new turns ``history[known:]``;
- the last known step and turn are checked again (one item each), so rewriting the latest step
  is sent as well;
- every other field is compared by its fingerprint (scalars by value; usage, plan and unknown
  fields by the hash of their JSON, which costs their size, not the run's);
- a trace shorter than the store's, or a run un-finished, is the agent rewinding its own run: a
  whole PUT with ``If-Match`` on the version this process wrote last (412 if another writer got
  in between);
- on completion every step and turn is checked (once per run), so a rewrite of an earlier step
  reaches the store by the end of the run at the latest.

The limit, documented in docs/client.md (The persistence hooks): between those points, a change
made in place to a step before the last known one is not noticed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._wire import SnapshotView, Write, encode
from .models import OPTIONAL_FIELDS, WriteAck

__all__ = ["RunLedger", "RunState", "fingerprint"]

DEFAULT_CAPACITY: Final = 4096
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_ABSENT: Final = object()


def fingerprint(value: Any, path: str = "$") -> object:
    """Equal for equal JSON: the value itself for scalars, else the hash of its JSON text.

    The type is part of a scalar's fingerprint, since ``1``, ``1.0`` and ``true`` differ in JSON.
    """
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    return hash(encode(value, path))


def _item_fingerprint(item: Any, path: str) -> int:
    return hash(encode(item, path))


@dataclass(slots=True)
class RunState:
    """What the store holds of one run, as far as this process knows."""

    version: int
    trace: list[int]
    history: list[int] | None
    fields: dict[str, object]


def _first_change(items: Sequence[Any], known: list[int], limit: int, name: str) -> int:
    """The index of the first of ``items[:limit]`` that differs from ``known``, else ``limit``."""
    for index in range(limit):
        if _item_fingerprint(items[index], f"$.{name}[{index}]") != known[index]:
            return index
    return limit


def _append_point(items: Sequence[Any], known: list[int], name: str, *, check_all: bool) -> int:
    """Where sent items must start: after the known ones, or at the first that changed.

    ``items`` is at least as long as ``known``. Only the last known item is checked unless
    ``check_all``.
    """
    count = len(known)
    if check_all:
        return _first_change(items, known, count, name)
    last = count - 1
    if count and _item_fingerprint(items[last], f"$.{name}[{last}]") != known[last]:
        return last
    return count


def _texts(items: Sequence[Any], start: int, name: str) -> tuple[list[str], list[int]]:
    texts = [encode(items[index], f"$.{name}[{index}]") for index in range(start, len(items))]
    return texts, [hash(text) for text in texts]


class RunLedger:
    """Per-run knowledge of the store, bounded to the ``capacity`` most recently used runs.

    Safe to share between threads as long as each run's hooks come one at a time (as agent
    frameworks call them). A run pushed out, or forgotten after an error, is sent whole next time.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._runs: OrderedDict[str, RunState] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def _get(self, run_id: str) -> RunState | None:
        with self._lock:
            state = self._runs.get(run_id)
            if state is not None:
                self._runs.move_to_end(run_id)
            return state

    def _set(self, run_id: str, state: RunState) -> None:
        with self._lock:
            self._runs[run_id] = state
            self._runs.move_to_end(run_id)
            while len(self._runs) > self._capacity:
                self._runs.popitem(last=False)

    def forget(self, run_id: str) -> None:
        """Drop what is known of a run: its next write is a whole PUT."""
        with self._lock:
            self._runs.pop(run_id, None)

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()

    def learn(self, snapshot: Mapping[str, Any], version: int) -> None:
        """Record a run as read from the store (``load_run``), so writes continue with deltas."""
        trace = snapshot.get("trace") or []
        history = snapshot.get("history")
        self._set(
            str(snapshot["runId"]),
            RunState(
                version=version,
                trace=_texts(trace, 0, "trace")[1],
                history=None if history is None else _texts(history, 0, "history")[1],
                fields={
                    name: fingerprint(value, f"$.{name}")
                    for name, value in snapshot.items()
                    if name not in ("trace", "history")
                },
            ),
        )

    @staticmethod
    def whole(view: SnapshotView, *, if_match: int | None = None) -> Write:
        """A PUT of the whole snapshot."""
        trace, trace_fingerprints = _texts(view.trace, 0, "trace")
        history: list[str] | None = None
        history_fingerprints: list[int] | None = None
        if view.history is not None:
            history, history_fingerprints = _texts(view.history, 0, "history")
        return Write(
            run_id=view.run_id,
            whole=True,
            fields=view.fields,
            trace=trace,
            history=history,
            if_match=if_match,
            trace_fingerprints=trace_fingerprints,
            history_fingerprints=history_fingerprints,
            field_fingerprints=_field_fingerprints(view.fields),
        )

    def plan(self, view: SnapshotView, *, check_all: bool = False) -> Write | None:
        """The write that makes the store hold ``view``: a PATCH of what changed, a whole PUT
        when the run is not known here or moved backwards, or None when nothing changed."""
        state = self._get(view.run_id)
        if state is None:
            return self.whole(view)
        if len(view.trace) < len(state.trace):
            return self.whole(view, if_match=state.version)
        fields = _field_fingerprints(view.fields)
        changed = {
            name: value
            for name, value in view.fields.items()
            if state.fields.get(name, _ABSENT) != fields[name]
        }
        for name in state.fields.keys() - fields.keys():
            if name == "completedAt":
                return self.whole(view, if_match=state.version)
            if name not in OPTIONAL_FIELDS:
                # A PATCH can set an unknown field to null but not remove it.
                return self.whole(view)
            changed[name] = None
        write = Write(run_id=view.run_id, whole=False, fields=changed, field_fingerprints=fields)
        trace_from = _append_point(view.trace, state.trace, "trace", check_all=check_all)
        if trace_from < len(view.trace):
            write.trace_from = trace_from
            write.trace, write.trace_fingerprints = _texts(view.trace, trace_from, "trace")
        self._plan_history(write, view.history, state.history, check_all=check_all)
        sends_items = write.trace_from is not None or write.history is not None
        if not (changed or sends_items or write.clear_history):
            return None
        return write

    @staticmethod
    def _plan_history(
        write: Write, history: Sequence[Any] | None, known: list[int] | None, *, check_all: bool
    ) -> None:
        if history is None:
            write.clear_history = known is not None
            return
        if known is None:
            start = 0
        elif len(history) < len(known):
            # Shortened (a summarised conversation): resend from the first turn that changed.
            start = _first_change(history, known, len(history), "history")
        else:
            start = _append_point(history, known, "history", check_all=check_all)
            if start == len(history):
                return
        write.history_from = start
        write.history, write.history_fingerprints = _texts(history, start, "history")

    def confirm(self, write: Write, ack: WriteAck) -> None:
        """Record that the store took ``write``."""
        if write.whole:
            self._set(
                write.run_id,
                RunState(
                    ack.version,
                    write.trace_fingerprints,
                    write.history_fingerprints,
                    write.field_fingerprints,
                ),
            )
            state: RunState | None = self._get(write.run_id)
        else:
            state = self._get(write.run_id)
            if state is None:
                return
            if write.trace_from is not None:
                del state.trace[write.trace_from :]
                state.trace.extend(write.trace_fingerprints)
            if write.clear_history:
                state.history = None
            elif write.history is not None:
                history = state.history if state.history is not None else []
                del history[write.history_from :]
                history.extend(write.history_fingerprints or ())
                state.history = history
            state.fields = write.field_fingerprints
            state.version = ack.version
        if state is not None and ack.trace_length != len(state.trace):
            # The store holds something else than this process thinks; start again whole.
            self.forget(write.run_id)


def _field_fingerprints(fields: Mapping[str, Any]) -> dict[str, object]:
    return {name: fingerprint(value, f"$.{name}") for name, value in fields.items()}
