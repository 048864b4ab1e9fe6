"""Parsing a large body on a worker thread, so the event loop serves other requests meanwhile.

Parsing and checking a body takes time in proportion to its size, and on the event loop it holds
every other request for that long (issue 14: an 8 MB PUT held the server for its whole parse).
A body of :data:`THREAD_PARSE_BYTES` or more is parsed on one of anyio's worker threads; a
smaller one inline, where the hop to a thread and back would cost more than the parse (the
common PATCH carries a few KiB).

The thread shares the GIL with the loop: the parser's C calls hold it, its Python parts give it
up every switch interval, so the loop still answers between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from anyio import to_thread

__all__ = ["THREAD_PARSE_BYTES", "parse_body"]

T = TypeVar("T")

THREAD_PARSE_BYTES: Final = 256 * 1024


async def parse_body(raw: bytes, parse: Callable[[bytes], T]) -> T:
    """``parse(raw)``, on a worker thread when ``raw`` is large."""
    if len(raw) < THREAD_PARSE_BYTES:
        return parse(raw)
    return await to_thread.run_sync(parse, raw)
