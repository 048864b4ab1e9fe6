"""The few names in which the awaited and the blocking code differ.

The async modules (:mod:`._async_client`, :mod:`._async_persistence`) are the source; the
blocking ones are generated from them by ``scripts/generate_sync.py``, which renames each
``Async``/``async_`` name here to its blocking twin. Everything that waits or is handed a
callable goes through these names, so a generated module holds no awaitable type and no
event-loop call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio

from ._wire import StoredSnapshot, Write
from .models import WriteAck

__all__ = [
    "AsyncClose",
    "AsyncReadRun",
    "AsyncSendWrite",
    "Close",
    "ReadRun",
    "SendWrite",
    "async_sleep",
    "sleep",
]

# What the persistence hooks are handed: send one write, read one run, close what they own.
SendWrite = Callable[[Write], WriteAck]
AsyncSendWrite = Callable[[Write], Awaitable[WriteAck]]
ReadRun = Callable[[str], StoredSnapshot | None]
AsyncReadRun = Callable[[str], Awaitable[StoredSnapshot | None]]
Close = Callable[[], None]
AsyncClose = Callable[[], Awaitable[None]]


def sleep(seconds: float) -> None:
    """Wait between two attempts, blocking the thread."""
    time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """Wait between two attempts on whichever event loop runs (asyncio or trio)."""
    await anyio.sleep(seconds)
