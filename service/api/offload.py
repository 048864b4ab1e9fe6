"""Parsing a large body in a worker process, so that the event loop serves other requests meanwhile.

Parsing and checking a body takes time in proportion to its size, and in the server's process it
holds every other request for that long: msgspec holds the GIL for its whole decode, and so do the
C calls that build the record (encoding each step, counting colons), so a parse on a worker
thread held the loop all the same. A PUT of 2,000,000 one-character steps, refused 413 for its
items, made concurrent writes wait ~160 ms, and a valid PUT of 8 MB of 4 KiB steps ~100 ms
(issue 14; figures in docs/performance.md). In another process the parse shares nothing with the
loop: the server hands over the bytes and takes back the record (one JSON text per step) or the
problem, and the refused body is never decoded in the server at all.

:func:`.body.read_parsed` sends a body of :data:`PROCESS_PARSE_BYTES` or more to the
:class:`BodyParser`, and parses a smaller one inline, where the hop to the process and back
would cost more than the parse (the common PATCH carries a few KiB).

One process parses one body at a time; others wait their turn. That bounds the memory large
parses take (a body of tiny items decodes to dozens of times its size) to one body's worth, and
large bodies are rare next to ordinary writes, which never wait for it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final, TypeVar, TypeVarTuple, Unpack

from runstore.client.problems import ServerBusy

__all__ = ["PROCESS_PARSE_BYTES", "BodyParser"]

T = TypeVar("T")
Args = TypeVarTuple("Args")

PROCESS_PARSE_BYTES: Final = 256 * 1024
PARSER_NICENESS: Final = 10


class BodyParser:
    """A worker process for parsing large bodies, started when the first one arrives (a server
    that never gets one never starts it) and ended by :meth:`close`.

    Used from the event loop only. If the process dies (killed for its memory, say), the body it
    was parsing is answered 503 with Retry-After and the next body starts a new process.
    """

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, parse: Callable[[Unpack[Args]], T], *args: *Args) -> T:
        """``parse(*args)`` in the worker process; ``parse`` must be a module's function."""
        if self._pool is None:
            # spawn: a fork would copy the server's threads' locks in whatever state they are.
            # Niced: where cores are few, the server's own process gets the CPU first.
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=os.nice,
                initargs=(PARSER_NICENESS,),
            )
        pool = self._pool
        try:
            return await asyncio.wrap_future(pool.submit(parse, *args))
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False)
            raise ServerBusy(
                "The process parsing large bodies stopped while it parsed this one; try again."
            ) from None

    async def close(self) -> None:
        """End the worker process, if it was started; safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
