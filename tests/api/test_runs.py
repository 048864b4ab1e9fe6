"""PUT, GET, HEAD and DELETE of one run, and the health endpoints, over the HTTP surface."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from support import assert_problem, make_snapshot

pytestmark = pytest.mark.anyio


def canonical(value: Any) -> str:
    """JSON text that tells 1 from 1.0 and True, and ignores key order."""
    return json.dumps(value, sort_keys=True)


async def test_put_creates_with_201_location_and_etag(client: httpx.AsyncClient) -> None:
    response = await client.put("/runs/run-1", json=make_snapshot("run-1", steps=3))

    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.headers["location"] == "/runs/run-1"
    assert response.headers["etag"] == '"1"'
    assert response.json() == {"runId": "run-1", "version": 1, "traceLength": 3}


async def test_put_replaces_with_200_and_raises_the_version_by_one(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", steps=1))

    for version in range(2, 6):
        snapshot = make_snapshot("run-1", steps=version, status="running")
        response = await client.put("/runs/run-1", json=snapshot)
        assert response.status_code == 200
        assert "location" not in response.headers
        assert response.headers["etag"] == f'"{version}"'
        assert response.json() == {"runId": "run-1", "version": version, "traceLength": version}


async def test_get_returns_the_snapshot_as_last_written(client: httpx.AsyncClient) -> None:
    first = make_snapshot("run-1", steps=2)
    second = make_snapshot(
        "run-1",
        steps=3,
        status="completed",
        completedAt=1_700_000_009_000,
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        plan={"steps": ["look", "answer"], "done": False},
        text="Sunny.",
        usage={"inputTokens": 12, "cost": 0.25, "cached": True},
    )
    await client.put("/runs/run-1", json=first)
    await client.put("/runs/run-1", json=second)

    response = await client.get("/runs/run-1")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["etag"] == '"2"'
    assert canonical(response.json()) == canonical(second)


async def test_values_come_back_exactly_as_sent(client: httpx.AsyncClient) -> None:
    trace = [
        {"big": 2**200, "negative": -(2**70), "float": 0.1, "whole": 1.0, "tiny": 5e-324},
        {"unicode": "Zürich ☃ 𝄞 日本", "escapes": 'quote " backslash \\ nul \u0000'},
        [1, "1", 1.0, True, None, [], {}],
        "a bare string",
        12345678901234567890,
        -0.0,
    ]
    snapshot = make_snapshot("run-1", trace=trace, usage={"ratio": 1e300, "n": 2**64})
    await client.put("/runs/run-1", json=snapshot)

    response = await client.get("/runs/run-1")

    assert canonical(response.json()) == canonical(snapshot)


@pytest.mark.parametrize("field", ["completedAt", "history", "plan", "text", "error"])
async def test_optional_fields_sent_as_null_read_back_as_absent(
    client: httpx.AsyncClient, field: str
) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", **{field: None}))

    stored = (await client.get("/runs/run-1")).json()

    assert field not in stored
    assert canonical(stored) == canonical(make_snapshot("run-1"))


async def test_unknown_top_level_fields_are_kept_as_sent(client: httpx.AsyncClient) -> None:
    extras = {
        "agentVersion": "2.1.0",
        "tags": ["a", "b"],
        "nested": {"deep": [{"x": 1.5}]},
        "nothing": None,
        "snake_case_name": 7,
    }
    await client.put("/runs/run-1", json=make_snapshot("run-1", **extras))

    stored = (await client.get("/runs/run-1")).json()

    assert {name: stored[name] for name in extras} == extras
    assert stored["nothing"] is None


async def test_unknown_field_names_are_kept_whatever_they_are(client: httpx.AsyncClient) -> None:
    names = ["", " ", "with space", "ünïcödé", "\ud800 lone surrogate", "step_index", "__proto__"]
    snapshot = make_snapshot("run-1", **{name: n for n, name in enumerate(names)})

    # json.dumps escapes the lone surrogate, which JSON allows and UTF-8 cannot carry raw.
    response = await client.put(
        "/runs/run-1",
        content=json.dumps(snapshot).encode(),
        headers={"Content-Type": "application/json"},
    )
    await client.patch(
        "/runs/run-1",
        content=json.dumps({"\ud800 lone surrogate": "patched"}).encode(),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 201, response.text
    stored = (await client.get("/runs/run-1")).json()
    assert canonical(stored) == canonical({**snapshot, "\ud800 lone surrogate": "patched"})


async def test_run_ids_may_use_every_allowed_character(client: httpx.AsyncClient) -> None:
    run_id = "Az09_.~:@-" + "x" * 190
    assert len(run_id) == 200

    created = await client.put(f"/runs/{run_id}", json=make_snapshot(run_id))
    read = await client.get(f"/runs/{run_id}")

    assert created.status_code == 201
    assert read.json()["runId"] == run_id


@pytest.mark.parametrize(
    "run_id",
    [
        "-starts-with-dash",
        "has space",
        "x" * 201,
        "caf\u00e9",
        "semi;colon",
        "_underscore",
        "trailing-newline%0A",
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_a_run_id_that_breaks_the_rule_is_422_on_path_run_id(
    client: httpx.AsyncClient, run_id: str, method: str
) -> None:
    body = make_snapshot(run_id) if method == "PUT" else {} if method == "PATCH" else None

    response = await client.request(method, f"/runs/{run_id}", json=body)

    problem = assert_problem(response, 422, "invalid-fields")
    assert problem["errors"][0]["path"] == "path.runId"


async def test_an_id_with_a_slash_names_no_run(client: httpx.AsyncClient) -> None:
    response = await client.get("/runs/a%2Fb")

    assert_problem(response, 404, "not-found")


async def test_head_sends_the_headers_of_get_without_a_body(client: httpx.AsyncClient) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", steps=4))
    await client.patch("/runs/run-1", json={"text": "done"})
    get = await client.get("/runs/run-1")

    head = await client.head("/runs/run-1")

    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"] == '"2"'
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) == len(get.content)


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "PATCH"])
async def test_a_run_that_does_not_exist_is_404(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/runs/absent", json={} if method == "PATCH" else None)

    if method == "HEAD":
        assert response.status_code == 404
        assert response.content == b""
    else:
        assert_problem(response, 404, "not-found")


async def test_delete_removes_the_run(client: httpx.AsyncClient) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", steps=2))
    await client.put("/runs/run-2", json=make_snapshot("run-2"))

    deleted = await client.delete("/runs/run-1")

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.get("/runs/run-1"), 404, "not-found")
    assert_problem(await client.delete("/runs/run-1"), 404, "not-found")
    assert (await client.get("/runs/run-2")).status_code == 200


async def test_a_run_deleted_and_created_again_starts_at_version_1(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1", steps=5))
    await client.patch("/runs/run-1", json={"trace": [{"step": 5}], "traceFrom": 5})
    await client.delete("/runs/run-1")

    again = await client.put("/runs/run-1", json=make_snapshot("run-1", steps=1))

    assert again.status_code == 201
    assert again.json() == {"runId": "run-1", "version": 1, "traceLength": 1}
    stored = (await client.get("/runs/run-1")).json()
    assert stored["trace"] == make_snapshot("run-1", steps=1)["trace"]


async def test_healthz_says_the_process_is_alive(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_says_the_store_reads_and_writes(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_does_not_count_as_a_run(client: httpx.AsyncClient) -> None:
    await client.get("/readyz")

    listed = (await client.get("/runs")).json()

    assert listed == {"runs": [], "nextCursor": None}
