r"""Request bodies parsed as JSON, strictly: UTF-8, no NaN, no Infinity, no number too large for a
double, no duplicate key; integers of any size are kept.

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
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from runstore.client.problems import MalformedJson

__all__ = ["count_colons", "parse_json", "parse_json_as"]

T = TypeVar("T")

# A value written again as JSON, and how many of its keys that text leaves out.
Rewritten = tuple[bytes, int]


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


_strict_decoder = json.JSONDecoder(
    parse_float=_parse_float, parse_constant=_reject_constant, object_pairs_hook=_unique_keys
)
_fast_decode = msgspec.json.Decoder().decode
_fast_encode = msgspec.json.Encoder().encode


def count_colons(data: bytes) -> int:
    """The number of ``:`` in ``data``; about twice as fast as bytes.count, which scans a byte
    at a time."""
    return len(data) - len(data.replace(b":", b""))


def parse_strict(raw: bytes) -> Any:
    """The body parsed by the json module alone; MalformedJson says what is
    wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedJson(f"The body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        return _strict_decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise MalformedJson(
            f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from None
    except RecursionError:
        raise MalformedJson("The body's JSON is nested too deeply.") from None
    except ValueError as exc:
        raise MalformedJson(f"The body is not valid JSON: {exc}.") from None


def parse_json_as(
    raw: bytes, convert: Callable[[Any], T], rewritten: Callable[[Any, T], Rewritten]
) -> T:
    """``convert`` of the parsed body, with the duplicate-key check done on what it wrote.

    ``rewritten(value, converted)`` gives the JSON that ``convert`` wrote of ``value`` (its
    texts joined) and the number of the value's keys whose colon that text lacks. Whatever
    ``convert`` or ``rewritten`` refuses of a value not yet checked, the body is parsed again
    strictly, so that a duplicate key is the error answered.
    """
    if b"\\" not in raw or b"\\u003" not in raw:  # the first test is a fast scan for one byte
        try:
            value = _fast_decode(raw)
        except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
            pass  # the strict parser says what is wrong
        else:
            try:
                converted = convert(value)
                text, keys_left_out = rewritten(value, converted)
            except Exception:  # whatever it is, a duplicate key is answered first (below)
                pass
            else:
                if count_colons(text) + keys_left_out == count_colons(raw):
                    return converted
    return convert(parse_strict(raw))


def _same(value: Any) -> Any:
    return value


def _whole(value: Any, _: Any) -> Rewritten:
    return _fast_encode(value), 0


def parse_json(raw: bytes) -> Any:
    """Parse a request body; MalformedJson says what is wrong with it."""
    return parse_json_as(raw, _same, _whole)
