"""Reading request bodies and conditional headers, strictly.

A body is read in chunks and refused with 413 as soon as it passes the limit, whatever
``Content-Length`` claimed; it must be UTF-8 JSON with no NaN, no Infinity, no duplicate key and
no number too large for a double.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import weakref
from typing import Any, Final

import msgspec
from starlette.requests import ClientDisconnect, Request

from runstore.client.problems import (
    BadRequest,
    BodyTooLarge,
    MalformedJson,
    RequestTimeout,
    UnsupportedMediaType,
)

from ..store.records import count_colons

__all__ = [
    "header",
    "parse_etags",
    "parse_if_match",
    "parse_json",
    "parse_json_unchecked",
    "read_body",
    "read_json_body",
]

_JSON_MEDIA: Final = re.compile(r"^application/(?:[\w.+-]+\+)?json$", re.IGNORECASE)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r} in an object")
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)


_fast_decode = msgspec.json.Decoder().decode
_fast_encode = msgspec.json.Encoder().encode


def _decode_fast(raw: bytes) -> tuple[Any, int] | None:
    r"""The body parsed by msgspec and the number of colons in it, or None to leave the body to
    the strict parser.

    msgspec reads JSON several times faster than the json module, keeps integers of any size and
    refuses what the json module refuses, except that it keeps the last of duplicate keys. A
    duplicate shows as a missing ``:``: outside strings every colon follows a key, and
    re-encoding writes each colon inside a string as it is, so the parsed value re-encodes with as
    many colons as the body had unless a key was dropped. A colon escaped as ``\u003a`` would
    upset the count, so such bodies, rare as they are, take the strict parser too.
    """
    if b"\\" in raw and b"\\u003" in raw:  # the first test is a fast scan for one byte
        return None
    try:
        return _fast_decode(raw), count_colons(raw)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None  # the strict parser says what is wrong


def _parse_fast(raw: bytes) -> Any:
    """The body parsed by msgspec and checked for duplicate keys by re-encoding it (see
    _decode_fast), or None to leave it to the strict parser."""
    decoded = _decode_fast(raw)
    if decoded is None:
        return None
    value, colons = decoded
    try:
        encoded = _fast_encode(value)
    except (ValueError, RecursionError):
        return None
    return value if count_colons(encoded) == colons else None


def parse_json_unchecked(raw: bytes) -> tuple[Any, int | None]:
    """The body parsed, and its number of colons when the duplicate-key check is left to the
    caller (None when the value is checked already).

    For large bodies whose caller re-encodes the parts anyway (a PUT's snapshot record): it
    counts their colons instead of re-encoding the whole value here (see _decode_fast). On any
    error with such a value, the caller parses again with parse_json, which names a duplicate.
    """
    decoded = _decode_fast(raw)
    if decoded is None:
        return parse_json(raw), None
    return decoded


def parse_json(raw: bytes) -> Any:
    """Parse a request body; MalformedJson says what is wrong with it."""
    value = _parse_fast(raw)
    if value is not None:
        return value
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"The body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        return _decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise MalformedJson(
            f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from None
    except RecursionError:
        raise MalformedJson("The body's JSON is nested too deeply.") from None
    except ValueError as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}.") from None


def header(request: Request, name: bytes) -> str | None:
    """The first value of the header ``name`` (lower case), or None.

    Read straight from the ASGI scope, whose header names the server gives in lower case (the
    assumption starlette's ``request.headers`` makes too), without building a Headers object or
    raising KeyError for an absent header: a few microseconds a request.
    """
    for key, value in request.scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


def _check_media_type(request: Request) -> None:
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


async def _read_limited(request: Request, limit: int) -> bytes:
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
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Deadlines:
    """The body reads in progress on one event loop, each with its deadline, watched by one
    timer that cancels the reads that pass theirs.

    ``asyncio.timeout`` arms and disarms a timer of the loop's for every read; under load that
    came to several percent of a PATCH's CPU. Here a read costs a dict entry, and the timer is
    armed only for the earliest deadline, so it fires about once per timeout period.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reads: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, task: asyncio.Task[Any], seconds: float) -> None:
        deadline = self._loop.time() + seconds
        self._reads[task] = deadline
        if self._timer is None or deadline < self._timer.when():
            self._arm(deadline)

    def finish(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``'s read; True if its deadline passed and it was cancelled for it."""
        del self._reads[task]
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
        for task, deadline in list(self._reads.items()):
            if deadline <= now:
                if task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            elif next_deadline is None or deadline < next_deadline:
                next_deadline = deadline
        if next_deadline is not None:
            self._arm(next_deadline)


_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


async def _read_within(request: Request, limit: int, seconds: float) -> bytes:
    """_read_limited, or RequestTimeout (408) when the body takes longer than ``seconds``."""
    loop = asyncio.get_running_loop()
    deadlines = _deadlines.get(loop)
    if deadlines is None:
        deadlines = _deadlines[loop] = _Deadlines(loop)
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    deadlines.start(task, seconds)
    try:
        raw = await _read_limited(request, limit)
    except asyncio.CancelledError:
        # Ours alone (decided as asyncio.timeout decides): the task goes on, to answer 408.
        if deadlines.finish(task) and task.uncancel() <= cancelling:
            raise RequestTimeout(
                f"The body did not arrive within {seconds:g} seconds.",
            ) from None
        raise
    except BaseException:
        deadlines.finish(task)
        raise
    deadlines.finish(task)
    return raw


async def read_body(request: Request, *, limit: int, seconds: float) -> bytes:
    """The body of a JSON request, not yet parsed; or RequestTimeout, BodyTooLarge,
    UnsupportedMediaType, BadRequest or MalformedJson."""
    _check_media_type(request)
    try:
        raw = await _read_within(request, limit, seconds)
    except ClientDisconnect:
        raise BadRequest("The client went away before the body arrived.") from None
    if not raw:
        raise MalformedJson("The body is empty; send a JSON object.")
    return raw


async def read_json_body(request: Request, *, limit: int, seconds: float) -> Any:
    """The parsed JSON body, or the error (408, 413, 415, 400) that stopped it."""
    return parse_json(await read_body(request, limit=limit, seconds=seconds))


_ETAG: Final = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|$)')


def parse_etags(value: str, header: str) -> list[tuple[bool, str]] | None:
    """A list of (weak, opaque) entity tags, or None for ``*``; BadRequest if malformed."""
    if value.strip() == "*":
        return None
    tags: list[tuple[bool, str]] = []
    position = 0
    text = value.strip()
    while position < len(text):
        match = _ETAG.match(text, position)
        if match is None:
            raise BadRequest(
                f'{header} must be * or quoted entity tags such as "3" (got {value[:80]!r}).',
            )
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    if not tags:
        raise BadRequest(f"{header} is empty.")
    return tags


def parse_if_match(value: str | None) -> set[int] | None:
    """Versions an ``If-Match`` header accepts (strong comparison), None when absent.

    ``*`` gives an empty set, meaning "any stored version".
    """
    if value is None:
        return None
    tags = parse_etags(value, "If-Match")
    if tags is None:
        return set()
    # A weak tag or a tag that is no version never matches; -1 stands for such a tag.
    return {int(tag) if not weak and tag.isdigit() and len(tag) < 19 else -1 for weak, tag in tags}
