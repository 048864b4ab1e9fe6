"""Limits on what one write may hold: items per write, and bytes of bodies held at once.

- **Items per write** (``RUNSTORE_MAX_ITEMS_PER_WRITE``): a body's size limit alone lets one
  PUT carry millions of one-character steps, each a row to write and, later, to delete (issue
  14: 8 million steps in 16 MB held every other writer for 10 s). The ``trace`` and ``history``
  items one request sends are counted together; over the limit, 413 ``too-many-items``.
- **Body memory** (``RUNSTORE_MAX_BODY_MEMORY``): every body being read, parsed or written holds
  its bytes (and, parsed, several times as much). :class:`BodyBudget` reserves a body's bytes
  before they are read and gives them back when the request is answered; a body that would pass
  the budget is answered 503 ``server-busy`` with ``Retry-After`` (the client retries it), so
  many large bodies at once cannot run the process out of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runstore.client.problems import ServerBusy, TooManyItems

__all__ = ["BodyBudget", "check_items"]


def check_items(body: Any, limit: int) -> None:
    """TooManyItems if ``body`` sends more ``trace`` and ``history`` items than ``limit``."""
    if not isinstance(body, dict):
        return
    sent = sum(
        len(items) for name in ("trace", "history") if isinstance(items := body.get(name), list)
    )
    if sent > limit:
        raise TooManyItems(
            f"The body sends {sent} trace and history items; one write may send at most "
            f"{limit}. Send them in several PATCHes (traceFrom, historyFrom)."
        )


class BodyBudget:
    """Bytes of request bodies held at once, up to ``limit``. Used on the event loop only, so
    no lock is needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or ServerBusy if that would pass the budget."""
        if self.held + size > self.limit:
            raise ServerBusy(
                f"The server holds {self.held} bytes of request bodies, near its budget of "
                f"{self.limit}; try again shortly."
            )
        self.held += size

    @contextmanager
    def holding(self) -> Iterator[BodyHold]:
        """A hold that grows as a body is read and is given back on exit."""
        hold = BodyHold(self)
        try:
            yield hold
        finally:
            self.held -= hold.size


class BodyHold:
    """The bytes one request holds of a :class:`BodyBudget`."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        if size > self.size:
            self.budget.take(size - self.size)
            self.size = size
