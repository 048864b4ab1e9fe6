"""The few names in which the awaited and the blocking code differ.

The async modules (:mod:`._async_client`, :mod:`._async_persistence`) are the source; the
blocking ones are generated from them by ``scripts/generate_sync.py``, which renames each
``Async``/``async_`` name here to its blocking twin. Everything that waits or is handed a
callable goes through these names, so a generated module holds no awaitable type and no
event-loop call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import anyio

from ._wire import StoredSnapshot, Write
from .models import Lease, WriteAck

__all__ = [
    "AcquireLease",
    "AsyncAcquireLease",
    "AsyncClose",
    "AsyncReadRun",
    "AsyncReleaseLease",
    "AsyncRenewer",
    "AsyncSendWrite",
    "Close",
    "ReadRun",
    "ReleaseLease",
    "Renewer",
    "SendWrite",
    "async_sleep",
    "sleep",
]

log = logging.getLogger("runstore.client")

# What the persistence hooks are handed: send one write, read one run, close what they own.
SendWrite = Callable[[Write], WriteAck]
AsyncSendWrite = Callable[[Write], Awaitable[WriteAck]]
ReadRun = Callable[[str], StoredSnapshot | None]
AsyncReadRun = Callable[[str], Awaitable[StoredSnapshot | None]]
Close = Callable[[], None]
AsyncClose = Callable[[], Awaitable[None]]
# Take (lease None) or renew lease n on a run: (run id, holder, ttl in ms, n) -> the lease.
AcquireLease = Callable[[str, str, int, int | None], Lease]
AsyncAcquireLease = Callable[[str, str, int, int | None], Awaitable[Lease]]
# Release lease n on a run: (run id, n).
ReleaseLease = Callable[[str, int], None]
AsyncReleaseLease = Callable[[str, int], Awaitable[None]]


class Renewer:
    """Calls ``renew`` every ``interval`` seconds on a daemon thread until it returns False or
    :meth:`stop` is called: the blocking hooks' lease renewer."""

    def __init__(self, renew: Callable[[], bool], interval: float, name: str) -> None:
        self._renew = renew
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if not self._renew():
                    return
            except Exception:  # a renewer must outlive any one failure; the next try may do
                log.exception("renewing a lease failed")

    def stop(self) -> None:
        """Stop renewing; returns once a renewal in flight has ended. Idempotent."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


class AsyncRenewer:
    """Calls ``renew`` every ``interval`` seconds in an asyncio task until it returns False or
    :meth:`stop` is awaited: the awaited hooks' lease renewer (it needs asyncio)."""

    def __init__(self, renew: Callable[[], Awaitable[bool]], interval: float, name: str) -> None:
        self._renew = renew
        self._interval = interval
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if not await self._renew():
                    return
            except Exception:  # a renewer must outlive any one failure; the next try may do
                log.exception("renewing a lease failed")

    async def stop(self) -> None:
        """Stop renewing (a renewal in flight is cancelled). Idempotent."""
        task, self._task = self._task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sleep(seconds: float) -> None:
    """Wait between two attempts, blocking the thread."""
    time.sleep(seconds)


async def async_sleep(seconds: float) -> None:
    """Wait between two attempts on whichever event loop runs (asyncio or trio)."""
    await anyio.sleep(seconds)
