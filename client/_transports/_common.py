"""What the blocking and the async transport share beyond the protocol: limits, the signal of
a stale connection, and the httpx response they return."""

from __future__ import annotations

from typing import Final

import httpx

from ._http11 import ResponseParser

__all__ = ["DEFAULT_LIMITS", "StaleConnection", "make_response"]

# httpx's defaults. The server (uvicorn) closes a connection idle for 5 s.
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0
)


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
