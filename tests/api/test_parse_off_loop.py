"""A large body is parsed off the event loop: other requests are answered while it is parsed.

The parse is held (an instrumented parser waits for the small request's answer), so the test
does not depend on how long parsing takes: parsed on the loop, the held parse would stop the loop
and the small request could not be answered before the parser gave up waiting.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support import make_snapshot

from runstore.service.api import offload, routes

pytestmark = pytest.mark.anyio

# Long enough never to run out on a loaded machine; a failing run waits this long once.
HOLD_SECONDS = 30


def held(
    parse: Callable[..., Any], entered: threading.Event, answered: threading.Event
) -> tuple[Callable[..., Any], dict[str, bool]]:
    """``parse`` made to wait, once entered, until the small request was answered; the outcome
    says whether it was, before the parser gave up waiting."""
    outcome: dict[str, bool] = {}

    def parse_held(*args: Any) -> Any:
        entered.set()
        outcome["answered_meanwhile"] = answered.wait(HOLD_SECONDS)
        return parse(*args)

    return parse_held, outcome


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_small_request_is_answered_while_a_large_body_is_parsed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    assert (await client.put("/runs/other", json=make_snapshot("other"))).status_code == 201
    assert (await client.put("/runs/big", json=make_snapshot("big"))).status_code == 201
    entered, answered = threading.Event(), threading.Event()
    name = "_snapshot_of" if method == "PUT" else "_patch_of"
    parse_held, outcome = held(getattr(routes, name), entered, answered)
    monkeypatch.setattr(routes, name, parse_held)
    filler = "x" * (offload.THREAD_PARSE_BYTES + 1)
    if method == "PUT":
        body = make_snapshot("big", steps=1, result=filler)
    else:
        body = {"traceFrom": 0, "trace": [{"note": filler}]}
    large = asyncio.create_task(
        client.request(
            method,
            "/runs/big",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
    )
    assert await asyncio.to_thread(entered.wait, HOLD_SECONDS)
    small = await client.get("/runs/other")
    answered.set()
    assert small.status_code == 200
    assert (await large).status_code == 200
    assert outcome == {"answered_meanwhile": True}
    assert len((await client.get("/runs/big")).json()["trace"]) == 1


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_a_small_body_is_parsed_on_the_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    name = "_snapshot_of" if method == "PUT" else "_patch_of"
    parse = getattr(routes, name)

    def parse_seen(*args: Any) -> Any:
        seen.append(threading.get_ident())
        return parse(*args)

    monkeypatch.setattr(routes, name, parse_seen)
    body = make_snapshot("small", steps=1) if method == "PUT" else {"status": "completed"}
    if method == "PATCH":
        assert (await client.put("/runs/small", json=make_snapshot("small"))).status_code == 201
    assert (await client.request(method, "/runs/small", json=body)).status_code in (200, 201)
    assert seen == [loop_thread]
