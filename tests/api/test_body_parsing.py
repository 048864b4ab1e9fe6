"""The request-body parser: msgspec reads most bodies, the json module has the last word.

Whatever path a body takes, the result must be what the strict json-module parser (duplicate
keys refused, NaN and Infinity refused, integers of any size kept) gives or refuses.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from runstore.client.models import OPTIONAL_FIELDS, REQUIRED_FIELDS, RESERVED_FIELDS
from runstore.client.problems import MalformedJson, NestingTooDeep
from runstore.service import strict_json
from runstore.service.api import parsers
from runstore.service.config import Settings
from runstore.service.store.records import snapshot_record

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def strict(raw: bytes) -> Any:
    """What the json module alone makes of ``raw`` (the parser's reference)."""
    return strict_json._strict_decoder.decode(raw.decode("utf-8"))


@given(json_values)
@settings(max_examples=300)
def test_any_json_parses_to_what_the_json_module_reads(value: Any) -> None:
    for raw in (
        json.dumps(value).encode(),
        json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"),
    ):
        try:
            expected = strict(raw)
        except (UnicodeDecodeError, ValueError):
            continue  # a lone surrogate written raw is no UTF-8: covered below
        assert strict_json.parse_json(raw) == expected
        assert type(strict_json.parse_json(raw)) is type(expected)


@given(json_values)
@settings(max_examples=200)
def test_a_body_without_duplicates_is_checked_by_counting_alone(value: Any) -> None:
    raw = json.dumps(value).encode()
    # Escaped colons, lone surrogates (which msgspec refuses) and numbers that may be too small
    # for a double go to the json module.
    assume(b"\\u003" not in raw and b"\\ud" not in raw)
    assume(not strict_json.maybe_too_small(raw))
    with mock.patch.object(strict_json, "parse_strict", side_effect=AssertionError("parsed again")):
        assert strict_json.parse_json(raw) == strict(raw)


@given(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4), st.data())
@settings(max_examples=200)
def test_a_duplicate_key_anywhere_is_refused(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    extra = data.draw(json_values)
    # The key again, with another value (colons in strings included), at the end of the object.
    raw = json.dumps(obj)[:-1] + f", {json.dumps(key)}: {json.dumps(extra)}}}"
    nested = f'{{"outer": [1, {raw}], "after": "a:b"}}'.encode()
    for document in (raw.encode(), nested):
        with pytest.raises(MalformedJson) as refused:
            strict_json.parse_json(document)
        assert refused.value.slug == "malformed-json"
        assert "duplicate key" in refused.value.detail


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "x:y", "a": 1}',  # the dropped value held a colon
        b'{"a": 1, "b": {"c": "::", "c": "::"}}',
        b'{"a\\u003a": 1, "a:": 2, "b": 3}',  # distinct keys, one colon escaped
        # A duplicate drops a colon and an escaped colon, written back plain, adds one.
        b'{"k": 1, "k": 2, "x": "\\u003a"}',
        b'{"k": 1, "k": 2, "x": "\\u003A"}',
        b'{"k": 1, "k": 2, "\\u003a": 0}',
        b'{"k:": 1, "k:": 2}',
    ],
)
def test_colons_in_strings_do_not_hide_or_invent_duplicates(raw: bytes) -> None:
    try:
        expected: Any = strict(raw)
    except ValueError as exc:
        expected = exc
    if isinstance(expected, Exception):
        with pytest.raises(MalformedJson):
            strict_json.parse_json(raw)
    else:
        assert strict_json.parse_json(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"n": -9223372036854775809}', {"n": -9223372036854775809}),
        (b'{"n": 18446744073709551616}', {"n": 18446744073709551616}),
        (b'{"s": "\\ud800"}', {"s": "\ud800"}),  # a lone surrogate escape, as json reads it
        (b'{"f": 5e-324, "z": -0.0, "e": 0e-400}', {"f": 5e-324, "z": -0.0, "e": 0.0}),
        (b'{"f": 0.' + b"0" * 30 + b"1}", {"f": 1e-31}),
    ],
)
def test_values_are_kept_exactly(raw: bytes, expected: Any) -> None:
    assert strict_json.parse_json(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 1e400}',
        b'{"n": 1e-400}',
        b'{"n": [-2.5e-999]}',
        b'{"n": 0.' + b"0" * 400 + b"1}",
        b'{"n": NaN}',
        b'{"n": Infinity}',
        b'{"s": "\xff"}',
        b'{"a": 1}{"b": 2}',
        b"\xef\xbb\xbf{}",
        b"",
    ],
)
def test_what_the_json_module_refuses_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedJson) as refused:
        strict_json.parse_json(raw)
    assert refused.value.slug == "malformed-json"


