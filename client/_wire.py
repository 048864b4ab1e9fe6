"""Snapshots as the client sends them: JSON text, a cheap view of a snapshot, and one write.

A snapshot reaches the hooks either as a :class:`RunSnapshot` or as a mapping in the camelCase
wire shape; :func:`view_of` reads either into a :class:`SnapshotView` without serialising it.
Only the parts a write sends are turned into JSON text (:func:`encode`), and a :class:`Write`
joins those texts into the request body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from pydantic_core import to_jsonable_python

from .models import OPTIONAL_FIELDS, RunSnapshot, is_run_id
from .problems import InvalidRun

__all__ = [
    "SnapshotLike",
    "SnapshotView",
    "StoredSnapshot",
    "Write",
    "encode",
    "encode_body",
    "run_path",
    "view_of",
]

SnapshotLike = RunSnapshot | Mapping[str, Any]

# Values that are not JSON already (datetimes, models, tuples in a RunSnapshot's trace) are
# converted the way pydantic would dump them.
_encode_text = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=to_jsonable_python
).encode
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SPLIT: Final = frozenset({"trace", "history"})
# (attribute, wire name) of every RunSnapshot field but trace and history.
_SNAPSHOT_FIELDS: Final = tuple(
    (name, info.alias or name)
    for name, info in RunSnapshot.model_fields.items()
    if (info.alias or name) not in _SPLIT
)


def encode(value: Any, path: str = "$") -> str:
    """Compact JSON text of ``value``; InvalidRun if it has no JSON form (NaN, an object)."""
    try:
        return _encode_text(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRun(
            f"{path} cannot be sent as JSON: {exc}",
            [{"path": path, "message": str(exc), "type": "json"}],
        ) from None


def encode_body(text: str) -> bytes:
    """UTF-8 bytes of JSON text; lone surrogates, which UTF-8 cannot carry, become escapes."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        # They can only stand inside JSON strings, where the \\u escape means the same.
        return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode()


def run_path(run_id: str) -> str:
    """``/runs/{runId}``; InvalidRun for an id the contract does not allow."""
    if not is_run_id(run_id):
        raise InvalidRun(
            f"{run_id!r} is not a run id: 1-200 characters of A-Z a-z 0-9 _ . ~ : @ -, "
            "starting with a letter or a digit.",
            [{"path": "$.runId", "message": "not a run id", "type": "run_id"}],
        )
    return "/runs/" + quote(run_id, safe=":@~")


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A run as read from the store: its camelCase JSON object and its version."""

    wire: dict[str, Any]
    version: int

    def snapshot(self) -> RunSnapshot:
        return RunSnapshot.model_validate(self.wire)


@dataclass(slots=True)
class SnapshotView:
    """A snapshot's parts, read without copying: ``fields`` holds every top-level field but
    ``trace`` and ``history`` (optional fields that are None left out, as on the wire)."""

    run_id: str
    fields: dict[str, Any]
    trace: Sequence[Any]
    history: Sequence[Any] | None


def _invalid(path: str, message: str) -> InvalidRun:
    return InvalidRun(
        f"The snapshot cannot be sent: {path} {message}.",
        [{"path": path, "message": message, "type": "snapshot"}],
    )


def view_of(snapshot: SnapshotLike) -> SnapshotView:
    """A view of a RunSnapshot or of a camelCase mapping; InvalidRun if it is neither."""
    if isinstance(snapshot, RunSnapshot):
        fields: dict[str, Any] = {}
        for attribute, name in _SNAPSHOT_FIELDS:
            value = getattr(snapshot, attribute)
            if value is not None or name not in OPTIONAL_FIELDS:
                fields[name] = value
        if snapshot.model_extra:
            fields.update(snapshot.model_extra)
        return SnapshotView(snapshot.run_id, fields, snapshot.trace, snapshot.history)
    if not isinstance(snapshot, Mapping):
        raise _invalid("$", f"must be a RunSnapshot or a mapping, not {type(snapshot).__name__}")
    run_id = snapshot.get("runId")
    if not isinstance(run_id, str):
        raise _invalid("$.runId", "is required and must be a string")
    run_path(run_id)
    trace = snapshot.get("trace")
    if not isinstance(trace, list | tuple):
        raise _invalid("$.trace", "is required and must be an array")
    history = snapshot.get("history")
    if history is not None and not isinstance(history, list | tuple):
        raise _invalid("$.history", "must be an array or null")
    fields = {
        name: value
        for name, value in snapshot.items()
        if name not in _SPLIT and (value is not None or name not in OPTIONAL_FIELDS)
    }
    return SnapshotView(run_id, fields, trace, history)


@dataclass(slots=True)
class Write:
    """One PUT (``whole``) or PATCH, with the JSON texts it sends and what it will leave stored.

    For a PUT, ``fields`` is every top-level field but trace and history, ``trace`` every step
    and ``history`` every turn (None: no history). For a PATCH, ``fields`` holds the changed
    fields (None clears an optional one), ``trace`` the steps from ``trace_from`` (None: no steps
    sent), ``history`` the turns from ``history_from`` (None: none sent), and ``clear_history``
    says to send ``history: null``. The ``*_fingerprints`` describe what was sent, for the
    ledger to record once the store has it.
    """

    run_id: str
    whole: bool
    fields: dict[str, Any]
    trace: list[str] = field(default_factory=list)
    trace_from: int | None = None
    history: list[str] | None = None
    history_from: int = 0
    clear_history: bool = False
    if_match: int | None = None
    # The writer's lease on the run, sent as Runstore-Lease (set by the hooks that hold one).
    lease: int | None = None
    trace_fingerprints: list[int] = field(default_factory=list)
    history_fingerprints: list[int] | None = None
    field_fingerprints: dict[str, object] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return "PUT" if self.whole else "PATCH"

    def body(self) -> bytes:
        """The request body: the fields' JSON with the sent steps and turns spliced in."""
        head = encode(self.fields)
        parts = [head[:-1]]
        separator = "," if len(head) > 2 else ""
        if self.whole:
            if self.history is not None:
                parts.append(f'{separator}"history":[{",".join(self.history)}]')
                separator = ","
            parts.append(f'{separator}"trace":[{",".join(self.trace)}]')
        else:
            if self.trace_from is not None:
                parts.append(
                    f'{separator}"traceFrom":{self.trace_from},"trace":[{",".join(self.trace)}]'
                )
                separator = ","
            if self.clear_history:
                parts.append(f'{separator}"history":null')
            elif self.history is not None:
                parts.append(
                    f'{separator}"historyFrom":{self.history_from},'
                    f'"history":[{",".join(self.history)}]'
                )
        parts.append("}")
        return encode_body("".join(parts))

    def document(self) -> dict[str, Any]:
        """The body as parsed JSON, exactly what a server would read (for the embedded store)."""
        document: dict[str, Any] = json.loads(self.body())
        return document
