"""The span of a group commit, shared by both backends' writers (OpenTelemetry, when tracing).

A commit serves the writes of many requests, and a span has one parent: the commit's span is a
child of its first write's span (``runstore.store.write``) and linked from the others'. It is
made once the commit is over, with the time it began, so an untraced commit costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, Tracer

__all__ = ["commit_span"]


def commit_span(tracer: Tracer, contexts: Iterable[SpanContext | None], started_ns: int) -> None:
    """Record ``runstore.store.commit``, from ``started_ns`` to now, for the writes whose span
    contexts are ``contexts`` (None: an untraced write, such as a blocking one)."""
    from opentelemetry import trace

    all_writes = list(contexts)
    traced = [context for context in all_writes if context is not None]
    if not traced:
        return
    span = tracer.start_span(
        "runstore.store.commit",
        context=trace.set_span_in_context(trace.NonRecordingSpan(traced[0])),
        links=[trace.Link(context) for context in traced[1:]],
        start_time=started_ns,
        attributes={"runstore.writes": len(all_writes)},
    )
    span.end()
