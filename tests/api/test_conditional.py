"""ETags, conditional requests (If-Match, If-None-Match) and the stale-write rule."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support import assert_problem, make_snapshot

pytestmark = pytest.mark.anyio

FINISHED_AT = 1_700_000_900_000


async def read(client: httpx.AsyncClient, run_id: str = "run-1") -> tuple[str, bytes]:
    """The stored run's ETag and body, to show that a refused request changed nothing."""
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    return response.headers["etag"], response.content


@pytest.fixture
async def run(client: httpx.AsyncClient) -> dict[str, Any]:
    """An unfinished run with 3 steps at version 3."""
    snapshot = make_snapshot("run-1", steps=3)
    for _ in range(3):
        await client.put("/runs/run-1", json=snapshot)
    return snapshot


@pytest.fixture
async def finished(client: httpx.AsyncClient) -> dict[str, Any]:
    """A finished run with 3 steps at version 1."""
    snapshot = make_snapshot("run-1", steps=3, status="completed", completedAt=FINISHED_AT)
    await client.put("/runs/run-1", json=snapshot)
    return snapshot


# If-None-Match on GET and HEAD


@pytest.mark.parametrize("header", ['"3"', 'W/"3"', '"1", "3"', 'W/"9", W/"3"', "*", ' "2" ,"3" '])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_if_none_match_that_holds_the_version_is_304(
    client: httpx.AsyncClient, run: dict[str, Any], method: str, header: str
) -> None:
    response = await client.request(method, "/runs/run-1", headers={"If-None-Match": header})

    assert response.status_code == 304
    assert response.headers["etag"] == '"3"'
    assert response.content == b""


@pytest.mark.parametrize("header", ['"2"', 'W/"4"', '"1", "2"', '"03"', '""'])
async def test_if_none_match_with_other_tags_gets_the_run(
    client: httpx.AsyncClient, run: dict[str, Any], header: str
) -> None:
    response = await client.get("/runs/run-1", headers={"If-None-Match": header})

    assert response.status_code == 200
    assert response.headers["etag"] == '"3"'
    assert response.json() == run


@pytest.mark.parametrize("header", ["3", '"3', "W/3", '"3" "4"', ","])
async def test_a_malformed_if_none_match_is_400(
    client: httpx.AsyncClient, run: dict[str, Any], header: str
) -> None:
    response = await client.get("/runs/run-1", headers={"If-None-Match": header})

    assert_problem(response, 400, "bad-request")


async def test_the_etag_follows_every_write(client: httpx.AsyncClient) -> None:
    await client.put("/runs/run-1", json=make_snapshot("run-1"))
    etags = [(await client.get("/runs/run-1")).headers["etag"]]
    await client.patch("/runs/run-1", json={"trace": [{"n": 0}], "traceFrom": 0})
    etags.append((await client.get("/runs/run-1")).headers["etag"])
    await client.put("/runs/run-1", json=make_snapshot("run-1", steps=2))
    etags.append((await client.head("/runs/run-1")).headers["etag"])

    assert etags == ['"1"', '"2"', '"3"']
    stale = await client.get("/runs/run-1", headers={"If-None-Match": '"2"'})
    assert stale.status_code == 200


# If-Match on PUT, PATCH and DELETE

WRITES: list[tuple[str, Any]] = [
    ("PUT", make_snapshot("run-1", steps=4)),
    ("PATCH", {"trace": [{"n": 3}], "traceFrom": 3}),
    ("DELETE", None),
]


@pytest.mark.parametrize(("method", "body"), WRITES)
@pytest.mark.parametrize("header", ['"3"', '"1", "3"', "*"])
async def test_a_write_with_a_matching_if_match_is_accepted(
    client: httpx.AsyncClient, run: dict[str, Any], method: str, body: Any, header: str
) -> None:
    response = await client.request(method, "/runs/run-1", json=body, headers={"If-Match": header})

    assert response.status_code == (204 if method == "DELETE" else 200)
    stored = await client.get("/runs/run-1")
    if method == "DELETE":
        assert stored.status_code == 404
        return
    assert response.headers["etag"] == '"4"'
    assert stored.headers["etag"] == '"4"'
    # The write itself was stored: four steps, the fourth the one sent.
    trace = stored.json()["trace"]
    assert len(trace) == 4
    assert trace[3] == (body["trace"][3] if method == "PUT" else body["trace"][0])


@pytest.mark.parametrize(("method", "body"), WRITES)
@pytest.mark.parametrize("header", ['"2"', '"4"', 'W/"3"', '"1", "2"', '"x"'])
async def test_a_write_whose_if_match_does_not_hold_is_412(
    client: httpx.AsyncClient, run: dict[str, Any], method: str, body: Any, header: str
) -> None:
    before = await read(client)

    response = await client.request(method, "/runs/run-1", json=body, headers={"If-Match": header})

    assert_problem(response, 412, "precondition-failed")
    assert await read(client) == before


@pytest.mark.parametrize(("method", "body"), WRITES)
@pytest.mark.parametrize("header", ["3", "W/3", '"3', "'3'"])
async def test_a_malformed_if_match_is_400(
    client: httpx.AsyncClient, run: dict[str, Any], method: str, body: Any, header: str
) -> None:
    before = await read(client)

    response = await client.request(method, "/runs/run-1", json=body, headers={"If-Match": header})

    assert_problem(response, 400, "bad-request")
    assert await read(client) == before