@pytest.mark.parametrize(
    ("raw", "suspect"),
    [
        (b'{"n": 1e-400}', True),
        (b'{"n": 1E-0300}', True),
        (b'{"n": [-500, -2.5e-999]}', True),
        (b'{"n": 0.' + b"0" * 24 + b"1}", True),
        (b'{"n": 1e-299, "m": -1000, "s": "one-off time-out e-300"}', True),
        (b'{"n": 1e-299, "m": -1000, "s": "one-off time-out e-30"}', False),
        (b'{"run": "run-1", "n": -12345, "e": 2.5E-10}', False),
        (b"-400", False),
        (b'{"s": "' + b"-" * 100 + b'", "n": 1e-400}', True),
        (b'{"s": "' + b"-" * 100 + b'", "n": 1e-40, "m": -400}', False),
        (b'{"s": "' + b"e-" * 100 + b'300"}', True),
    ],
)
def test_numbers_that_may_be_too_small_are_told_apart(raw: bytes, suspect: bool) -> None:
    # A suspect body goes to the json module, which refuses what a double cannot hold; the
    # others are read by msgspec, so a number too small must never pass as not suspect.
    assert strict_json.maybe_too_small(raw) is suspect


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["e", "E"]))
def test_a_number_msgspec_reads_as_zero_is_always_suspect(value: float, mark: str) -> None:
    mantissa, _, exponent = repr(value).replace("e", mark).partition(mark)
    raw = f'{{"n": {mantissa}{mark}-{abs(int(exponent or 0)) + 330}}}'.encode()
    assert strict_json.maybe_too_small(raw)


def _nested(depth: int, *, inner: bytes = b"1") -> bytes:
    """``depth`` levels of arrays and objects, alternating, around ``inner``."""
    opening = b"".join(b'{"k":' if level % 2 else b"[" for level in range(depth))
    closing = b"".join(b"}" if level % 2 else b"]" for level in reversed(range(depth)))
    return opening + inner + closing


@pytest.mark.parametrize("limit", [8, 256])
def test_nesting_up_to_the_limit_is_read_and_one_more_level_is_refused(limit: int) -> None:
    # Padded with many shallow brackets (two levels), so that the byte count does not decide.
    shallow = b"[" + b",".join([b"[]"] * 600) + b"]"
    at_limit = _nested(limit - 2, inner=shallow)
    assert strict_json.parse_json(at_limit, limit) == json.loads(at_limit)
    with pytest.raises(NestingTooDeep) as refused:
        strict_json.parse_json(_nested(limit - 1, inner=shallow), limit)
    assert refused.value.status == 400
    assert f"limit of {limit} levels" in refused.value.detail


@pytest.mark.parametrize("depth", [257, 977, 978, 979, 980, 981, 982, 983, 1500, 100_000])
def test_any_depth_past_the_limit_is_a_400_nesting_too_deep(depth: int) -> None:
    # 978-981 levels were once a RecursionError (a 500) in the encoder fallback (issue 14).
    for raw in (_nested(depth), b"[" * depth + b"]" * depth):
        with pytest.raises(NestingTooDeep) as refused:
            strict_json.parse_json(raw)
        assert refused.value.slug == "nesting-too-deep"


# ---------------------------------------------------------------- PUT bodies
#
# A PUT's duplicate-key check counts the colons of the parts its snapshot record encodes anyway
# (strict_json.parse_json_as, parsers.snapshot_of). Whatever the body, the outcome must be the one
# the strict parser leads to.

KNOWN_FIELDS = REQUIRED_FIELDS | OPTIONAL_FIELDS | RESERVED_FIELDS
objects = st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4)
unknown_names = st.text(max_size=8).filter(lambda name: name not in KNOWN_FIELDS)


