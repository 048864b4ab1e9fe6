"""Validated snapshots and patches in the form the backends store them.

A run is kept as four parts, so that an append writes only what is new and a read splices stored
JSON text instead of re-parsing it:

- ``doc``: a JSON object of every top-level field but ``trace``, ``history`` and ``plan``
  (unknown fields included, optional fields that are null left out);
- ``plan``: JSON text or None;
- ``trace`` and ``history``: one JSON text per item.

Everything here is pure Python: the SQLite and PostgreSQL backends and the embedded client share
it, and none of it knows about HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from runstore.client.models import (
    MAX_INT,
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    RESERVED_FIELDS,
    STATUS_PATTERN,
    RunPatch,
    RunSnapshot,
    is_run_id,
)
from runstore.client.problems import FieldError, InvalidRun

__all__ = [
    "PatchRecord",
    "SnapshotRecord",
    "dump_json",
    "is_finished",
    "json_path",
    "merge_doc",
    "patch_record",
    "plainly_valid",
    "render_snapshot",
    "render_summary",
    "snapshot_record",
    "validated",
    "written_json",
]

try:  # orjson (in the server extra) serialises about ten times faster than json
    import orjson
except ImportError:  # pragma: no cover - the client-only install
    orjson = None  # type: ignore[assignment]
try:  # msgspec (in the server extra) reads it several times faster, big integers included
    import msgspec
except ImportError:  # pragma: no cover - the client-only install
    msgspec = None  # type: ignore[assignment]

_dump_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_dump_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
_SURROGATE: Final = re.compile("[\ud800-\udfff]")

# Fields whose value is kept outside ``doc``.
_SPLIT_FIELDS: Final = frozenset({"trace", "history", "plan"})
# What a PATCH may not set to null: only optional fields can be cleared ("traceFrom": null
# reached the store as a missing number, "runId": null was stored as the run's id).
_NOT_NULLABLE: Final = REQUIRED_FIELDS | {"traceFrom", "historyFrom"}
_SNAPSHOT_FIELDS: Final = REQUIRED_FIELDS | OPTIONAL_FIELDS
_PATCH_FIELDS: Final = _SNAPSHOT_FIELDS | {"traceFrom", "historyFrom"}


_STATUS_RE: Final = re.compile(STATUS_PATTERN)


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT


# For each of the models' own fields, whether a (non-null) JSON value plainly has the type the
# model asks for. JSON gives exact types, so these are the models' strict rules; tests check
# that they never accept what pydantic refuses.
_PLAINLY_VALID: Final[dict[str, Callable[[Any], bool]]] = {
    "runId": is_run_id,
    "status": lambda value: type(value) is str and _STATUS_RE.fullmatch(value) is not None,
    "startedAt": _is_count,
    "completedAt": _is_count,
    "stepIndex": _is_count,
    "iterations": _is_count,
    "revisions": _is_count,
    "traceFrom": _is_count,
    "historyFrom": _is_count,
    "input": lambda value: type(value) is str,
    "text": lambda value: type(value) is str,
    "error": lambda value: type(value) is str,
    "trace": lambda value: type(value) is list,
    "usage": lambda value: type(value) is dict,
    "plan": lambda value: type(value) is dict,
    "history": lambda value: type(value) is list and all(type(turn) is dict for turn in value),
}


def plainly_valid(fields: Mapping[str, Any], nullable: frozenset[str]) -> bool:
    """True when every field is null where ``nullable`` allows it or plainly of its type.

    Most bodies are; the model is asked only about the others, for its verdict and its errors.
    Validating a model costs more than the rest of a PATCH's checks together.
    """
    for name, value in fields.items():
        if value is None:
            if name not in nullable:
                return False
        elif not _PLAINLY_VALID[name](value):
            return False
    return True


def _own_fields(body: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    # Unknown fields are any JSON and are kept as sent, so the models see only their own
    # fields: pydantic refuses a field name with a lone surrogate, which JSON allows.
    return {name: value for name, value in body.items() if name in names}


def _load_json(text: str) -> Any:
    """Parse JSON text the store wrote itself (so it is valid and has no duplicate key)."""
    if msgspec is not None:
        try:
            return msgspec.json.decode(text)
        except ValueError:
            pass  # a lone surrogate, which dump_json escapes and msgspec refuses
    return json.loads(text)


def dump_json(value: Any) -> str:
    """Compact JSON text; UTF-8 friendly, with lone surrogates escaped so the text encodes."""
    if orjson is not None:
        try:
            return orjson.dumps(value).decode()
        except (TypeError, orjson.JSONEncodeError):
            pass  # integers beyond 64 bits, lone surrogates: json handles them below
    text = _dump_utf8(value)
    if _SURROGATE.search(text) is not None:
        return _dump_ascii(value)
    return text


# Records and results are NamedTuples: immutable like frozen dataclasses, and built about six
# times faster (a frozen dataclass sets each field through object.__setattr__), which at one of
# each per request is measurable.
class SnapshotRecord(NamedTuple):
    """A whole snapshot, validated and split for storage."""

    run_id: str
    status: str
    started_at: int
    completed_at: int | None
    doc: str
    plan: str | None
    trace: list[str]
    history: list[str] | None


class PatchRecord(NamedTuple):
    """A validated PATCH body.

    ``fields`` holds the top-level replacements that live in ``doc`` (a None value on an optional
    field clears it). ``trace`` is None when no trace was sent; ``history`` likewise, unless
    ``clear_history`` is set. ``plan`` is meaningful only when ``set_plan`` is.
    """

    fields: dict[str, Any]
    set_plan: bool
    plan: str | None
    trace: list[str] | None
    trace_from: int
    history: list[str] | None
    history_from: int
    clear_history: bool
    completed_at: int | None
    clears_completed_at: bool


def json_path(loc: Iterable[int | str]) -> str:
    """``("trace", 3, "x")`` -> ``$.trace[3].x``."""
    path = "$"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier():
            path += f".{part}"
        else:
            path += "[" + json.dumps(part) + "]"
    return path


def _field_error(loc: Iterable[int | str], message: str, kind: str) -> FieldError:
    loc = tuple(loc)
    return {"path": json_path(loc), "message": message, "type": kind}


def _invalid(errors: list[FieldError], what: str) -> InvalidRun:
    names = ", ".join(error["path"] for error in errors[:5])
    more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
    return InvalidRun(f"The {what} has invalid fields: {names}{more}.", errors)


def _pydantic_errors(exc: ValidationError) -> list[FieldError]:
    return [
        _field_error(error["loc"], error["msg"], error["type"])
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _common_checks(body: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        kind = type(body).__name__ if body is not None else "null"
        raise _invalid(
            [_field_error((), f"must be a JSON object, not {kind}", "object_type")], what
        )
    reserved = sorted(RESERVED_FIELDS & body.keys())
    if what == "patch":
        reserved = [name for name in reserved if name not in ("traceFrom", "historyFrom")]
    if reserved:
        raise _invalid(
            [
                _field_error((name,), "is a name the store reserves for itself", "reserved")
                for name in reserved
            ],
            what,
        )
    return body


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], body: Any, what: str) -> M:
    """``body`` (parsed JSON) as ``model``, strictly; InvalidRun names each bad field."""
    if not isinstance(body, dict):
        kind = type(body).__name__ if body is not None else "null"
        raise _invalid(
            [_field_error((), f"must be a JSON object, not {kind}", "object_type")], what
        )
    try:
        return model.model_validate(body, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise _invalid(_pydantic_errors(exc), what) from None


def snapshot_record(body: Any) -> SnapshotRecord:
    """Validate a parsed JSON snapshot (camelCase keys) and split it for storage."""
    snapshot = _common_checks(body, "snapshot")
    missing = sorted(REQUIRED_FIELDS - snapshot.keys())
    errors = [_field_error((name,), "is required", "missing") for name in missing]
    own = _own_fields(snapshot, _SNAPSHOT_FIELDS)
    if errors or not plainly_valid(own, OPTIONAL_FIELDS):
        try:
            RunSnapshot.model_validate(own, strict=True, by_alias=True, by_name=False)
        except ValidationError as exc:
            seen = {error["path"] for error in errors}
            errors += [error for error in _pydantic_errors(exc) if error["path"] not in seen]
    if errors:
        raise _invalid(errors, "snapshot")
    history = snapshot.get("history")
    plan = snapshot.get("plan")
    return SnapshotRecord(
        run_id=snapshot["runId"],
        status=snapshot["status"],
        started_at=snapshot["startedAt"],
        completed_at=snapshot.get("completedAt"),
        doc=dump_json(_doc_fields(snapshot)),
        plan=None if plan is None else dump_json(plan),
        trace=[dump_json(item) for item in snapshot["trace"]],
        history=None if history is None else [dump_json(turn) for turn in history],
    )


def _in_doc(name: str, value: Any) -> bool:
    return name not in _SPLIT_FIELDS and not (value is None and name in OPTIONAL_FIELDS)


def _doc_fields(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in snapshot.items() if _in_doc(name, value)}


def written_json(snapshot: Mapping[str, Any], record: SnapshotRecord) -> tuple[bytes, int]:
    """The JSON that ``record`` wrote of ``snapshot`` (its texts joined), and how many of the
    snapshot's top-level keys it writes in none of them: ``trace``, ``history`` and ``plan``,
    kept outside ``doc``, and optional fields that are null, left out.

    For the body parser's duplicate-key check (``strict_json``), which counts colons.
    """
    texts = [record.doc, record.plan or "", *record.trace, *(record.history or ())]
    left_out = sum(1 for name, value in snapshot.items() if not _in_doc(name, value))
    return "".join(texts).encode(), left_out


def patch_record(body: Any) -> PatchRecord:
    """Validate a parsed JSON PATCH body."""
    patch = _common_checks(body, "patch")
    errors = [
        _field_error((name,), "cannot be null: only optional fields can be cleared", "not_null")
        for name in sorted(_NOT_NULLABLE & patch.keys())
        if patch[name] is None
    ]
    if "trace" in patch and "traceFrom" not in patch:
        errors.append(
            _field_error(
                ("traceFrom",), "is required with trace: say where the steps go", "missing"
            )
        )
    if "traceFrom" in patch and "trace" not in patch:
        errors.append(_field_error(("trace",), "is required with traceFrom", "missing"))
    history = patch.get("history")
    if history is not None and "historyFrom" not in patch:
        errors.append(
            _field_error(
                ("historyFrom",), "is required with history: say where the turns go", "missing"
            )
        )
    if "historyFrom" in patch and history is None:
        errors.append(_field_error(("history",), "must be an array with historyFrom", "missing"))
    own = _own_fields(patch, _PATCH_FIELDS)
    if not plainly_valid(own, _PATCH_FIELDS):
        try:
            RunPatch.model_validate(own, strict=True, by_alias=True, by_name=False)
        except ValidationError as exc:
            seen = {error["path"] for error in errors}
            errors += [error for error in _pydantic_errors(exc) if error["path"] not in seen]
    if errors:
        raise _invalid(errors, "patch")
    trace = patch.get("trace")
    plan = patch.get("plan")
    completed_at = patch.get("completedAt")
    return PatchRecord(
        fields={
            name: value
            for name, value in patch.items()
            if name not in _SPLIT_FIELDS and name not in ("traceFrom", "historyFrom")
        },
        set_plan="plan" in patch,
        plan=None if plan is None else dump_json(plan),
        trace=None if trace is None else [dump_json(item) for item in trace],
        trace_from=patch.get("traceFrom", 0),
        history=None if history is None else [dump_json(turn) for turn in history],
        history_from=patch.get("historyFrom", 0),
        clear_history="history" in patch and history is None,
        completed_at=completed_at,
        clears_completed_at="completedAt" in patch and completed_at is None,
    )


def merge_doc(doc: str, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Apply a patch's top-level fields to a stored ``doc``; returns the new text and object."""
    merged: dict[str, Any] = _load_json(doc)
    for name, value in fields.items():
        if value is None and name in OPTIONAL_FIELDS:
            merged.pop(name, None)
        else:
            merged[name] = value
    return dump_json(merged), merged


