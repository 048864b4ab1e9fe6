"""Parsing a large body on a worker thread, so the event loop serves other requests meanwhile.

Parsing and checking a body takes time in proportion to its size, and on the event loop it holds
every other request for that long (issue 14: an 8 MB PUT held the server for its whole parse).
:func:`.body.read_parsed` parses a body of :data:`THREAD_PARSE_BYTES` or more with
:func:`on_thread`, and a smaller one inline, where the hop to a thread and back would cost more
than the parse (the common PATCH carries a few KiB).

The thread shares the GIL with the loop: the parser's C calls hold it, its Python parts give it
up every switch interval, so the loop answers other requests between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar, TypeVarTuple, Unpack

from anyio import to_thread

__all__ = ["THREAD_PARSE_BYTES", "on_thread"]

T = TypeVar("T")
Args = TypeVarTuple("Args")

THREAD_PARSE_BYTES: Final = 256 * 1024


async def on_thread(parse: Callable[[Unpack[Args]], T], *args: *Args) -> T:
    """``parse(*args)`` on one of anyio's worker threads."""
    return await to_thread.run_sync(parse, *args)
