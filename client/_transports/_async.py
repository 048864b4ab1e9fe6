"""The async transport: HTTP/1.1 as an asyncio protocol, with a keep-alive pool."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from ._common import DEFAULT_LIMITS, PoolBounds, StaleConnection, make_response, take_idle
from ._http11 import ResponseParser, encode_request, origin_of

__all__ = ["AsyncHttp11Transport"]


def _in_asyncio() -> bool:
    """Whether the caller is an asyncio task (not trio, nor trio run as an asyncio guest)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        return False


class _Connection(asyncio.Protocol):
    """One connection to the server, as an asyncio protocol, used by one request at a time.

    What arrives goes straight to the parser of the request in progress, so an answer that came
    before the connection broke (a 413 to a body the server would not read) is still whole.
    """

    def __init__(self, origin: tuple[str, int], loop: asyncio.AbstractEventLoop) -> None:
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        # Whether a response has come back on it: only then can it have gone stale.
        self.used = False
        # Closed, broken, or sent bytes nobody asked for: it can carry no further request.
        self.lost = False
        self.closed: asyncio.Future[None] = loop.create_future()
        self._parser: ResponseParser | None = None
        self._answered: asyncio.Future[None] | None = None
        self._read_deadline: asyncio.Timeout | None = None
        self._read_timeout: float | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, origin: tuple[str, int], limit: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                # asyncio sets TCP_NODELAY on TCP connections.
                _, connection = await loop.create_connection(lambda: cls(origin, loop), *origin)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return connection

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.close()
            return
        try:
            complete = parser.feed(data)
        except httpx.RemoteProtocolError as exc:
            self._settle(exc)
            return
        if complete:
            self._settle(None)
        elif self._read_deadline is not None and self._read_timeout is not None:
            # The read timeout bounds each wait for data, not the whole body.
            self._read_deadline.reschedule(self.loop.time() + self._read_timeout)

    def eof_received(self) -> bool | None:
        self.lost = True
        self._ended(None)
        return None  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._ended(exc)
        self._wake_writer()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _ended(self, exc: Exception | None) -> None:
        parser = self._parser
        if parser is None:
            return
        if exc is not None:
            self._settle(exc)
            return
        try:
            parser.feed(b"")
        except httpx.RemoteProtocolError as error:
            self._settle(error)
        else:
            self._settle(None)

    def _settle(self, exc: BaseException | None) -> None:
        self._parser = None
        answered = self._answered
        if answered is not None and not answered.done():
            if exc is None:
                answered.set_result(None)
            else:
                answered.set_exception(exc)

    # the transport's side

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            # abort, not close: close would first wait to send a backlog the server may never
            # read. Not on a loop that has closed (a client moved between event loops).
            with contextlib.suppress(RuntimeError):
                self.transport.abort()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(TimeoutError, RuntimeError):
            async with asyncio.timeout(5):
                await self.closed

    def stale(self) -> bool:
        """Whether the idle connection saw the server close it (or fail)."""
        transport = self.transport
        return (
            self.lost
            or transport is None
            or transport.is_closing()
            or self.loop is not asyncio.get_running_loop()
        )

    async def exchange(
        self, payload: tuple[bytes, bytes], timeouts: Mapping[str, Any], *, skip_body: bool
    ) -> ResponseParser:
        """Send one request and read its response; StaleConnection as the blocking one."""
        transport = self.transport
        assert transport is not None
        if self.lost or transport.is_closing():
            # Closed since it was checked; a write now would be dropped and never answered.
            if self.used:
                raise StaleConnection
            raise httpx.ConnectError("The connection closed before the request was sent")
        parser = self._parser = ResponseParser(skip_body=skip_body)
        answered = self._answered = self.loop.create_future()
        try:
            transport.write(payload[0])
            if payload[1]:
                transport.write(payload[1])
            if self._paused:
                await self._drain(timeouts.get("write"))
            self._read_timeout = timeouts.get("read")
            async with asyncio.timeout(self._read_timeout) as self._read_deadline:
                await answered
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from exc
        except (OSError, httpx.RemoteProtocolError) as exc:
            if parser.received == 0 and self.used:
                raise StaleConnection from exc
            if isinstance(exc, httpx.RemoteProtocolError):
                raise
            raise httpx.ReadError(str(exc)) from exc
        finally:
            self._parser = self._answered = self._read_deadline = None
        self.used = True
        return parser

    async def _drain(self, limit: float | None) -> None:
        """Wait until asyncio has handed the request's backlog to the kernel."""
        try:
            async with asyncio.timeout(limit):
                while self._paused and not self.lost and not self._answered_early():
                    self._drained = self.loop.create_future()
                    await self._drained
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "timed out") from exc
        finally:
            self._drained = None

    def _answered_early(self) -> bool:
        return self._answered is not None and self._answered.done()