@pytest.mark.parametrize("header", ['"1"', "*"])
async def test_if_match_on_a_put_of_a_new_run_is_412(
    client: httpx.AsyncClient, header: str
) -> None:
    response = await client.put(
        "/runs/run-1", json=make_snapshot("run-1"), headers={"If-Match": header}
    )

    assert_problem(response, 412, "precondition-failed")
    assert_problem(await client.get("/runs/run-1"), 404, "not-found")


@pytest.mark.parametrize(("method", "body"), WRITES[1:])
async def test_if_match_star_needs_the_run_to_exist(
    client: httpx.AsyncClient, method: str, body: Any
) -> None:
    response = await client.request(method, "/runs/run-1", json=body, headers={"If-Match": "*"})

    assert_problem(response, 412, "precondition-failed")


# If-None-Match: * on PUT


async def test_if_none_match_star_creates_a_new_run(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/runs/run-1", json=make_snapshot("run-1"), headers={"If-None-Match": "*"}
    )

    assert response.status_code == 201
    assert response.headers["etag"] == '"1"'


async def test_if_none_match_star_refuses_an_existing_run(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    before = await read(client)

    response = await client.put(
        "/runs/run-1", json=make_snapshot("run-1", steps=9), headers={"If-None-Match": "*"}
    )

    assert_problem(response, 412, "precondition-failed")
    assert await read(client) == before


@pytest.mark.parametrize("header", ['"3"', 'W/"1"', "nonsense"])
async def test_if_none_match_on_put_supports_only_star(
    client: httpx.AsyncClient, run: dict[str, Any], header: str
) -> None:
    before = await read(client)

    response = await client.put(
        "/runs/run-1", json=make_snapshot("run-1", steps=9), headers={"If-None-Match": header}
    )

    assert_problem(response, 400, "bad-request")
    assert await read(client) == before


# The stale-write rule

STALE_WRITES: list[tuple[str, dict[str, Any]]] = [
    ("PUT", make_snapshot("run-1", steps=3, status="running")),
    ("PUT", make_snapshot("run-1", steps=3, status="completed", completedAt=None)),
    ("PUT", make_snapshot("run-1", steps=2, status="completed", completedAt=FINISHED_AT)),
    ("PUT", make_snapshot("run-1", steps=0, status="completed", completedAt=FINISHED_AT + 1)),
    ("PATCH", {"completedAt": None}),
    ("PATCH", {"completedAt": None, "status": "running"}),
    ("PATCH", {"trace": [{"n": 0}], "traceFrom": 1}),
    ("PATCH", {"trace": [], "traceFrom": 0}),
]


@pytest.mark.parametrize(("method", "body"), STALE_WRITES)
async def test_a_write_that_moves_a_run_backwards_is_a_stale_write(
    client: httpx.AsyncClient, finished: dict[str, Any], method: str, body: dict[str, Any]
) -> None:
    before = await read(client)

    response = await client.request(method, "/runs/run-1", json=body)

    problem = assert_problem(response, 409, "stale-write")
    assert problem["type"].endswith("stale-write")
    assert await read(client) == before


@pytest.mark.parametrize(("method", "body"), STALE_WRITES)
async def test_a_matching_if_match_waives_the_stale_write_rule(
    client: httpx.AsyncClient, finished: dict[str, Any], method: str, body: dict[str, Any]
) -> None:
    response = await client.request(method, "/runs/run-1", json=body, headers={"If-Match": '"1"'})

    assert response.status_code == 200
    after = (await client.get("/runs/run-1")).json()
    expected_length = len(body["trace"]) + body.get("traceFrom", 0) if "trace" in body else 3
    assert len(after["trace"]) == expected_length
    assert response.json()["traceLength"] == expected_length
    if body.get("completedAt", FINISHED_AT) is None:
        assert "completedAt" not in after


async def test_an_unfinished_run_may_shorten_nothing_either(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    before = await read(client)

    response = await client.put("/runs/run-1", json=make_snapshot("run-1", steps=2))

    assert_problem(response, 409, "stale-write")
    assert await read(client) == before


@pytest.mark.parametrize(
    "snapshot",
    [
        make_snapshot("run-1", steps=3, status="completed", completedAt=FINISHED_AT + 5),
        make_snapshot("run-1", steps=4, status="failed", completedAt=FINISHED_AT, error="x"),
        make_snapshot("run-1", steps=3, status="completed", completedAt=FINISHED_AT, text="ok"),
    ],
)
async def test_writes_that_keep_a_run_finished_and_its_trace_whole_are_accepted(
    client: httpx.AsyncClient, finished: dict[str, Any], snapshot: dict[str, Any]
) -> None:
    response = await client.put("/runs/run-1", json=snapshot)

    assert response.status_code == 200
    assert (await client.get("/runs/run-1")).json() == snapshot


async def test_a_trace_of_the_same_length_may_be_rewritten(
    client: httpx.AsyncClient, run: dict[str, Any]
) -> None:
    rewritten = make_snapshot("run-1", trace=[{"n": "a"}, {"n": "b"}, {"n": "c"}])

    response = await client.put("/runs/run-1", json=rewritten)

    assert response.status_code == 200
    assert (await client.get("/runs/run-1")).json()["trace"] == rewritten["trace"]


async def test_a_refused_stale_write_leaves_the_version_for_a_retry_with_if_match(
    client: httpx.AsyncClient, finished: dict[str, Any]
) -> None:
    reopened = make_snapshot("run-1", steps=3, status="running")
    assert_problem(await client.put("/runs/run-1", json=reopened), 409, "stale-write")
    etag = (await client.head("/runs/run-1")).headers["etag"]

    response = await client.put("/runs/run-1", json=reopened, headers={"If-Match": etag})

    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert (await client.get("/runs/run-1")).json() == reopened
