"""Leases and claims, case by case (docs/api.md, "Leases"), on each backend.

Expiry is waited out with the shortest ttl the contract allows (1 s): the store's clock decides,
so a test can only let it pass.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest
from support import assert_problem, make_snapshot

pytestmark = pytest.mark.anyio

TTL = 1_000  # the shortest lease the contract allows
LONG = 60_000


async def put(client: httpx.AsyncClient, run_id: str = "run-1", **headers: str) -> httpx.Response:
    return await client.put(f"/runs/{run_id}", json=make_snapshot(run_id, steps=1), headers=headers)


async def take(
    client: httpx.AsyncClient,
    run_id: str = "run-1",
    holder: str = "w1",
    ttl: int = LONG,
    **body: Any,
) -> httpx.Response:
    return await client.post(f"/runs/{run_id}/lease", json={"holder": holder, "ttlMs": ttl, **body})


async def step(
    client: httpx.AsyncClient, n: int, lease: int | None, run_id: str = "run-1"
) -> httpx.Response:
    headers = {} if lease is None else {"Runstore-Lease": str(lease)}
    return await client.patch(
        f"/runs/{run_id}",
        json={"trace": [{"step": n}], "traceFrom": n, "stepIndex": n + 1},
        headers=headers,
    )


async def wait_out(ttl: int = TTL) -> None:
    await anyio.sleep(ttl / 1000 + 0.2)


@pytest.fixture
async def run(client: httpx.AsyncClient) -> None:
    assert (await put(client)).status_code == 201


async def test_acquire_grants_lease_one_then_renew_keeps_the_number(
    client: httpx.AsyncClient, run: None
) -> None:
    first = await take(client)
    assert first.status_code == 200
    lease = first.json()
    assert lease.keys() == {"runId", "holder", "lease", "expiresAt", "ttlMs"}
    assert (lease["runId"], lease["holder"], lease["lease"], lease["ttlMs"]) == (
        "run-1",
        "w1",
        1,
        LONG,
    )
    renewed = await take(client, lease=1, ttl=2 * LONG)
    assert renewed.status_code == 200
    assert renewed.json()["lease"] == 1
    assert renewed.json()["expiresAt"] > lease["expiresAt"]


async def test_another_holder_gets_lease_held_with_holder_and_retry_after(
    client: httpx.AsyncClient, run: None
) -> None:
    granted = (await take(client)).json()
    refused = await take(client, holder="w2")
    body = assert_problem(refused, 409, "lease-held")
    assert body["holder"] == "w1"
    assert body["expiresAt"] == granted["expiresAt"]
    assert 1 <= int(refused.headers["retry-after"]) <= math.ceil(LONG / 1000)


async def test_acquire_again_by_the_holder_is_its_live_lease(
    client: httpx.AsyncClient, run: None
) -> None:
    await take(client)
    again = await take(client)
    assert again.status_code == 200
    assert again.json()["lease"] == 1


async def test_after_expiry_a_new_holder_gets_the_next_number(
    client: httpx.AsyncClient, run: None
) -> None:
    await take(client, ttl=TTL)
    await wait_out()
    second = await take(client, holder="w2")
    assert second.status_code == 200
    assert second.json()["lease"] == 2
    # The first holder's renewal now names a superseded lease.
    assert_problem(await take(client, lease=1), 409, "lease-lost")


async def test_release_then_acquire_and_release_is_idempotent(
    client: httpx.AsyncClient, run: None
) -> None:
    await take(client)
    for _ in range(2):
        released = await client.delete("/runs/run-1/lease", headers={"Runstore-Lease": "1"})
        assert released.status_code == 204
    # Released: writes without the header proceed, and the renewal of it is lost.
    assert (await step(client, 1, None)).status_code == 200
    assert_problem(await take(client, lease=1), 409, "lease-lost")
    assert (await take(client, holder="w2")).json()["lease"] == 2
    stale = await client.delete("/runs/run-1/lease", headers={"Runstore-Lease": "1"})
    assert_problem(stale, 409, "lease-lost")


async def test_writes_under_the_lease_are_fenced(client: httpx.AsyncClient, run: None) -> None:
    await take(client, ttl=TTL)
    assert (await step(client, 1, 1)).status_code == 200
    # Without the header while the lease is live: lease-held.
    held = await step(client, 2, None)
    assert_problem(held, 409, "lease-held")
    assert "retry-after" in held.headers
    # A lease that never existed: lease-lost, for PUT, PATCH and DELETE alike.
    assert_problem(await step(client, 2, 7), 409, "lease-lost")
    assert_problem(await put(client, **{"Runstore-Lease": "7"}), 409, "lease-lost")
    gone = await client.delete("/runs/run-1", headers={"Runstore-Lease": "7"})
    assert_problem(gone, 409, "lease-lost")
    # Expired and nobody took a newer one: the holder's writes proceed, and so do others'.
    await wait_out()
    assert (await step(client, 2, 1)).status_code == 200
    assert (await step(client, 3, None)).status_code == 200
    # Taken over: the old lease is fenced off and nothing it sends is stored.
    assert (await take(client, holder="w2")).json()["lease"] == 2
    assert_problem(await step(client, 4, 1), 409, "lease-lost")
    stored = (await client.get("/runs/run-1")).json()
    assert [item["step"] for item in stored["trace"][1:]] == [1, 2, 3]
    assert stored["stepIndex"] == 4
    assert (await step(client, 4, 2)).status_code == 200
    assert (await client.delete("/runs/run-1", headers={"Runstore-Lease": "2"})).status_code == 204


async def test_reads_need_no_lease(client: httpx.AsyncClient, run: None) -> None:
    await take(client)
    assert (await client.get("/runs/run-1")).status_code == 200
    assert (await client.head("/runs/run-1")).status_code == 200


async def test_absent_run(client: httpx.AsyncClient) -> None:
    assert_problem(await take(client, "nope"), 404, "not-found")
    gone = await client.delete("/runs/nope/lease", headers={"Runstore-Lease": "1"})
    assert_problem(gone, 404, "not-found")
    assert_problem(await put(client, "nope", **{"Runstore-Lease": "1"}), 409, "lease-lost")
    assert (await client.get("/runs/nope")).status_code == 404


async def test_summaries_carry_the_live_lease(client: httpx.AsyncClient, run: None) -> None:
    assert (await put(client, "run-2")).status_code == 201
    lease = (await take(client, "run-2", ttl=TTL)).json()
    runs = {s["runId"]: s for s in (await client.get("/runs")).json()["runs"]}
    assert runs["run-1"]["lease"] is None
    assert runs["run-2"]["lease"] == lease
    await wait_out()
    runs = {s["runId"]: s for s in (await client.get("/runs")).json()["runs"]}
    assert runs["run-2"]["lease"] is None


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"holder": "", "ttlMs": LONG}, "$.holder"),
        ({"holder": "a\nb", "ttlMs": LONG}, "$.holder"),
        ({"holder": "x" * 201, "ttlMs": LONG}, "$.holder"),
        ({"holder": 7, "ttlMs": LONG}, "$.holder"),
        ({"ttlMs": LONG}, "$.holder"),
        ({"holder": "w1", "ttlMs": 999}, "$.ttlMs"),
        ({"holder": "w1", "ttlMs": 3_600_001}, "$.ttlMs"),
        ({"holder": "w1", "ttlMs": 1500.5}, "$.ttlMs"),
        ({"holder": "w1", "ttlMs": LONG, "lease": "1"}, "$.lease"),
        ({"holder": "w1", "ttlMs": LONG, "lease": 0}, "$.lease"),
        ({"holder": "w1", "ttlMs": LONG, "lease": 1.5}, "$.lease"),
        ({"holder": "w1", "ttlMs": LONG, "extra": 1}, "$.extra"),
    ],
)
async def test_bad_lease_bodies_are_422_with_paths(
    client: httpx.AsyncClient, run: None, body: dict[str, Any], path: str
) -> None:
    problem = assert_problem(await client.post("/runs/run-1/lease", json=body), 422)
    assert path in [error["path"] for error in problem["errors"]]
    # Nothing was granted.
    assert (await take(client)).json()["lease"] == 1


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "", "99999999999999999999999"])
async def test_bad_lease_headers_are_422(client: httpx.AsyncClient, run: None, value: str) -> None:
    for response in (
        await client.patch("/runs/run-1", json={"status": "x"}, headers={"Runstore-Lease": value}),
        await client.delete("/runs/run-1/lease", headers={"Runstore-Lease": value}),
        await client.delete("/runs/run-1", headers={"Runstore-Lease": value}),
    ):
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["path"] == "header.Runstore-Lease"
    assert (await client.get("/runs/run-1")).json()["status"] == "running"


async def test_release_needs_the_header(client: httpx.AsyncClient, run: None) -> None:
    assert_problem(await client.delete("/runs/run-1/lease"), 422)


async def claim(client: httpx.AsyncClient, holder: str = "c1", **body: Any) -> httpx.Response:
    return await client.post("/claims", json={"holder": holder, "ttlMs": LONG, **body})


async def test_claims_take_orphans_longest_waiting_first(client: httpx.AsyncClient) -> None:
    for run_id in ("a", "b", "c", "done", "paused"):
        assert (await put(client, run_id)).status_code == 201
    await client.patch("/runs/done", json={"completedAt": 1_700_000_000_999})
    await client.patch("/runs/paused", json={"status": "paused"})
    await take(client, "b", ttl=TTL)
    await take(client, "c", holder="w9")  # live: not orphaned
    # Nothing has waited 60 s, and b's lease is live.
    assert (await claim(client)).status_code == 204
    await wait_out()
    # b's lease expired: b is orphaned; a never had one and is not stale by default.
    first = await claim(client)
    assert first.status_code == 200
    claimed = first.json()
    assert claimed["run"]["runId"] == "b"
    assert claimed["run"]["trace"] == make_snapshot("b", steps=1)["trace"]
    assert (claimed["lease"]["holder"], claimed["lease"]["lease"]) == ("c1", 2)
    # With staleAfterMs 0, a (never leased) qualifies; done (finished) and c (live) never do.
    second = (await claim(client, "c2", staleAfterMs=0)).json()
    assert second["run"]["runId"] == "a"
    assert second["lease"]["lease"] == 1
    assert (await claim(client, "c3", staleAfterMs=0)).status_code == 204
    # Another status, asked for by name.
    third = (await claim(client, "c3", staleAfterMs=0, status=["paused"])).json()
    assert third["run"]["runId"] == "paused"
    # The claimed lease fences as any other.
    assert_problem(await step(client, 1, None, "b"), 409, "lease-held")
    assert (await step(client, 1, 2, "b")).status_code == 200


async def test_released_runs_are_not_claimed(client: httpx.AsyncClient, run: None) -> None:
    await take(client, ttl=TTL)
    await client.delete("/runs/run-1/lease", headers={"Runstore-Lease": "1"})
    await wait_out()
    assert (await claim(client, staleAfterMs=0)).status_code == 204


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"ttlMs": LONG}, "$.holder"),
        ({"holder": "c", "ttlMs": 10}, "$.ttlMs"),
        ({"holder": "c", "ttlMs": LONG, "status": []}, "$.status"),
        ({"holder": "c", "ttlMs": LONG, "status": ["Bad Status"]}, "$.status[0]"),
        ({"holder": "c", "ttlMs": LONG, "status": "running"}, "$.status"),
        ({"holder": "c", "ttlMs": LONG, "staleAfterMs": -1}, "$.staleAfterMs"),
    ],
)
async def test_bad_claims_are_422_with_paths(
    client: httpx.AsyncClient, body: dict[str, Any], path: str
) -> None:
    problem = assert_problem(await client.post("/claims", json=body), 422)
    assert path in [error["path"] for error in problem["errors"]]


@pytest.mark.parametrize("raw", [b"[1]", b"null", b"{", b'{"holder": "a", "holder": "b"}'])
async def test_claim_and_lease_bodies_that_are_no_objects(
    client: httpx.AsyncClient, run: None, raw: bytes
) -> None:
    headers = {"content-type": "application/json"}
    for path in ("/claims", "/runs/run-1/lease"):
        response = await client.post(path, content=raw, headers=headers)
        assert response.status_code in (400, 422), response.text
        assert_problem(response, response.status_code)
