"""The plain-type check that spares most bodies a pydantic validation never accepts what the
models refuse, and does accept ordinary snapshots and patches."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from support import make_snapshot

from runstore.client.models import MAX_INT, OPTIONAL_FIELDS, RunPatch, RunSnapshot
from runstore.service.store.records import plainly_valid

PATCH_FIELDS = frozenset(RunPatch.model_json_schema(by_alias=True)["properties"])
SNAPSHOT_FIELDS = frozenset(RunSnapshot.model_json_schema(by_alias=True)["properties"])

# Values near every rule's edges: types JSON can carry, bounds, patterns, trailing newlines.
edge_values = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, MAX_INT, MAX_INT + 1, 2**64, 1.0, 0.5]),
    st.integers(),
    st.sampled_from(
        ["", "a", "run-1", "-x", "run\n", "x" * 200, "x" * 201, "running", "Running", "r" * 33]
    ),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.lists(st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), max_size=2),
    st.lists(st.one_of(st.integers(), st.dictionaries(st.text(max_size=2), st.none())), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def accepted(model: type[RunSnapshot] | type[RunPatch], fields: dict[str, Any]) -> bool:
    try:
        model.model_validate(fields, strict=True, by_alias=True, by_name=False)
    except ValidationError:
        return False
    return True


@given(st.dictionaries(st.sampled_from(sorted(PATCH_FIELDS)), edge_values))
@settings(max_examples=800)
def test_a_plainly_valid_patch_is_one_the_model_accepts(fields: dict[str, Any]) -> None:
    if plainly_valid(fields, PATCH_FIELDS):
        assert accepted(RunPatch, fields)


@given(st.dictionaries(st.sampled_from(sorted(SNAPSHOT_FIELDS)), edge_values))
@settings(max_examples=800)
def test_a_plainly_valid_snapshot_is_one_the_model_accepts(fields: dict[str, Any]) -> None:
    complete = {**make_snapshot("base"), **fields}
    if plainly_valid(complete, OPTIONAL_FIELDS):
        assert accepted(RunSnapshot, complete)


def test_ordinary_bodies_take_the_plain_check() -> None:
    snapshot = make_snapshot("run-1", steps=3) | {
        "completedAt": None,
        "history": [{"role": "user", "content": "hi"}],
        "plan": {"steps": []},
        "text": "done",
    }
    assert plainly_valid(snapshot, OPTIONAL_FIELDS)
    patch = {"trace": [{"n": 1}], "traceFrom": 3, "stepIndex": 4, "usage": {"tokens": 9}}
    assert plainly_valid(patch, PATCH_FIELDS)
    assert plainly_valid({"completedAt": None, "error": None}, PATCH_FIELDS)
    assert not plainly_valid({"stepIndex": True}, PATCH_FIELDS)
    assert not plainly_valid({"runId": "run-1\n"}, PATCH_FIELDS)
    assert not plainly_valid(snapshot | {"status": None}, OPTIONAL_FIELDS)
