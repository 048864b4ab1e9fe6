"""Reading request bodies: JSON media type (unencoded), size limit, memory budget and deadline.

A body is read in chunks and refused with 413 as soon as it passes the limit, whatever
``Content-Length`` claimed, and with 408 when it has not arrived within the deadline. Parsing it
is :mod:`.parsers`' job; :func:`read_parsed` reads a body with the server's limits and hands it
to a parser, on the event loop or, for a large body, in the parser process (:mod:`.offload`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, TypeVar, TypeVarTuple, Unpack

from starlette.requests import ClientDisconnect, Request

from runstore.client.problems import (
    BadRequest,
    BodyTooLarge,
    MalformedJson,
    RequestTimeout,
    UnsupportedMediaType,
)

from ..config import Settings
from .deadlines import within
from .headers import header
from .limits import BodyHold
from .offload import PROCESS_PARSE_BYTES
from .request_state import body_parser_of

__all__ = ["read_body", "read_parsed"]

T = TypeVar("T")
Args = TypeVarTuple("Args")

_JSON_MEDIA: Final = re.compile(r"^application/(?:[\w.+-]+\+)?json$", re.IGNORECASE)


def _check_media_type(request: Request) -> None:
    encoding = header(request, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding.strip()[:40]!r} is not supported; send the body "
            "unencoded (identity)."
        )
    content_type = header(request, b"content-type")
    if content_type == "application/json":
        return
    if content_type is None:
        raise UnsupportedMediaType("Send the body as JSON with Content-Type: application/json.")
    media, _, params = content_type.partition(";")
    if not _JSON_MEDIA.match(media.strip()):
        raise UnsupportedMediaType(
            f"Content-Type {media.strip()[:100]!r} is not JSON; send application/json.",
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise UnsupportedMediaType("JSON bodies must be UTF-8.")


async def _read_limited(request: Request, limit: int, hold: BodyHold | None) -> bytes:
    declared = header(request, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number.") from None
        if size > limit:
            raise BodyTooLarge(
                f"The body is {size} bytes; the limit is {limit} bytes.",
            )
        if hold is not None:
            hold.grow_to(size)
    # Straight from the ASGI messages: a body usually arrives whole in the first one.
    chunks: list[bytes] = []
    received = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(
                f"The body is over the limit of {limit} bytes.",
            )
        if hold is not None:
            hold.grow_to(received)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(
    request: Request, *, limit: int, seconds: float, hold: BodyHold | None = None
) -> bytes:
    """The body of a JSON request, not yet parsed, or a problem: 408, 413, 415, 400, or 503
    when ``hold`` (a share of the server's body budget) cannot grow to hold it."""
    _check_media_type(request)
    try:
        raw = await within(seconds, _read_limited(request, limit, hold))
    except TimeoutError:
        raise RequestTimeout(
            f"The body did not arrive within {seconds:g} seconds.",
        ) from None
    except ClientDisconnect:
        raise BadRequest("The client went away before the body arrived.") from None
    if not raw:
        raise MalformedJson("The body is empty; send a JSON object.")
    return raw


async def read_parsed(
    request: Request,
    settings: Settings,
    hold: BodyHold,
    parse: Callable[[bytes, Unpack[Args]], T],
    *args: *Args,
) -> T:
    """``parse(body, *args)``, the body read within the settings' size limit and deadline
    (:func:`read_body`): inline, or in the parser process for a body of PROCESS_PARSE_BYTES or
    more (``parse`` is then called by its name there: a module's function, see :mod:`.parsers`).
    The raw bytes are let go when this returns, before the caller writes what was parsed."""
    raw = await read_body(
        request, limit=settings.max_body_bytes, seconds=settings.body_timeout, hold=hold
    )
    if len(raw) < PROCESS_PARSE_BYTES:
        return parse(raw, *args)
    return await body_parser_of(request).parse(parse, raw, *args)
