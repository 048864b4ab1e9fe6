"""Large bodies are parsed in the parser process (api/offload.py): the server answers other
requests meanwhile, a body of many tiny items is refused there, and the items limit is the same
exact count for a large body as for a small one.

The held parse (tests/parse_hold.py) waits for the test, so nothing here depends on how long
parsing takes: parsed in the server's own process, the held parse would stop the event loop and
the small request could not be answered until the hold ran out.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from parse_hold import HELD_RUN, HOLD_DIR, held_snapshot_of, wait_for_pid
from support import assert_problem, make_snapshot

from runstore.service import Settings
from runstore.service.api import routes
from runstore.service.api.offload import PROCESS_PARSE_BYTES

pytestmark = pytest.mark.anyio

LIMIT = 100_000


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings(db=str(db_path), tokens=None, database_url=None, max_items_per_write=LIMIT)


def encoded(body: Any) -> bytes:
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) >= PROCESS_PARSE_BYTES, "a body this small is parsed in the server"
    return raw


async def send(client: httpx.AsyncClient, method: str, path: str, raw: bytes) -> httpx.Response:
    return await client.request(
        method, path, content=raw, headers={"content-type": "application/json"}
    )


def tiny_items(steps: int, turns: int, item: str) -> dict[str, Any]:
    snapshot = make_snapshot("run-1", trace=[item] * steps)
    if turns:
        snapshot["history"] = [{"said": item}] * turns
    return snapshot


# Items with commas inside them: a count of commas would put these bodies far over the limit.
@pytest.mark.parametrize("item", ["a", "a,b,c,d", "[1,2],{3:4}"])
@pytest.mark.parametrize(("steps", "turns"), [(LIMIT, 0), (LIMIT - 7, 7)])
async def test_a_large_put_with_exactly_the_limit_of_items_is_stored(
    client: httpx.AsyncClient, steps: int, turns: int, item: str
) -> None:
    response = await send(client, "PUT", "/runs/run-1", encoded(tiny_items(steps, turns, item)))
    assert response.status_code == 201
    assert response.json()["traceLength"] == steps
    stored = (await client.get("/runs/run-1")).json()
    assert stored["trace"][-1] == item
    assert len(stored.get("history", [])) == turns


@pytest.mark.parametrize(
    ("steps", "turns", "item"),
    [
        (LIMIT + 1, 0, "a"),
        (LIMIT + 1, 0, "a,b,c,d"),
        (LIMIT - 7, 8, "a,b,c,d"),
        (2_000_000, 0, "a"),  # issue 14: 8 MB of one-character steps
    ],
)
async def test_a_large_put_over_the_limit_of_items_is_413_and_changes_nothing(
    client: httpx.AsyncClient, steps: int, turns: int, item: str
) -> None:
    assert (await client.put("/runs/run-1", json=make_snapshot("run-1", steps=2))).is_success
    before = (await client.get("/runs/run-1")).content
    response = await send(client, "PUT", "/runs/run-1", encoded(tiny_items(steps, turns, item)))
    problem = assert_problem(response, 413, "too-many-items")
    assert f"sends {steps + turns} trace and history items" in problem["detail"]
    assert (await client.get("/runs/run-1")).content == before


@pytest.mark.parametrize(("sent", "status"), [(LIMIT, 200), (LIMIT + 1, 413)])
async def test_a_large_patch_crossing_the_limit_of_items(
    client: httpx.AsyncClient, sent: int, status: int
) -> None:
    assert (await client.put("/runs/run-1", json=make_snapshot("run-1", steps=2))).is_success
    before = (await client.get("/runs/run-1")).content
    raw = encoded({"trace": ["x,y"] * sent, "traceFrom": 2})
    response = await send(client, "PATCH", "/runs/run-1", raw)
    assert response.status_code == status
    if status == 200:
        assert response.json()["traceLength"] == sent + 2
    else:
        assert_problem(response, 413, "too-many-items")
        assert (await client.get("/runs/run-1")).content == before


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PUT bodies parsed by the held parser; the directory it talks through."""
    hold = tmp_path / "hold"
    hold.mkdir()
    # The parser process starts with the first large body, so it inherits this.
    monkeypatch.setenv(HOLD_DIR, str(hold))
    monkeypatch.setattr(routes, "snapshot_of", held_snapshot_of)
    return hold


def large_snapshot() -> bytes:
    return encoded(make_snapshot(HELD_RUN, steps=1, result="x" * PROCESS_PARSE_BYTES))


async def test_other_requests_are_answered_while_a_large_body_is_parsed(
    client: httpx.AsyncClient, held: Path
) -> None:
    assert (await client.put("/runs/other", json=make_snapshot("other"))).status_code == 201
    large = asyncio.create_task(send(client, "PUT", f"/runs/{HELD_RUN}", large_snapshot()))
    parser_pid = await asyncio.to_thread(wait_for_pid, held)
    small = await client.patch("/runs/other", json={"status": "completed", "completedAt": 2})
    (held / "release").touch()
    assert small.status_code == 200
    assert parser_pid != os.getpid()
    assert (await large).status_code == 201
    assert len((await client.get(f"/runs/{HELD_RUN}")).json()["trace"]) == 1


async def test_a_parser_process_that_dies_is_503_and_the_next_body_gets_a_new_one(
    client: httpx.AsyncClient, held: Path
) -> None:
    large = asyncio.create_task(send(client, "PUT", f"/runs/{HELD_RUN}", large_snapshot()))
    os.kill(await asyncio.to_thread(wait_for_pid, held), signal.SIGKILL)
    response = await large
    assert_problem(response, 503, "server-busy")
    assert "Retry-After" in response.headers
    assert (await client.get(f"/runs/{HELD_RUN}")).status_code == 404
    (held / "pid").unlink()
    (held / "release").touch()
    again = await send(client, "PUT", f"/runs/{HELD_RUN}", large_snapshot())
    assert again.status_code == 201
    assert await asyncio.to_thread(wait_for_pid, held) != os.getpid()
