"""The run routes served straight from ASGI (api/direct.py) answer exactly as FastAPI's router.

The router still serves them when the app runs under a ``root_path``; the same requests sent
both ways must get the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import make_snapshot

from runstore.service import Settings, create_app
from runstore.service.api import direct

pytestmark = pytest.mark.anyio

# (method, path, headers, body): a run's life, with the errors agents and curl users meet.
Script = list[tuple[str, str, dict[str, str], bytes | None]]
JSON = {"content-type": "application/json"}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


SCRIPT: Script = [
    ("GET", "/runs/r1", {}, None),
    ("PATCH", "/runs/r1", JSON, _json({"trace": [{"n": 0}], "traceFrom": 0})),
    ("PUT", "/runs/r1", JSON, _json(make_snapshot("r1", steps=2))),
    ("PUT", "/runs/r1", {**JSON, "if-none-match": "*"}, _json(make_snapshot("r1", steps=2))),
    ("PATCH", "/runs/r1", JSON, _json({"trace": [{"n": 2}], "traceFrom": 2, "stepIndex": 3})),
    ("PATCH", "/runs/r1", JSON, _json({"trace": [{"n": 9}], "traceFrom": 7})),
    ("PATCH", "/runs/r1", {**JSON, "if-match": '"1"'}, _json({"stepIndex": 4})),
    ("PATCH", "/runs/r1", JSON, b'{"stepIndex": 1, "stepIndex": 2}'),
    ("PATCH", "/runs/r1", {"content-type": "text/plain"}, b"{}"),
    ("PATCH", "/runs/r1", JSON, _json({"stepIndex": "4"})),
    ("PUT", "/runs/r1", JSON, _json(make_snapshot("other"))),
    ("PUT", "/runs/-bad", JSON, _json(make_snapshot("-bad"))),
    ("GET", "/runs/r1", {}, None),
    ("HEAD", "/runs/r1", {}, None),
    ("GET", "/runs/r1", {"if-none-match": '"2"'}, None),
    ("GET", "/runs/r1", {"if-none-match": "garbage"}, None),
    ("DELETE", "/runs/r1", {"if-match": '"1"'}, None),
    ("DELETE", "/runs/r1", {}, None),
    ("DELETE", "/runs/r1", {}, None),
    ("POST", "/runs/r1", JSON, b"{}"),
    ("GET", "/runs/a%2Fb", {}, None),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def answers_of(tmp_path: Path) -> Any:
    async def answers(root_path: str) -> list[Any]:
        settings = Settings(db=str(tmp_path / f"{len(root_path)}.db"), tokens=None)
        app = create_app(settings)
        results = []
        async with app.router.lifespan_context(app) as state:

            async def with_state(scope: Any, receive: Any, send: Any) -> None:
                scope["state"] = dict(state or {})
                await app(scope, receive, send)

            transport = httpx.ASGITransport(app=with_state, root_path=root_path)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                for method, path, headers, body in SCRIPT:
                    response = await http.request(
                        method, root_path + path, headers=headers, content=body
                    )
                    # Problems name the path they answer (``instance``), the prefix included.
                    content = response.content.replace(root_path.encode() + b"/runs", b"/runs")
                    answer_headers = dict(response.headers)
                    answer_headers.pop("content-length", None)
                    results.append((method, path, response.status_code, answer_headers, content))
        return results

    return answers


async def test_the_direct_routes_answer_as_the_router_does(answers_of: Any) -> None:
    direct_answers = await answers_of("")
    routed_answers = await answers_of("/prefix")
    assert len(direct_answers) == len(SCRIPT)
    for direct_answer, routed_answer in zip(direct_answers, routed_answers, strict=True):
        assert direct_answer == routed_answer
    statuses = [answer[2] for answer in direct_answers]
    assert statuses == [
        404, 404, 201, 412, 200, 409, 412, 400, 415, 422, 400, 422,
        200, 200, 304, 400, 412, 204, 404, 405, 404,
    ]  # fmt: skip


async def test_only_the_run_routes_bypass_the_router(tmp_path: Path) -> None:
    app = create_app(Settings(db=str(tmp_path / "runs.db"), tokens=None))
    passed_on: list[str] = []

    async def router(scope: Any, receive: Any, send: Any) -> None:
        passed_on.append(f"{scope['method']} {scope['path']}")
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    routes = direct.DirectRunRoutes(router)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            scope["app"] = app  # where the direct routes find the exception handlers
            await routes(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            body = _json(make_snapshot("r1", steps=1))
            assert (await http.put("/runs/r1", content=body, headers=JSON)).status_code == 201
            patch = _json({"trace": [{"n": 1}], "traceFrom": 1})
            assert (await http.patch("/runs/r1", content=patch, headers=JSON)).status_code == 200
            assert (await http.get("/runs/r1")).status_code == 200
            assert (await http.head("/runs/r1")).status_code == 200
            assert (await http.patch("/runs/r1", content=b"{", headers=JSON)).status_code == 400
            assert (await http.get("/runs/nothing")).status_code == 404
            assert (await http.delete("/runs/r1")).status_code == 204
            assert passed_on == []
            for method, path in [
                ("GET", "/runs"),
                ("GET", "/runs/"),
                ("GET", "/runs/a/b"),
                ("POST", "/runs/r1"),
                ("GET", "/healthz"),
            ]:
                assert (await http.request(method, path)).status_code == 299
            assert passed_on == [
                "GET /runs",
                "GET /runs/",
                "GET /runs/a/b",
                "POST /runs/r1",
                "GET /healthz",
            ]


@pytest.mark.parametrize("created", [False, True])
def test_a_write_s_answer_is_what_starlette_s_response_would_be(created: bool) -> None:
    from starlette.responses import Response

    from runstore.service.api.routes import _Ack
    from runstore.service.store.base import WriteResult

    result = WriteResult("run-1", 12, 345, created=created)
    answer = _Ack(result, 201 if created else 200, "run-1")
    headers = {"ETag": '"12"', **({"Location": "/runs/run-1"} if created else {})}
    expected = Response(
        b'{"runId":"run-1","version":12,"traceLength":345}',
        status_code=201 if created else 200,
        media_type="application/json",
        headers=headers,
    )
    assert (answer.status_code, answer.body, answer.raw_headers) == (
        expected.status_code,
        expected.body,
        expected.raw_headers,
    )
    assert answer.headers["etag"] == '"12"'
    assert answer.background is None
