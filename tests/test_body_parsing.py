"""The request-body parser: msgspec reads most bodies, the json module has the last word.

Whatever path a body takes, the result must be what the strict json-module parser (duplicate
keys refused, NaN and Infinity refused, integers of any size kept) gives or refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstore.service.api import body
from runstore.service.api.problems import ProblemError

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
    return body._decoder.decode(raw.decode("utf-8"))


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
        assert body.parse_json(raw) == expected
        assert type(body.parse_json(raw)) is type(expected)


@given(st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4), st.data())
@settings(max_examples=200)
def test_a_duplicate_key_anywhere_is_refused(obj: dict[str, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(obj)))
    extra = data.draw(json_values)
    # The key again, with another value (colons in strings included), at the end of the object.
    raw = json.dumps(obj)[:-1] + f", {json.dumps(key)}: {json.dumps(extra)}}}"
    nested = f'{{"outer": [1, {raw}], "after": "a:b"}}'.encode()
    for document in (raw.encode(), nested):
        with pytest.raises(ProblemError) as refused:
            body.parse_json(document)
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
        with pytest.raises(ProblemError):
            body.parse_json(raw)
    else:
        assert body.parse_json(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"n": 123456789012345678901234567890}', {"n": 123456789012345678901234567890}),
        (b'{"n": -9223372036854775809}', {"n": -9223372036854775809}),
        (b'{"n": 18446744073709551616}', {"n": 18446744073709551616}),
        (b'{"s": "\\ud800"}', {"s": "\ud800"}),  # a lone surrogate escape, as json reads it
        (b'{"f": 1e-400, "z": -0.0}', {"f": 0.0, "z": -0.0}),
    ],
)
def test_values_are_kept_exactly(raw: bytes, expected: Any) -> None:
    assert body.parse_json(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        b'{"n": 1e400}',
        b'{"n": NaN}',
        b'{"n": Infinity}',
        b'{"s": "\xff"}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a": 1}{"b": 2}',
        b"\xef\xbb\xbf{}",
        b"",
    ],
)
def test_what_the_json_module_refuses_is_refused(raw: bytes) -> None:
    with pytest.raises(ProblemError) as refused:
        body.parse_json(raw)
    assert refused.value.slug == "malformed-json"