class AsyncHttp11Transport(httpx.AsyncBaseTransport):
    """:class:`Http11Transport` for asyncio, as an asyncio protocol.

    The same pool, limits, timeouts, errors and retry of a stale connection. Under another async
    library (trio) every request goes through httpx's default async transport instead.
    """

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        bounds = PoolBounds.of(limits)
        self._max_connections = bounds.max_connections
        self._max_idle = bounds.max_idle
        self._expiry = bounds.expiry
        self._idle: list[_Connection] = []
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._fallback: httpx.AsyncHTTPTransport | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not _in_asyncio():
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport(limits=self._limits)
            return await self._fallback.handle_async_request(request)
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"AsyncHttp11Transport speaks plain http, not {request.url.scheme!r}"
            )
        payload = encode_request(request, await request.aread())
        timeouts: Mapping[str, Any] = request.extensions.get("timeout", {})
        skip_body = request.method == "HEAD"
        origin = origin_of(request.url)
        connection = await self._acquire(origin, timeouts)
        try:
            try:
                parser = await connection.exchange(payload, timeouts, skip_body=skip_body)
            except StaleConnection:
                connection.close()
                connection = await _Connection.open(origin, timeouts.get("connect"))
                parser = await connection.exchange(payload, timeouts, skip_body=skip_body)
        except BaseException:
            connection.close()
            self._release(None)
            raise
        if parser.reusable:
            self._release(connection)
        else:
            connection.close()
            self._release(None)
        return make_response(parser)

    async def _acquire(self, origin: tuple[str, int], timeouts: Mapping[str, Any]) -> _Connection:
        """A slot in the pool, and an idle connection to ``origin`` or a new one."""
        if self._closed:
            raise RuntimeError("The transport is closed")
        if self._in_use >= self._max_connections:
            await self._wait_for_slot(timeouts.get("pool"))
        self._in_use += 1
        reuse, unfit = take_idle(self._idle, origin, self._expiry, _Connection.stale)
        for connection in unfit:
            connection.close()
        if reuse is not None:
            return reuse
        try:
            return await _Connection.open(origin, timeouts.get("connect"))
        except BaseException:
            self._release(None)
            raise

    async def _wait_for_slot(self, limit: float | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                while self._in_use >= self._max_connections:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    except BaseException:
                        if waiter.done() and not waiter.cancelled():
                            # Woken for a slot it will not take: hand the wake-up on.
                            self._wake_one()
                        waiter.cancel()
                        raise
        except TimeoutError:
            raise httpx.PoolTimeout("No connection became free in time") from None

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: _Connection | None) -> None:
        """Give the slot back, and keep ``connection`` for reuse if there is room."""
        self._in_use -= 1
        self._wake_one()
        if connection is None:
            return
        if self._closed:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if len(self._idle) > self._max_idle:
            # The longest idle goes: reuse is last-in first-out.
            self._idle.pop(0).close()

    async def aclose(self) -> None:
        """Close every idle connection; those in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()
        fallback, self._fallback = self._fallback, None
        if fallback is not None:
            await fallback.aclose()