@st.composite
def snapshot_fields(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A valid snapshot's fields, in the order they are sent, unknown fields included."""
    fields: dict[str, Any] = {
        "runId": "run-1",
        "status": draw(st.sampled_from(["running", "completed"])),
        "startedAt": draw(st.integers(0, 2**40)),
        "input": draw(st.text(max_size=10)),
        "trace": draw(st.lists(objects, min_size=1, max_size=4)),
        "usage": draw(objects),
        "stepIndex": 1,
        "iterations": 1,
        "revisions": 0,
    }
    for name, values in [
        ("completedAt", st.none() | st.integers(0, 2**40)),
        ("history", st.none() | st.lists(objects, min_size=1, max_size=3)),
        ("plan", st.none() | objects),
        ("text", st.none() | st.text(max_size=5)),
        ("error", st.none() | st.text(":", max_size=3)),
    ]:
        if draw(st.booleans()):
            fields[name] = draw(values)
    fields.update(draw(st.dictionaries(unknown_names, json_values | objects, max_size=3)))
    return draw(st.permutations(list(fields.items())))


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(key)}:{raw}" for key, raw in pairs) + "}"


def _with_duplicate(obj: dict[str, Any], key: str, extra: Any) -> str:
    pairs = [(name, json.dumps(value)) for name, value in obj.items()]
    return _object([*pairs, (key, json.dumps(extra))])


def snapshot_of(raw: bytes) -> Any:
    return parsers.snapshot_of(raw, "run-1", parsers.BodyRules.of(Settings(tokens=None)))


@given(snapshot_fields())
@settings(max_examples=300)
def test_a_put_body_gives_the_record_of_what_the_json_module_reads(
    fields: list[tuple[str, Any]],
) -> None:
    raw = _object([(name, json.dumps(value)) for name, value in fields]).encode()
    assume(not strict_json.maybe_too_small(raw))
    # Checked by counting, not parsed a second time.
    with mock.patch.object(strict_json, "parse_strict", side_effect=AssertionError("parsed again")):
        assert snapshot_of(raw) == snapshot_record(strict(raw))


@given(snapshot_fields(), json_values, st.data())
@settings(max_examples=300)
def test_a_duplicate_key_anywhere_in_a_put_body_is_refused(
    fields: list[tuple[str, Any]], extra: Any, data: st.DataObject
) -> None:
    # Somewhere to put a key twice: the snapshot itself or any object in one of its fields.
    places: list[tuple[int, int | None]] = [(-1, None)]
    for position, (_, value) in enumerate(fields):
        if isinstance(value, dict) and value:
            places.append((position, None))
        elif isinstance(value, list):
            places += [(position, i) for i, item in enumerate(value) if isinstance(item, dict)]
    field, item = data.draw(st.sampled_from(places))
    pairs = [(name, json.dumps(value)) for name, value in fields]
    if field == -1:
        name = data.draw(st.sampled_from([name for name, _ in fields]))
        pairs.append((name, json.dumps(extra)))
    else:
        name, value = fields[field]
        if item is None:
            pairs[field] = (
                name,
                _with_duplicate(value, data.draw(st.sampled_from(sorted(value))), extra),
            )
        else:
            items = [json.dumps(element) for element in value]
            target = value[item]
            if not target:
                return
            key = data.draw(st.sampled_from(sorted(target)))
            items[item] = _with_duplicate(target, key, extra)
            pairs[field] = (name, "[" + ",".join(items) + "]")
    with pytest.raises(MalformedJson) as refused:
        snapshot_of(_object(pairs).encode())
    assert refused.value.slug == "malformed-json"
    assert "duplicate key" in refused.value.detail


@pytest.mark.parametrize(
    "raw",
    [
        # A duplicate of a key that the record keeps outside doc, or leaves out (null).
        b'{"runId":"run-1","status":"running","startedAt":1,"input":"","trace":[],"usage":{},'
        b'"stepIndex":0,"iterations":0,"revisions":0,"trace":[{"a":1}]}',
        b'{"runId":"run-1","status":"running","startedAt":1,"input":"","trace":[],"usage":{},'
        b'"stepIndex":0,"iterations":0,"revisions":0,"completedAt":null,"completedAt":null}',
        b'{"runId":"run-1","status":"running","startedAt":1,"input":"","trace":[],"usage":{},'
        b'"stepIndex":0,"iterations":0,"revisions":0,"plan":null,"plan":{"x":"a:b"}}',
        # Invalid as a snapshot as well: the duplicate is answered first, as parse_json does.
        b'{"runId":"run-1","status":"running","status":"no such status"}',
        b'{"runId":"run-1","runId":"run-2"}',
        b'{"runId":"run-2","runId":"run-1","trace":[]}',
        b'[{"a":1,"a":2}]',
    ],
)
def test_a_put_body_with_a_duplicate_is_refused_before_anything_else(raw: bytes) -> None:
    with pytest.raises(MalformedJson) as refused:
        snapshot_of(raw)
    assert refused.value.slug == "malformed-json"
    assert "duplicate key" in refused.value.detail
