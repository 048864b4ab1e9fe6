"""The blocking transport: HTTP/1.1 over plain sockets, with a keep-alive pool."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

import httpx

from ._common import DEFAULT_LIMITS, PoolBounds, StaleConnection, make_response, take_idle
from ._http11 import ResponseParser, encode_request, origin_of

__all__ = ["Http11Transport"]

_RECEIVE_SIZE: Final = 64 * 1024
_WATCH: Final = getattr(select, "POLLIN", 1) | getattr(select, "POLLPRI", 2)


class _Connection:
    """One socket to the server, used by one request at a time."""

    __slots__ = ("_poller", "_timeout", "idle_since", "origin", "sock", "used")

    def __init__(self, origin: tuple[str, int], timeout: float | None) -> None:
        self.origin = origin
        try:
            sock = socket.create_connection(origin, timeout=timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        self.sock = sock
        with contextlib.suppress(OSError):  # not a TCP socket
            # The request goes in one write; do not hold its last segment back (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timeout = timeout
        self._poller = select.poll() if hasattr(select, "poll") else None
        if self._poller is not None:
            self._poller.register(sock, _WATCH)
        self.idle_since = 0.0
        # Whether a response has come back on it: only then can it have gone stale.
        self.used = False

    def close(self) -> None:
        self.sock.close()

    def readable(self) -> bool:
        """Whether the idle socket has something to read: the server closed it (or sent
        bytes it should not have); either way it cannot carry a request."""
        if self._poller is not None:
            return bool(self._poller.poll(0))
        return bool(select.select([self.sock], [], [], 0)[0])

    def _settimeout(self, timeout: float | None) -> None:
        # Each settimeout is a system call; read and write timeouts are usually equal.
        if timeout != self._timeout:
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def exchange(
        self, payload: tuple[bytes, bytes], timeouts: Mapping[str, Any], *, skip_body: bool
    ) -> ResponseParser:
        """Send one request and read its response.

        StaleConnection (from a used connection, before any byte of an answer): the server
        had closed it, so the request was not processed and may go on a new connection.
        """
        sock = self.sock
        parser = ResponseParser(skip_body=skip_body)
        try:
            self._settimeout(timeouts.get("write"))
            sock.sendall(payload[0])
            if payload[1]:
                sock.sendall(payload[1])
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            # The server may have answered and closed early (413 to a large body): read that.
            write_error: OSError | None = exc
        else:
            write_error = None
        self._settimeout(timeouts.get("read"))
        try:
            while not parser.feed(sock.recv(_RECEIVE_SIZE)):
                pass
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from exc
        except (OSError, httpx.RemoteProtocolError) as exc:
            if parser.received == 0 and (self.used or write_error is not None):
                if self.used:
                    raise StaleConnection from write_error or exc
                assert write_error is not None
                raise httpx.WriteError(str(write_error)) from write_error
            if isinstance(exc, httpx.RemoteProtocolError):
                raise
            raise httpx.ReadError(str(exc)) from exc
        if write_error is not None:
            parser.reusable = False
        self.used = True
        return parser


class Http11Transport(httpx.BaseTransport):
    """A lean HTTP/1.1 keep-alive transport for plain ``http://`` URLs, thread-safe.

    It writes each request in one system call and parses the response itself, which costs a
    fraction of the CPU of httpx's default transport (httpcore and h11). No TLS, no proxies, no
    HTTP/2: the clients use it only where none applies (see :func:`lean_transport_serves`).

    Connections are pooled per origin and reused last-in first-out; ``limits`` bounds them as
    httpx's do (``max_connections`` in use or idle, ``max_keepalive_connections`` idle,
    ``keepalive_expiry`` seconds idle). Timeouts come from the request (``connect``, ``read``,
    ``write``, ``pool``) and failures raise the httpx exceptions httpx's transport raises. A
    request that meets a kept-alive connection the server had closed goes again, once, on a
    new connection.
    """

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        bounds = PoolBounds.of(limits)
        self._max_connections = bounds.max_connections
        self._max_idle = bounds.max_idle
        self._expiry = bounds.expiry
        self._idle: list[_Connection] = []
        self._in_use = 0
        self._closed = False
        self._slot_freed = threading.Condition(threading.Lock())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"Http11Transport speaks plain http, not {request.url.scheme!r}"
            )
        payload = encode_request(request, request.read())
        timeouts: Mapping[str, Any] = request.extensions.get("timeout", {})
        parser = self.exchange(
            origin_of(request.url), payload, timeouts, skip_body=request.method == "HEAD"
        )
        return make_response(parser)

    def exchange(
        self,
        origin: tuple[str, int],
        payload: tuple[bytes, bytes],
        timeouts: Mapping[str, Any],
        *,
        skip_body: bool = False,
    ) -> ResponseParser:
        """A request already encoded (:func:`encode_head`) to ``origin``, and its complete
        answer: :meth:`handle_request` without httpx's Request and Response, for the clients."""
        connection = self._acquire(origin, timeouts)
        try:
            try:
                parser = connection.exchange(payload, timeouts, skip_body=skip_body)
            except StaleConnection:
                connection.close()
                connection = _Connection(origin, timeouts.get("connect"))
                parser = connection.exchange(payload, timeouts, skip_body=skip_body)
        except BaseException:
            connection.close()
            self._release(None)
            raise
        self._release(connection if parser.reusable else None)
        if not parser.reusable:
            connection.close()
        return parser

    def _acquire(self, origin: tuple[str, int], timeouts: Mapping[str, Any]) -> _Connection:
        """A slot in the pool, and an idle connection to ``origin`` or a new one."""
        with self._slot_freed:
            if self._closed:
                raise RuntimeError("The transport is closed")
            if self._in_use >= self._max_connections:
                timeout = timeouts.get("pool")
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._in_use >= self._max_connections:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise httpx.PoolTimeout("No connection became free in time")
                    self._slot_freed.wait(left)
            self._in_use += 1
            reuse, stale = take_idle(self._idle, origin, self._expiry, _Connection.readable)
        for connection in stale:
            connection.close()
        if reuse is not None:
            return reuse
        try:
            return _Connection(origin, timeouts.get("connect"))
        except BaseException:
            self._release(None)
            raise

    def _release(self, connection: _Connection | None) -> None:
        """Give the slot back, and keep ``connection`` for reuse if there is room."""
        excess: _Connection | None = None
        with self._slot_freed:
            self._in_use -= 1
            self._slot_freed.notify()
            if connection is not None:
                if self._closed:
                    excess = connection
                else:
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                    if len(self._idle) > self._max_idle:
                        # The longest idle goes: reuse is last-in first-out.
                        excess = self._idle.pop(0)
        if excess is not None:
            excess.close()

    def close(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        with self._slot_freed:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
