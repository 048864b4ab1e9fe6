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


def held(parse: Callable[..., Any], entered: threading.Event, released: threading.Event) -> Any:
    def parse_held(raw: bytes, **kwargs: Any) -> Any:
        entered.set()
        released.wait(HOLD_SECONDS)
        return parse(raw, **kwargs)

    return parse_held


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_small_request_is_answered_while_a_large_body_is_parsed(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    assert (await client.put("/runs/other", json=make_snapshot("other"))).status_code == 201
    assert (await client.put("/runs/big", json=make_snapshot("big"))).status_code == 201
    entered, released = threading.Event(), threading.Event()
    name = "_snapshot_of" if method == "PUT" else "_patch_of"
    monkeypatch.setattr(routes, name, held(getattr(routes, name), entered, released))
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
    # Answered while the large body's parse is still held.
    assert not released.is_set()
    assert small.status_code == 200
    released.set()
    assert (await large).status_code == 200
    assert len((await client.get("/runs/big")).json()["trace"]) == 1


async def test_only_a_large_body_goes_to_a_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def parse(raw: bytes) -> bytes:
        seen.append(threading.get_ident())
        return raw

    await offload.parse_body(b"{}", parse)
    await offload.parse_body(b" " * offload.THREAD_PARSE_BYTES, parse)
    assert seen[0] == loop_thread
    assert seen[1] != loop_thread
