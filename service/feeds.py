"""What the event broker (:mod:`.events`) keeps per stream: the feeds of recent changes with
their server-sent events, each watcher's place in its feed, and the writer of a connection
that the broker may write to itself (module docstring of :mod:`.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from time import monotonic
from typing import Final, Protocol

from .store.changes import Change

__all__ = ["DIRECT_WRITER", "Batch", "DirectWriter", "Feed", "Watcher", "sse_frame"]

# The key of the connection writer in an ASGI scope's "extensions" (runstore serve's
# protocol, service/connections.py, offers it on GET requests).
DIRECT_WRITER: Final = "runstore.direct_body"


class DirectWriter(Protocol):
    """Writes body bytes of a streaming answer straight to its connection."""

    def encode(self, body: bytes) -> bytes:
        """``body`` as written to the connection (the same for every connection: made once
        for all watchers)."""

    def write(self, encoded: bytes) -> bool:
        """Write ``encoded``; False, writing nothing, when the connection cannot take it now
        (closed, the answer not streaming, or the server paused writing to it)."""


def sse_frame(event: str, data: bytes, event_id: str | int | None = None) -> bytes:
    """One event: ``event:``, ``id:`` (if any) and ``data:`` lines (one per line of data)."""
    head = b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: " + str(event_id).encode() + b"\n"
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


# Batches kept per feed between appends: watchers are nearly all at one position (or a few).
MADE_LIMIT: Final = 8


class Batch:
    """What watchers at one position of a feed lack: the events, the position after them,
    whether their stream ends there, and the events as written to a connection (made once)."""

    __slots__ = ("after", "body", "encoded", "ends")

    def __init__(self, body: bytes, after: int, ends: bool) -> None:
        self.body = body
        self.after = after
        self.ends = ends
        self.encoded: bytes | None = None


class Feed:
    """The recent changes of one run (or of every run, for ``GET /events``), each with its
    event, numbered from 0 in the order published; ``end`` is the number published so far."""

    __slots__ = (
        "_made",
        "_made_at",
        "end",
        "ends_streams",
        "entries",
        "last_version",
        "limit",
        "version",
        "watchers",
    )

    def __init__(self, limit: int, *, ends_streams: bool) -> None:
        self.entries: deque[tuple[Change, bytes]] = deque()
        self.end = 0
        self.limit = limit
        # A run's stream ends after its run is finished or deleted; GET /events never does.
        self.ends_streams = ends_streams
        self.watchers: set[Watcher] = set()
        # The newest version of the run this replica has seen (streams' reads included), and
        # that of the newest entry (0 after a delete): entries rise in version between deletes.
        self.version = 0
        self.last_version = 0
        self._made: dict[tuple[int, frozenset[str]], Batch] = {}
        self._made_at = 0

    @property
    def start(self) -> int:
        """The number of the oldest entry kept."""
        return self.end - len(self.entries)

    def append(self, change: Change, frame: bytes) -> None:
        self.entries.append((change, frame))
        self.end += 1
        if len(self.entries) > self.limit:
            self.entries.popleft()

    def since(self, position: int, statuses: frozenset[str]) -> Batch:
        """The events after entry ``position`` (of these statuses, if any), up to the first
        that ends a stream: made once for all the watchers at ``position`` until the next
        append, whether the hand-out writes them or the streams' tasks take them."""
        if self._made_at != self.end or len(self._made) >= MADE_LIMIT:
            self._made.clear()
            self._made_at = self.end
        batch = self._made.get((position, statuses))
        if batch is None:
            batch = self._made[position, statuses] = self._batch(position, statuses)
        return batch

    def _batch(self, position: int, statuses: frozenset[str]) -> Batch:
        frames: list[bytes] = []
        for change, frame in itertools.islice(self.entries, position - self.start, None):
            position += 1
            if statuses and change.kind != "deleted" and change.status not in statuses:
                continue
            frames.append(frame)
            if self.ends_streams and change.finished:
                return Batch(b"".join(frames), position, True)
        return Batch(b"".join(frames), position, False)

    def trim(self) -> None:
        """Drop the entries every watcher has been given."""
        given = min((watcher.position for watcher in self.watchers), default=self.end)
        while self.entries and self.start < given:
            self.entries.popleft()


class Watcher:
    """One event stream's place in its feed, and how it is served (module docstring)."""

    __slots__ = (
        "_wakeup",
        "attached",
        "closed",
        "direct",
        "ended",
        "feed",
        "position",
        "resync",
        "resync_after",
        "sent_at",
        "statuses",
    )

    def __init__(
        self, feed: Feed, statuses: frozenset[str] = frozenset(), direct: DirectWriter | None = None
    ) -> None:
        self.feed = feed
        # Entries of the feed handed to this stream so far (those before it opened included).
        self.position = feed.end
        # For a watcher of all runs: the statuses it follows (empty: every status).
        self.statuses = statuses
        self.direct = direct
        # True while the broker writes to the connection itself; the stream's task then sends
        # nothing but keep-alive comments.
        self.attached = False
        # Its position fell off the feed: a read of the run that began when the feed's end was
        # at least ``resync_after`` holds what it missed.
        self.resync = False
        self.resync_after = 0
        self.ended = False  # its stream's last event was handed out
        self.closed = False  # the stream is over, or the server is stopping
        # When events last went out to it (time.monotonic()): keep-alives fill silences only.
        self.sent_at = monotonic()
        self._wakeup = asyncio.Event()

    def has_work(self) -> bool:
        """Whether the stream's task has something to do."""
        if self.closed or self.ended or self.resync:
            return True
        return not self.attached and self.position < self.feed.end

    def wake(self) -> None:
        self._wakeup.set()

    def let_go(self) -> None:
        """The broker stops writing for this watcher; its task takes over."""
        self.attached = False
        self._wakeup.set()

    def close(self) -> None:
        """Its stream is over, or the server is stopping: its task sends what it has been
        handed and ends."""
        self.closed = True
        self.let_go()

    async def wait(self, seconds: float) -> bool:
        """Wait for work for the stream's task; False once the stream has been silent for
        ``seconds`` (the caller then sends a keep-alive, which counts as sent)."""
        while not self.has_work():
            silence = self.sent_at + seconds - monotonic()
            if silence <= 0:
                self.sent_at = monotonic()
                return False
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(silence):
                    await self._wakeup.wait()
        return True
