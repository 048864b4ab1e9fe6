"""What the blocking and the async transport share beyond the protocol: limits, the signal of
a stale connection, and the responses they return (httpx's, or the clients' lighter Answer)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import httpx

from ._http11 import ResponseParser

__all__ = [
    "DEFAULT_LIMITS",
    "Answer",
    "PoolBounds",
    "StaleConnection",
    "make_response",
    "take_idle",
]

# httpx's defaults. The server (uvicorn) closes a connection idle for 5 s.
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0
)


@dataclass(frozen=True, slots=True)
class PoolBounds:
    """``httpx.Limits`` as numbers a pool compares with: no limit is infinite."""

    max_connections: float
    max_idle: float
    expiry: float

    @classmethod
    def of(cls, limits: httpx.Limits) -> PoolBounds:
        max_connections = math.inf if limits.max_connections is None else limits.max_connections
        return cls(
            max_connections=max_connections,
            max_idle=(
                max_connections
                if limits.max_keepalive_connections is None
                else limits.max_keepalive_connections
            ),
            expiry=math.inf if limits.keepalive_expiry is None else limits.keepalive_expiry,
        )


class IdleConnection(Protocol):
    origin: tuple[str, int]
    idle_since: float


C = TypeVar("C", bound=IdleConnection)


def take_idle(
    idle: list[C], origin: tuple[str, int], expiry: float, closed_by_peer: Callable[[C], bool]
) -> tuple[C | None, list[C]]:
    """Take the most recently idle connection to ``origin`` that is fit to use out of ``idle``;
    those passed over on the way (idle too long, or closed by the server) are taken out too, and
    returned for the caller to close."""
    now = time.monotonic()
    unfit: list[C] = []
    for index in range(len(idle) - 1, -1, -1):
        connection = idle[index]
        if connection.origin != origin:
            continue
        del idle[index]
        if now - connection.idle_since > expiry or closed_by_peer(connection):
            unfit.append(connection)
            continue
        return connection, unfit
    return None, unfit


class StaleConnection(Exception):
    """A kept-alive connection the server had closed before the request reached it.

    Raised only when nothing of an answer came back on a connection that had carried a response
    before, so the server cannot have processed the request: it may go again on a new one.
    """


def make_response(parser: ResponseParser) -> httpx.Response:
    """The httpx response a complete :class:`ResponseParser` describes."""
    return httpx.Response(
        parser.status,
        headers=parser.headers,
        stream=httpx.ByteStream(parser.body()),
        extensions={"http_version": parser.http_version, "reason_phrase": parser.reason},
    )


class Answer:
    """A complete response as the clients read it: status, reason, headers and content, the
    part of ``httpx.Response`` they use, without building one (which costs more than parsing).

    Header names are matched without regard to case; a name sent more than once reads as its
    values joined by commas, as ``httpx.Headers.get`` reads it.
    """

    __slots__ = ("_headers", "_raw_headers", "content", "reason_phrase", "status_code")

    def __init__(self, parser: ResponseParser) -> None:
        self.status_code = parser.status
        self.reason_phrase = parser.reason.decode("latin-1")
        self.content = parser.body()
        self._raw_headers = parser.headers
        self._headers: _Headers | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            headers = _Headers()
            for name, value in self._raw_headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = (
                    f"{dict.__getitem__(headers, key)}, {text}" if key in headers else text
                )
            self._headers = headers
        return self._headers


class _Headers(dict[str, str]):
    """Header values by lower-case name, looked up whatever the case asked for."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)
