"""Properties over generated runs: exact round-trips, PATCH equals PUT, unknown fields survive.

Runs are compared as canonical JSON text, which tells ``1`` from ``1.0`` and ``true`` and
``-0.0`` from ``0.0``: the store must not re-type, round or drop anything.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstore.client.models import OPTIONAL_FIELDS, REQUIRED_FIELDS, RESERVED_FIELDS

pytestmark = pytest.mark.anyio

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_INT = 2**63 - 1
OWN_FIELDS = REQUIRED_FIELDS | OPTIONAL_FIELDS

_run_numbers = itertools.count()

# Every code point, lone surrogates included (sent as \\u escapes).
characters = st.characters(exclude_categories=())
texts = st.text(characters, max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=10,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
counts = st.integers(min_value=0, max_value=MAX_INT)
unknown_fields = st.dictionaries(
    texts.filter(lambda name: name not in OWN_FIELDS | RESERVED_FIELDS), json_values, max_size=3
)


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    """A valid snapshot with every optional field either set or null, and unknown fields."""
    prefix = draw(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.~:@-]{0,40}\Z"))
    snapshot: dict[str, Any] = {
        # A fresh run per example, whatever the database holds from earlier ones.
        "runId": f"{prefix}-{next(_run_numbers)}",
        "status": draw(st.from_regex(r"\A[a-z][a-z0-9_-]{0,31}\Z")),
        "startedAt": draw(counts),
        "completedAt": draw(st.none() | counts),
        "input": draw(st.text(characters, max_size=40)),
        "history": draw(st.none() | st.lists(json_objects, max_size=5)),
        "plan": draw(st.none() | json_objects),
        "trace": draw(st.lists(json_values, max_size=8)),
        "usage": draw(json_objects),
        "stepIndex": draw(counts),
        "iterations": draw(counts),
        "revisions": draw(counts),
        "text": draw(st.none() | texts),
        "error": draw(st.none() | texts),
    }
    extra = draw(unknown_fields)
    fields = list(snapshot.items()) + list(extra.items())
    # Key order on the wire must not matter either.
    return dict(draw(st.permutations(fields)))


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def as_stored(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What a GET returns: own optional fields that are null are absent."""
    return {
        name: value
        for name, value in snapshot.items()
        if not (value is None and name in OPTIONAL_FIELDS)
    }


async def send(
    client: httpx.AsyncClient, method: str, run_id: str, body: Any, status: int = 200
) -> httpx.Response:
    # json.dumps escapes lone surrogates, which a UTF-8 encoder would refuse.
    response = await client.request(
        method,
        f"/runs/{run_id}",
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
    return response


async def read(client: httpx.AsyncClient, run_id: str) -> Any:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    return response.json()


@EXAMPLES
@given(snapshot=snapshots())
async def test_any_valid_snapshot_round_trips_exactly(
    client: httpx.AsyncClient, snapshot: dict[str, Any]
) -> None:
    created = await send(client, "PUT", snapshot["runId"], snapshot, status=201)

    assert created.json()["traceLength"] == len(snapshot["trace"])
    assert canonical(await read(client, snapshot["runId"])) == canonical(as_stored(snapshot))


@st.composite
def patch_plans(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """A snapshot, an unfinished draft of it to PUT first, and the PATCHes that complete it.

    The appends start at random points at or before the stored end, so some resend (the same)
    steps and turns; one PATCH, somewhere among them, sends every other field.
    """
    snapshot = draw(snapshots())
    trace, history = snapshot["trace"], snapshot["history"]
    unknown = sorted(name for name in snapshot if name not in OWN_FIELDS)
    draft: dict[str, Any] = {
        "runId": snapshot["runId"],
        "status": "running",
        "startedAt": draw(counts),
        "input": draw(texts),
        "trace": trace[: draw(st.integers(0, len(trace)))],
        "usage": draw(json_objects),
        "stepIndex": 0,
        "iterations": 0,
        "revisions": 0,
        "plan": draw(st.none() | json_objects),
        "text": draw(st.none() | texts),
        "error": draw(st.none() | texts),
    }
    if history is not None and draw(st.booleans()):
        draft["history"] = history[: draw(st.integers(0, len(history)))]
    if unknown:
        for name in draw(st.lists(st.sampled_from(unknown), unique=True)):
            draft[name] = draw(json_values)

    patches: list[dict[str, Any]] = []
    for name, start_name, items in (
        ("trace", "traceFrom", trace),
        ("history", "historyFrom", history or []),
    ):
        stored = len(draft.get(name) or [])
        while stored < len(items):
            start = draw(st.integers(0, stored))
            end = draw(st.integers(stored + 1, len(items)))
            patches.append({name: items[start:end], start_name: start})
            stored = end
    if history == [] and "history" not in draft:
        patches.append({"history": [], "historyFrom": 0})
    # null clears an optional field (or keeps it absent).
    fields = {name: value for name, value in snapshot.items() if name not in ("runId", "trace")}
    if history is not None:
        del fields["history"]
    patches.insert(draw(st.integers(0, len(patches))), fields)
    return snapshot, draft, patches


@EXAMPLES
@given(plan=patch_plans())
async def test_a_run_built_with_patches_equals_the_same_run_sent_whole(
    client: httpx.AsyncClient,
    plan: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]],
) -> None:
    snapshot, draft, patches = plan
    run_id = snapshot["runId"]
    whole_id = f"{run_id}-whole"
    await send(client, "PUT", run_id, draft, status=201)
    for patch in patches:
        await send(client, "PATCH", run_id, patch)

    await send(client, "PUT", whole_id, {**snapshot, "runId": whole_id}, status=201)

    built = await read(client, run_id)
    whole = await read(client, whole_id)
    assert canonical(built) == canonical(as_stored(snapshot))
    assert canonical({**whole, "runId": run_id}) == canonical(built)


@EXAMPLES
@given(
    snapshot=snapshots(),
    patched=unknown_fields,
    steps=st.lists(json_values, max_size=3),
)
async def test_unknown_fields_survive_put_and_patch(
    client: httpx.AsyncClient,
    snapshot: dict[str, Any],
    patched: dict[str, Any],
    steps: list[Any],
) -> None:
    run_id = snapshot["runId"]
    await send(client, "PUT", run_id, snapshot, status=201)

    await send(
        client,
        "PATCH",
        run_id,
        {**patched, "trace": steps, "traceFrom": len(snapshot["trace"])},
    )

    expected = {**as_stored(snapshot), **patched, "trace": snapshot["trace"] + steps}
    assert canonical(await read(client, run_id)) == canonical(expected)
    (summary,) = [
        summary
        for summary in (await client.get("/runs", params={"limit": 1000})).json()["runs"]
        if summary["runId"] == run_id
    ]
    for name, value in expected.items():
        if name not in ("trace", "history", "plan"):
            assert canonical(summary[name]) == canonical(value)
