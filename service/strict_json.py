r"""JSON parsed strictly, for request bodies and the legacy columns an import reads: UTF-8, no
NaN, no Infinity, no number too large for a double, no duplicate key; integers of any size are
kept. It depends on nothing of HTTP, so the API and the store both use it.

msgspec reads JSON several times faster than the json module, keeps integers of any size and
refuses what the json module refuses, except that it keeps the last of duplicate keys. So the
duplicate-key rule is checked by counting colons, here and nowhere else:

- Outside strings every colon follows a key, and encoding JSON writes each colon inside a
  string as it is. So a parsed value, written again, has as many colons as the body had, unless
  a key was dropped.
- A colon escaped as ``\u003a`` would upset the count: such bodies, rare as they are, go
  straight to the json module.
- On a mismatch, or whenever the value is refused after a parse whose check is still to come,
  the body is parsed again by the json module, which names the duplicate key: a duplicate is
  answered before any other error.

:func:`parse_json` writes the whole value again to count; :func:`parse_json_as` lets a caller
that writes the value's parts anyway (a PUT's snapshot record) count what it wrote instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgspec

from runstore.client.problems import MalformedJson, NestingTooDeep

__all__ = ["DEFAULT_MAX_DEPTH", "count_colons", "parse_json", "parse_json_as"]

DEFAULT_MAX_DEPTH = 256

T = TypeVar("T")

# A value written again as JSON, and how many of its keys that text leaves out.
Rewritten = tuple[bytes, int]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    if value == 0.0 and any(digit in "123456789" for digit in text.lower().partition("e")[0]):
        # Stored as 0.0 it would be silently changed; refused like its large counterpart.
        raise ValueError(f"the number {text[:40]} is too small for a double")
    return value


_LOW_EXPONENT: Final = re.compile(rb"[eE]-0*(?:[3-9][0-9]{2}|[1-9][0-9]{3,})")
_ZEROS: Final = b"0" * 24


def maybe_too_small(raw: bytes) -> bool:
    """True if ``raw`` may hold a number too small for a double (msgspec reads it as 0.0): an
    exponent of -300 or below, or a run of 24 zeros. Without either, a nonzero number is above
    1e-323, which a double holds. Substring tests first: a regular expression alone scans a
    body a byte at a time, several times slower than parsing it."""
    if _ZEROS in raw:
        return True
    # Prose holds "e-" often ("one-off", "time-out"), so the expression is tried only where the
    # marker stands, not scanned over the whole body.
    for marker in (b"e-", b"E-"):
        at = raw.find(marker)
        while at != -1:
            if _LOW_EXPONENT.match(raw, at) is not None:
                return True
            at = raw.find(marker, at + 2)
    return False


def _nesting_over(value: Any, limit: int) -> bool:
    """True if arrays and objects in ``value`` nest deeper than ``limit`` (the top one is 1);
    without recursion, so that no depth can exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > limit:
            return True
        children = container.values() if isinstance(container, dict) else container
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_depth(raw: bytes, value: Any, limit: int) -> None:
    """NestingTooDeep if ``value``, parsed from ``raw``, nests deeper than ``limit``.

    A body with no more brackets than the limit cannot pass it: nearly every body is let
    through by two byte counts, and only the others are walked.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit or not isinstance(value, dict | list):
        return
    if _nesting_over(value, limit):
        raise NestingTooDeep(_too_deep(limit))


def _too_deep(limit: int) -> str:
    return f"The body's arrays and objects nest deeper than the limit of {limit} levels."


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r} in an object")
            seen.add(key)
    return obj


_strict_decoder = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)
_fast_decode = msgspec.json.Decoder().decode
_fast_encode = msgspec.json.Encoder().encode


def count_colons(data: bytes) -> int:
    """The number of ``:`` in ``data``; about twice as fast as bytes.count, which scans a byte
    at a time."""
    return len(data) - len(data.replace(b":", b""))


def parse_strict(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The body parsed by the json module alone; MalformedJson says what is
    wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"The body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        value = _strict_decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise MalformedJson(
            f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from None
    except RecursionError:
        raise NestingTooDeep(_too_deep(max_depth)) from None
    except ValueError as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}.") from None
    check_depth(raw, value, max_depth)
    return value


def parse_json_as(
    raw: bytes,
    convert: Callable[[Any], T],
    rewritten: Callable[[Any, T], Rewritten],
    max_depth: int = DEFAULT_MAX_DEPTH,
    check: Callable[[Any], None] | None = None,
) -> T:
    """``convert`` of the parsed body, with the duplicate-key check done on what it wrote.

    ``rewritten(value, converted)`` gives the JSON that ``convert`` wrote of ``value`` (its
    texts joined) and the number of the value's keys whose colon that text lacks. Whatever
    ``convert`` or ``rewritten`` refuses of a value not yet checked, the body is parsed again
    strictly, so that a duplicate key is the error answered. Nesting deeper than ``max_depth``
    is refused before ``convert`` sees the value, and so is whatever ``check`` refuses (a limit
    that does not depend on duplicate keys, answered without the slower second parse).
    """
    # The first test is a fast scan for one byte.
    if (b"\\" not in raw or b"\\u003" not in raw) and not maybe_too_small(raw):
        try:
            value = _fast_decode(raw)
        except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
            pass  # the strict parser says what is wrong
        else:
            check_depth(raw, value, max_depth)
            if check is not None:
                check(value)
            try:
                converted = convert(value)
                text, keys_left_out = rewritten(value, converted)
            except Exception:  # whatever it is, a duplicate key is answered first (below)
                pass
            else:
                if count_colons(text) + keys_left_out == count_colons(raw):
                    return converted
    value = parse_strict(raw, max_depth)
    if check is not None:
        check(value)
    return convert(value)


def _same(value: Any) -> Any:
    return value


def _whole(value: Any, _: Any) -> Rewritten:
    return _fast_encode(value), 0


def parse_json(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse a request body; MalformedJson says what is wrong with it."""
    return parse_json_as(raw, _same, _whole, max_depth)
