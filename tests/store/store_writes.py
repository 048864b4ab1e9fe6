"""Hypothesis strategies of the bodies of store writes, for the store's property tests.

Small on purpose: a few runs, items that repeat and short traces, so that random sequences of
writes often meet each rule (a gap, a stale write, a matching or failing If-Match).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["items", "patch_bodies", "snapshot_bodies"]

items = st.lists(st.integers(0, 3).map(lambda n: {"n": n}), max_size=3)


@st.composite
def snapshot_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid snapshot without its runId."""
    snapshot: dict[str, Any] = {
        "status": draw(st.sampled_from(["running", "completed"])),
        "startedAt": draw(st.sampled_from([1, 2])),
        "input": "q",
        "trace": draw(items),
        "usage": {},
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
    }
    if draw(st.booleans()):
        snapshot["completedAt"] = 5
    if draw(st.booleans()):
        snapshot["history"] = draw(items)
    if draw(st.booleans()):
        snapshot["plan"] = {"p": draw(st.integers(0, 2))}
    return snapshot


@st.composite
def patch_bodies(draw: st.DrawFn, starts: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A valid PATCH body, its traceFrom and historyFrom drawn from ``starts``."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["trace"] = draw(items)
        body["traceFrom"] = draw(starts)
    choice = draw(st.sampled_from(["none", "append", "clear"]))
    if choice == "append":
        body["history"] = draw(items)
        body["historyFrom"] = draw(starts)
    elif choice == "clear":
        body["history"] = None
    if draw(st.booleans()):
        body["completedAt"] = draw(st.none() | st.just(9))
    if draw(st.booleans()):
        body["status"] = draw(st.sampled_from(["running", "failed"]))
    if draw(st.booleans()):
        body["plan"] = draw(st.none() | st.just({"p": 1}))
    if draw(st.booleans()):
        body["extra"] = draw(st.integers(0, 2))
    return body
