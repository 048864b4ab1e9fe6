"""Connection-level limits: what uvicorn's httptools protocol leaves to the application.

uvicorn (0.54) with httptools has no limit on the size of a request head and no deadline for
receiving one: httptools buffers a header as it arrives, at a cost that grows with the square of
its length, with the event loop blocked (issue 14). :class:`GuardedProtocol` is uvicorn's own
``HttpToolsProtocol`` (``--http`` takes a protocol class), with four checks added before any
byte reaches the parser or the application:

- **Head size**: bytes of a request head are counted as they arrive; past
  ``max_head_bytes`` without the blank line that ends a head, the connection is answered 431
  and closed. The parser never holds more than the limit, so the cost per byte is constant.
- **Head deadline**: from the first byte of a head (or from the connection's opening), the
  whole head must arrive within ``head_timeout`` seconds; otherwise 408 and close (a connection
  that sent nothing is closed without an answer). Idle keep-alive connections are closed by
  uvicorn's ``timeout_keep_alive``; the body's deadline is the application's (``body_timeout``).
- **Connection cap**: a connection opened past ``max_connections`` is answered 503 with
  ``Retry-After`` and closed at once, so a flood of silent connections cannot exhaust the
  process's file descriptors for the clients already connected.
- **Host**: an HTTP/1.1 request without ``Host`` is answered 400 (RFC 9112 section 3.2).

It also offers GET requests the ASGI extension ``runstore.direct_body`` (:class:`DirectBody`):
the event broker writes an event to a thousand streams' connections itself, instead of waking
a thousand tasks to pass it through ``send`` (issue 13).

The answers are problem+json, like the application's, built from the classes of
:mod:`runstore.client.problems`, each with a new request id (``X-Request-Id`` and
``requestId``), logged with the refusal.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any, ClassVar, Final

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from runstore.client.problems import (
    BadRequest,
    HeadTooLarge,
    RequestTimeout,
    RunStoreError,
    ServerBusy,
)

from .api.instrument import new_request_id
from .api.problems import PROBLEM_MEDIA_TYPE
from .feeds import DIRECT_WRITER

__all__ = ["DirectBody", "GuardedProtocol", "guarded_protocol", "problem_bytes"]

_REASONS: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
# A refused connection's further input is read and dropped until the client has sent nothing
# for _DRAIN_QUIET_SECONDS, or for _DRAIN_MAX_SECONDS at the most, then the connection closes.
_DRAIN_QUIET_SECONDS: Final = 2.0
_DRAIN_MAX_SECONDS: Final = 30.0
# A head ends with an empty line; httptools (llhttp) also takes a bare LF as a line end.
_HEAD_ENDS: Final = (b"\r\n\r\n", b"\n\n")


def problem_bytes(error: RunStoreError, request_id: str) -> bytes:
    """A whole HTTP/1.1 answer to ``error`` that closes the connection."""
    details = type(error).problem_details(error.detail)
    details["requestId"] = request_id
    body = json.dumps(details, separators=(",", ":")).encode()
    status: int = details["status"]
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: " + PROBLEM_MEDIA_TYPE.encode(),
        b"content-length: %d" % len(body),
        b"x-request-id: " + request_id.encode(),
        b"connection: close",
    ]
    if status == 503:
        lines.append(b"retry-after: 1")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class DirectBody:
    """Writes body chunks of a request's streaming answer straight to its connection: the
    ASGI extension ``runstore.direct_body`` (:class:`~.events.DirectWriter`). It writes only
    while the answer is what ``send`` would add chunks to: started by the app, in chunked
    encoding and not complete, the connection open and not paused by flow control (its
    output over the transport's high-water mark); otherwise the caller uses ``send``, which
    waits for the connection to drain."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weak: the cycle holds the scope, which holds this; a strong reference would make
        # every GET's scope and cycle garbage that only the cyclic collector frees, in pauses
        # that showed in GET latency (p99 twice as high under load).
        self._cycle = weakref.ref(cycle)

    def encode(self, body: bytes) -> bytes:
        """``body`` as one HTTP/1.1 chunk, as uvicorn frames what ``send`` is given."""
        return b"%x\r\n%b\r\n" % (len(body), body)

    def write(self, encoded: bytes) -> bool:
        cycle = self._cycle()
        if (
            cycle is None
            or not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or not cycle.chunked_encoding
            or cycle.flow.write_paused
            or cycle.transport.is_closing()
        ):
            return False
        cycle.transport.write(encoded)
        return True


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is the protocol's."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head-size limit, a head deadline, a connection cap
    and the Host check; the limits are class attributes (see :func:`guarded_protocol`)."""

    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        # When the head in progress began (None between heads), and the one timer that
        # watches it: the timer stays armed from head to head and, when it fires early for the
        # head then in progress, is armed again for that head's deadline. Arming and cancelling
        # a timer for every request costs more than the rest of this class's checks.
        self._head_started: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._messages_completed = 0
        self._refusal: RunStoreError | None = None
        self._draining = False
        # While draining: when input last arrived, and when the drain ends whatever arrives.
        self._drained_at = 0.0
        self._drain_until = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.logger.warning("Refused a connection: %d are open.", len(self.connections) - 1)
            self._refuse(
                ServerBusy(
                    f"The server has {self.max_connections} connections open, its limit; "
                    "try again shortly."
                ),
                drain=False,
            )
            return
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            self._drained_at = self.loop.time()
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            if self._head_started is None:
                self._start_head()
            if self._head_bytes + len(data) > self.max_head_bytes and not self._head_ends_within(
                data
            ):
                self._refuse(
                    HeadTooLarge(
                        f"The request line and headers are over the limit of "
                        f"{self.max_head_bytes} bytes."
                    )
                )
                return
        completed = self._messages_completed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(BadRequest("The request is not valid HTTP/1.1."))
            return
        if self._in_head:
            # A message completed in this chunk: what follows it is the next head, whose bytes
            # are not told apart from the earlier ones; count it from the next chunk.
            if completed != self._messages_completed:
                self._head_bytes, self._head_tail = 0, b""
            else:
                self._head_bytes += len(data)
                self._head_tail = (self._head_tail + data)[-3:]

    def _head_ends_within(self, data: bytes) -> bool:
        """True if the head ends in ``data`` within the bytes the limit still allows."""
        allowed = self._head_tail + data[: max(self.max_head_bytes - self._head_bytes, 0)]
        return any(end in allowed for end in _HEAD_ENDS)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = None
        if self.parser.get_http_version() == "1.1" and not any(
            name == b"host" for name, _ in self.headers
        ):
            self._refusal = BadRequest("An HTTP/1.1 request needs a Host header.")
            raise _Refused
        super().on_headers_complete()
        cycle = self.cycle
        # Only the event routes' GET answers stream (.../events); the app runs from the next
        # turn of the loop, so the scope can still be added to.
        scope = self.scope
        if (
            scope["method"] == "GET"
            and scope["path"].endswith("/events")
            and cycle is not None
            and cycle.scope is scope
        ):
            scope.setdefault("extensions", {})[DIRECT_WRITER] = DirectBody(cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes, self._head_tail = 0, b""
        self._messages_completed += 1
        super().on_message_complete()

    def _start_head(self) -> None:
        self._head_started = self.loop.time()
        if self._head_timer is None:
            self._arm_head_timer(self._head_started + self.head_timeout)

    def _arm_head_timer(self, deadline: float) -> None:
        self._head_timer = self.loop.call_at(deadline, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        started = self._head_started
        if started is None or self.transport.is_closing():
            return  # no head in progress: the next one arms the timer again
        deadline = started + self.head_timeout
        if self.loop.time() < deadline:
            self._arm_head_timer(deadline)  # armed for an earlier head
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            # Nothing of a request came: there is no one to answer.
            self.transport.close()
            return
        self._refuse(
            RequestTimeout(
                f"The request line and headers did not arrive within {self.head_timeout:g} seconds."
            )
        )

    def _refuse(self, error: RunStoreError, *, drain: bool = True) -> None:
        """Answer ``error`` and close. With ``drain``, what the client is still sending is
        read and dropped, unparsed, until it stops (a "lingering close", as nginx does): closing
        a socket with unread input sends a reset, which may destroy the answer before the
        client reads it, and a client still sending a large head when the answer comes reads
        it only once it has sent everything."""
        self._disarm_head_timer()
        if self.transport.is_closing():
            return
        # The request, whose head may be incomplete, is not read for an id of its own.
        request_id = new_request_id()
        self.logger.info(
            "Answered %d and closed the connection: %s",
            error.status,
            error.detail,
            extra={"request_id": request_id, "status": error.status},
        )
        self.transport.write(problem_bytes(error, request_id))
        if drain and self.transport.can_write_eof():
            self._draining = True
            self._drained_at = self.loop.time()
            self._drain_until = self._drained_at + _DRAIN_MAX_SECONDS
            self.transport.write_eof()
            self.loop.call_later(_DRAIN_QUIET_SECONDS, self._end_drain)
        else:
            self.transport.close()

    def _end_drain(self) -> None:
        """Close the refused connection if its client has gone quiet or its time is up; else
        look again when it would be."""
        if self.transport.is_closing():
            return
        now = self.loop.time()
        quiet_at = self._drained_at + _DRAIN_QUIET_SECONDS
        if now >= quiet_at or now >= self._drain_until:
            self.transport.close()
        else:
            self.loop.call_at(min(quiet_at, self._drain_until), self._end_drain)


def guarded_protocol(
    *, max_head_bytes: int, head_timeout: float, max_connections: int
) -> type[GuardedProtocol]:
    """A :class:`GuardedProtocol` class with these limits, to pass to uvicorn as ``http``."""
    return type(
        "GuardedProtocol",
        (GuardedProtocol,),
        {
            "max_head_bytes": max_head_bytes,
            "head_timeout": head_timeout,
            "max_connections": max_connections,
        },
    )
