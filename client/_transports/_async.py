"""The async transport: HTTP/1.1 over asyncio streams, with a keep-alive pool."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

import httpx

from ._common import DEFAULT_LIMITS, StaleConnection, make_response
from ._http11 import ResponseParser, encode_request, origin_of

__all__ = ["AsyncHttp11Transport"]

_RECEIVE_SIZE: Final = 64 * 1024


def _in_asyncio() -> bool:
    """Whether the caller is an asyncio task (not trio, nor trio run as an asyncio guest)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:
        return False


class _Connection:
    """One stream to the server, used by one request at a time, on one event loop."""

    __slots__ = ("idle_since", "loop", "origin", "reader", "used", "writer")

    def __init__(
        self, origin: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0
        self.used = False

    @classmethod
    async def open(cls, origin: tuple[str, int], limit: float | None) -> _Connection:
        try:
            async with asyncio.timeout(limit):
                # asyncio sets TCP_NODELAY on TCP streams.
                reader, writer = await asyncio.open_connection(*origin)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return cls(origin, reader, writer)

    def close(self) -> None:
        # Not on a loop that has closed (a client moved between event loops).
        with contextlib.suppress(RuntimeError):
            self.writer.close()

    async def aclose(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def stale(self) -> bool:
        """Whether the idle stream saw the server close it (or fail)."""
        return (
            self.reader.at_eof()
            or self.reader.exception() is not None
            or self.writer.is_closing()
            or self.loop is not asyncio.get_running_loop()
        )

    async def exchange(
        self, payload: tuple[bytes, bytes], timeouts: Mapping[str, Any], *, skip_body: bool
    ) -> ResponseParser:
        """Send one request and read its response; StaleConnection as the blocking one."""
        parser = ResponseParser(skip_body=skip_body)
        writer = self.writer
        write_error: OSError | None = None
        try:
            writer.write(payload[0])
            if payload[1]:
                writer.write(payload[1])
            # Usually the kernel took it all at once; only a backlog needs waiting for.
            if writer.transport.get_write_buffer_size():
                async with asyncio.timeout(timeouts.get("write")):
                    await writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "timed out") from exc
        except OSError as exc:
            # The server may have answered and closed early (413 to a large body): read that.
            write_error = exc
        read_timeout = timeouts.get("read")
        reader = self.reader
        try:
            async with asyncio.timeout(read_timeout) as deadline:
                while not parser.feed(await reader.read(_RECEIVE_SIZE)):
                    if read_timeout is not None:
                        # The timeout bounds each wait for data, not the whole body.
                        deadline.reschedule(self.loop.time() + read_timeout)
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


class AsyncHttp11Transport(httpx.AsyncBaseTransport):
    """:class:`Http11Transport` for asyncio, over asyncio streams.

    The same pool, limits, timeouts, errors and retry of a stale connection. Under another async
    library (trio) every request goes through httpx's default async transport instead.
    """

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._max_connections = limits.max_connections or 2**31
        self._max_idle = (
            self._max_connections
            if limits.max_keepalive_connections is None
            else limits.max_keepalive_connections
        )
        self._expiry = math.inf if limits.keepalive_expiry is None else limits.keepalive_expiry
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
        now = time.monotonic()
        idle = self._idle
        for index in range(len(idle) - 1, -1, -1):
            connection = idle[index]
            if connection.origin != origin:
                continue
            del idle[index]
            if now - connection.idle_since > self._expiry or connection.stale():
                connection.close()
                continue
            return connection
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
