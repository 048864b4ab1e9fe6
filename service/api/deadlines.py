"""Deadlines for awaits on the event loop, watched by one timer per loop.

``asyncio.timeout`` arms and disarms a timer of the loop's for every await it guards; for a
body read on every write, that showed up as several percent of a PATCH's CPU under load. Here an
await costs a dict entry, and the timer is armed only for the earliest deadline, so it fires
about once per timeout period. Cancellation is decided as ``asyncio.timeout`` decides it: the
deadline's own cancellation becomes TimeoutError and the task goes on; any other passes through.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["within"]

T = TypeVar("T")


class _Deadlines:
    """The awaits in progress on one event loop, each with its deadline, watched by one timer
    that cancels the tasks that pass theirs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waits: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any], seconds: float) -> None:
        deadline = self._loop.time() + seconds
        self._waits[task] = deadline
        if self._timer is None or deadline < self._timer.when():
            self._arm(deadline)

    def finish(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``'s await; True if its deadline passed and it was cancelled for it."""
        del self._waits[task]
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._loop.time()
        next_deadline: float | None = None
        for task, deadline in list(self._waits.items()):
            if deadline <= now:
                if task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            elif next_deadline is None or deadline < next_deadline:
                next_deadline = deadline
        if next_deadline is not None:
            self._arm(next_deadline)


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


def deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    """The deadlines watched on ``loop``."""
    deadlines = _per_loop.get(loop)
    if deadlines is None:
        deadlines = _per_loop[loop] = _Deadlines(loop)
    return deadlines


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, or TimeoutError once ``seconds`` have passed, with the current task
    no longer cancelling, so that it can go on to answer."""
    task = asyncio.current_task()
    assert task is not None
    deadlines = deadlines_of(task.get_loop())
    cancelling = task.cancelling()
    deadlines.start(task, seconds)
    try:
        result = await awaitable
    except asyncio.CancelledError:
        if deadlines.finish(task) and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    except BaseException:
        deadlines.finish(task)
        raise
    deadlines.finish(task)
    return result
