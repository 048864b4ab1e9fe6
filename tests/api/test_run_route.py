"""The run routes' request path (api.run_route, service/app.py): one stack for every request.

The run routes are the first route of the app's router, so whatever middleware the app has
(authentication now, request ids and metrics later) sees them, as it sees every other request;
and they answer alike whether the app is served at the root or under a ``root_path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from support import assert_problem, make_snapshot

from runstore.service import Settings, create_app
from runstore.service.api.routes import RUN_ENDPOINTS, router
from runstore.service.api.run_route import RunRoute

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


STATUSES = [
    404, 404, 201, 412, 200, 409, 412, 400, 415, 422, 400, 422,
    200, 200, 304, 400, 412, 204, 404, 405, 404,
]  # fmt: skip


class Recorder:
    """Pure ASGI middleware, added the way request ids or metrics would be: it notes each
    request's method, path and answered status, and the route that served it."""

    def __init__(self, app: ASGIApp, seen: list[tuple[str, str, int, Any]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, noting)
        self.seen.append((scope["method"], scope["path"], status, scope.get("route")))


async def _run_script(
    app: Any, script: Script, *, root_path: str = "", headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    answers = []
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for method, path, sent_headers, body in script:
                answers.append(
                    await http.request(
                        method,
                        root_path + path,
                        headers={**sent_headers, **(headers or {})},
                        content=body,
                    )
                )
    return answers


async def test_the_run_routes_answer_alike_under_a_root_path(tmp_path: Path) -> None:
    results = {}
    for root_path in ("", "/prefix"):
        app = create_app(Settings(db=str(tmp_path / f"{len(root_path)}.db"), tokens=None))
        # One request id for all: an answer's id is otherwise new each time.
        answers = await _run_script(
            app, SCRIPT, root_path=root_path, headers={"X-Request-Id": "same"}
        )
        results[root_path] = [
            (
                response.status_code,
                {k: v for k, v in response.headers.items() if k != "content-length"},
                # Problems name the path they answer (``instance``), the prefix included.
                response.content.replace(root_path.encode() + b"/runs", b"/runs"),
            )
            for response in answers
        ]
    assert results[""] == results["/prefix"]
    assert [status for status, _, _ in results[""]] == STATUSES


@pytest.mark.parametrize("root_path", ["", "/prefix"])
async def test_middleware_added_to_the_app_sees_every_run_route_request(
    tmp_path: Path, root_path: str
) -> None:
    app = create_app(Settings(db=str(tmp_path / "runs.db"), tokens=None))
    seen: list[tuple[str, str, int, Any]] = []
    app.add_middleware(Recorder, seen=seen)
    answers = await _run_script(app, SCRIPT, root_path=root_path)
    # ASGI paths arrive decoded (%2F as /).
    assert [(method, unquote(root_path + path)) for method, path, _, _ in SCRIPT] == [
        (method, path) for method, path, _, _ in seen
    ]
    assert [status for _, _, status, _ in seen] == STATUSES
    assert [response.status_code for response in answers] == STATUSES
    # Served by the run route wherever it matches, the error answers included; POST and an id
    # with a "/" go on to FastAPI's routes.
    for (method, path, _, _), (_, _, _, route) in zip(SCRIPT, seen, strict=True):
        served_by_run_route = isinstance(route, RunRoute)
        assert served_by_run_route is not (method == "POST" or path == "/runs/a%2Fb")


async def test_auth_guards_the_run_routes_inside_the_app_s_stack(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "runs.db"), tokens=SecretStr("reader:read,writer"))
    app = create_app(settings)
    seen: list[tuple[str, str, int, Any]] = []
    app.add_middleware(Recorder, seen=seen)  # added last: outside authentication
    body = _json(make_snapshot("r1", steps=1))
    patch = _json({"trace": [{"n": 1}], "traceFrom": 1})
    script: Script = [
        ("PUT", "/runs/r1", JSON, body),
        ("PATCH", "/runs/r1", JSON, patch),
        ("GET", "/runs/r1", {}, None),
        ("HEAD", "/runs/r1", {}, None),
        ("DELETE", "/runs/r1", {}, None),
    ]
    refused = await _run_script(app, script)
    for response in refused[:-1]:
        assert response.status_code == 401
    assert_problem(refused[0], 401, "unauthorized")
    as_reader = await _run_script(app, script, headers={"authorization": "Bearer reader"})
    assert [response.status_code for response in as_reader] == [403, 403, 404, 404, 403]
    as_writer = await _run_script(app, script, headers={"authorization": "Bearer writer"})
    assert [response.status_code for response in as_writer] == [201, 200, 200, 200, 204]
    assert [status for _, _, status, _ in seen] == [
        *[401] * 5,
        *[403, 403, 404, 404, 403],
        *[201, 200, 200, 200, 204],
    ]


async def test_an_unexpected_error_on_a_run_route_is_a_problem(tmp_path: Path) -> None:
    app = create_app(Settings(db=str(tmp_path / "runs.db"), tokens=None))
    async with app.router.lifespan_context(app) as state:
        store = state["store"]

        async def failing_get_run(run_id: str) -> Any:
            raise RuntimeError("a bug")

        store.get_run = failing_get_run

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state)
            await app(scope, receive, send)

        # Starlette answers with the app's Exception handler, then raises on for the server
        # to log; the test transport is told not to raise it here.
        transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/runs/r1")
    assert_problem(response, 500, "internal-error")


@pytest.mark.parametrize(
    ("method", "path", "root_path", "run_id"),
    [
        ("GET", "/runs/r1", "", "r1"),
        ("PUT", "/p/runs/r-2", "/p", "r-2"),
        ("DELETE", "/runs/a:b@c", "", "a:b@c"),
        ("GET", "/runs", "", None),
        ("GET", "/runs/", "", None),
        ("GET", "/runs/a/b", "", None),
        ("POST", "/runs/r1", "", None),
        ("OPTIONS", "/runs/r1", "", None),
        ("GET", "/p/runs/r1", "/q", None),
        ("GET", "/runs/x", "/runs", None),
        ("GET", "/runs/x", "/runs/x", None),
        ("GET", "/healthz", "", None),
    ],
)
def test_the_run_route_matches_only_run_routes(
    method: str, path: str, root_path: str, run_id: str | None
) -> None:
    route = RunRoute(RUN_ENDPOINTS)
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
    match, child_scope = route.matches(scope)
    if run_id is None:
        assert match is Match.NONE
    else:
        assert match is Match.FULL
        assert child_scope == {
            "route": route,
            "endpoint": RUN_ENDPOINTS[method],
            "path_params": {"runId": run_id},
        }
    assert route.matches({"type": "websocket", "path": "/runs/r1"})[0] is Match.NONE


def test_the_run_route_serves_the_endpoints_fastapi_declares(tmp_path: Path) -> None:
    app = create_app(Settings(db=str(tmp_path / "runs.db"), tokens=None))
    assert isinstance(app.router.routes[0], RunRoute)
    declared = {
        method: route.endpoint
        for route in router.routes
        if isinstance(route, APIRoute) and route.path == "/runs/{runId}"
        for method in route.methods
    }
    assert declared == RUN_ENDPOINTS


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
