"""Event streams, read without I/O: what an event says, and a run rebuilt from its events.

The clients (``watch``, ``follow``, ``events``) read server-sent events with ``httpx-sse`` and
hand each one here: :func:`run_event` makes it a :class:`RunEvent`, :func:`apply_event` applies
it to the run as last known, by the PATCH rules of docs/api.md.
"""

from __future__ import annotations

import json
from typing import Any

from httpx_sse import ServerSentEvent

from .models import OPTIONAL_FIELDS, RunEvent
from .problems import UnexpectedResponse

__all__ = ["apply_event", "run_event"]

_PATCH_ONLY = frozenset({"traceFrom", "historyFrom", "version", "trace", "history"})


def run_event(sse: ServerSentEvent) -> RunEvent | None:
    """The event ``sse`` carries, or None for one this client does not know (skipped, so that
    a newer server may add kinds)."""
    if sse.event not in ("run", "patch", "deleted", "summary"):
        return None
    try:
        data = json.loads(sse.data)
    except ValueError as exc:
        raise UnexpectedResponse(f"An event's data is not JSON: {sse.data[:200]!r}") from exc
    if not isinstance(data, dict):
        raise UnexpectedResponse(f"An event's data is not a JSON object: {sse.data[:200]!r}")
    version = data.get("version") if sse.event in ("patch", "summary") else None
    if sse.event == "run" and sse.id.isdigit():
        version = int(sse.id)
    return RunEvent(kind=sse.event, version=version, data=data)


def apply_event(run: dict[str, Any] | None, event: RunEvent) -> dict[str, Any] | None:
    """The run (camelCase JSON object) after ``event``: a ``run`` replaces it, a ``patch`` is
    applied to it, ``deleted`` leaves None. ``run`` is not changed."""
    if event.kind == "run":
        return dict(event.data)
    if event.kind == "deleted":
        return None
    if event.kind != "patch":
        return run
    if run is None:
        raise UnexpectedResponse("A patch event came before the run it applies to.")
    patch = event.data
    updated = dict(run)
    for name, value in patch.items():
        if name in _PATCH_ONLY:
            continue
        if value is None and name in OPTIONAL_FIELDS:
            updated.pop(name, None)
        else:
            updated[name] = value
    if "trace" in patch:
        updated["trace"] = list(run.get("trace", []))[: patch["traceFrom"]] + patch["trace"]
    if "history" in patch:
        history = patch["history"]
        if history is None:
            updated.pop("history", None)
        else:
            kept = list(run.get("history") or [])[: patch["historyFrom"]]
            updated["history"] = kept + history
    return updated