def render_snapshot(doc: str, plan: str | None, trace: str, history: str | None) -> bytes:
    """Splice the stored parts into the snapshot's JSON without parsing them.

    ``trace`` and ``history`` are the stored items joined by commas.
    """
    parts = [doc[:-1]]
    separator = "," if len(doc) > 2 else ""
    if plan is not None:
        parts.append(f'{separator}"plan":{plan}')
        separator = ","
    if history is not None:
        parts.append(f'{separator}"history":[{history}]')
        separator = ","
    parts.append(f'{separator}"trace":[{trace}]}}')
    return "".join(parts).encode()


def render_summary(
    doc: str, trace_length: int, version: int, updated_at: int, lease: str = "null"
) -> str:
    """A summary's JSON: ``doc`` (which holds no plan, trace or history) plus the store's counts
    and ``lease``, the live lease's JSON (or null)."""
    separator = "," if len(doc) > 2 else ""
    return (
        f'{doc[:-1]}{separator}"traceLength":{trace_length},'
        f'"version":{version},"updatedAt":{updated_at},"lease":{lease}}}'
    )


def is_finished(body: bytes) -> bool:
    """Whether a stored snapshot's JSON has ``completedAt`` set (the run is finished)."""
    if b'"completedAt"' not in body:
        return False
    snapshot = json.loads(body)
    return isinstance(snapshot, dict) and snapshot.get("completedAt") is not None
