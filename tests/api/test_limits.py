"""The limits a request meets in the app (docs/api.md "Limits"), each crossed: items per write,
JSON nesting depth, bytes of bodies in memory; and the small refusals of issue 14."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import assert_problem, make_snapshot

from runstore.service import Settings

pytestmark = pytest.mark.anyio

MAX_ITEMS = 10
MAX_DEPTH = 16
BUDGET = 64 * 1024


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings(
        db=str(db_path),
        tokens=None,
        database_url=None,
        max_items_per_write=MAX_ITEMS,
        max_json_depth=MAX_DEPTH,
        max_body_bytes=BUDGET,
        max_body_memory=BUDGET,
    )


async def stored_state(client: httpx.AsyncClient) -> tuple[int, bytes]:
    run = await client.get("/runs/run-1")
    return run.status_code, run.content


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> tuple[int, bytes]:
    assert (await client.put("/runs/run-1", json=make_snapshot("run-1", steps=2))).is_success
    return await stored_state(client)


def with_items(steps: int, turns: int) -> dict[str, Any]:
    snapshot = make_snapshot("run-1", steps=steps)
    snapshot["history"] = [{"role": "user", "content": str(i)} for i in range(turns)]
    return snapshot


@pytest.mark.parametrize(("steps", "turns"), [(MAX_ITEMS, 0), (4, MAX_ITEMS - 4)])
async def test_a_put_with_as_many_items_as_the_limit_is_stored(
    client: httpx.AsyncClient, steps: int, turns: int
) -> None:
    response = await client.put("/runs/run-1", json=with_items(steps, turns))
    assert response.status_code == 201


@pytest.mark.parametrize(("steps", "turns"), [(MAX_ITEMS + 1, 0), (6, MAX_ITEMS - 5)])
async def test_a_put_with_one_item_over_the_limit_is_413(
    client: httpx.AsyncClient, stored: tuple[int, bytes], steps: int, turns: int
) -> None:
    response = await client.put("/runs/run-1", json=with_items(steps, turns))
    problem = assert_problem(response, 413, "too-many-items")
    assert f"at most {MAX_ITEMS}" in problem["detail"]
    assert await stored_state(client) == stored


@pytest.mark.parametrize(("sent", "status"), [(MAX_ITEMS, 200), (MAX_ITEMS + 1, 413)])
async def test_a_patch_crossing_the_item_limit(
    client: httpx.AsyncClient, stored: tuple[int, bytes], sent: int, status: int
) -> None:
    steps = [{"i": i} for i in range(sent)]
    response = await client.patch("/runs/run-1", json={"trace": steps, "traceFrom": 2})
    assert response.status_code == status
    if status == 413:
        assert_problem(response, 413, "too-many-items")
        assert await stored_state(client) == stored


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize(("depth", "status"), [(MAX_DEPTH, 201), (MAX_DEPTH + 1, 400)])
async def test_nesting_depth_is_counted_from_the_body_and_crossing_it_is_400(
    client: httpx.AsyncClient, depth: int, status: int
) -> None:
    # The snapshot is level 1 and its trace level 2: the step itself may nest depth - 2 deep.
    snapshot = make_snapshot("run-1")
    snapshot["trace"] = [nested(depth - 2)]
    response = await client.put("/runs/run-1", json=snapshot)
    assert response.status_code == status
    if status == 400:
        assert_problem(response, 400, "nesting-too-deep")
        assert (await client.get("/runs/run-1")).status_code == 404


@pytest.mark.parametrize("depth", [979, 980, 5000])
async def test_deep_nesting_is_never_a_500(client: httpx.AsyncClient, depth: int) -> None:
    body = b'{"runId": "run-1", "trace": ' + b"[" * depth + b"]" * depth + b"}"
    response = await client.put(
        "/runs/run-1", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "nesting-too-deep")


@pytest.mark.parametrize("number", [b"1e-400", b"-2e-999", b"1e400"])
async def test_a_number_a_double_cannot_hold_is_refused_whatever_its_size(
    client: httpx.AsyncClient, stored: tuple[int, bytes], number: bytes
) -> None:
    body = json.dumps(make_snapshot("run-1", steps=2)).encode()[:-1] + b', "x": ' + number + b"}"
    response = await client.put(
        "/runs/run-1", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 400, "malformed-json")
    assert "double" in problem["detail"]
    assert await stored_state(client) == stored


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate"])
async def test_an_encoded_body_is_415_naming_the_encoding(
    client: httpx.AsyncClient, stored: tuple[int, bytes], encoding: str
) -> None:
    response = await client.put(
        "/runs/run-1",
        content=b"\x1f\x8b\x08\x00 not really",
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    problem = assert_problem(response, 415, "unsupported-media-type")
    assert encoding in problem["detail"]
    assert await stored_state(client) == stored


async def test_an_identity_encoding_is_a_plain_body(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/runs/run-1",
        json=make_snapshot("run-1"),
        headers={"content-encoding": "identity"},
    )
    assert response.status_code == 201


async def test_head_healthz_answers_like_get_without_a_body(client: httpx.AsyncClient) -> None:
    head = await client.head("/healthz")
    get = await client.get("/healthz")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


async def test_bodies_over_the_memory_budget_are_503_until_one_is_done(
    client: httpx.AsyncClient,
) -> None:
    # A body of 40 KB holds the budget (64 KiB) while it arrives; a second of 30 KB would pass
    # it: 503 with Retry-After. Once the first is answered, the second goes in.
    first_body = json.dumps(make_snapshot("run-1", input="x" * 40_000)).encode()
    arrived = asyncio.Event()
    go_on = asyncio.Event()

    async def slowly() -> AsyncIterator[bytes]:
        yield first_body[:100]
        arrived.set()
        await go_on.wait()
        yield first_body[100:]

    first = asyncio.ensure_future(
        client.put(
            "/runs/run-1",
            content=slowly(),
            headers={"content-type": "application/json", "content-length": str(len(first_body))},
        )
    )
    await arrived.wait()
    second_body = make_snapshot("run-2", input="y" * 30_000)
    refused = await client.put("/runs/run-2", json=second_body)
    problem = assert_problem(refused, 503, "server-busy")
    assert refused.headers["retry-after"] == "1"
    assert str(BUDGET) in problem["detail"]
    go_on.set()
    assert (await first).status_code == 201
    assert (await client.put("/runs/run-2", json=second_body)).status_code == 201
    assert (await client.get("/runs/run-2")).status_code == 200
