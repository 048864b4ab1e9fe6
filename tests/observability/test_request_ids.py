"""X-Request-Id (docs/api.md, "Request ids"): echoed when valid, replaced when not, generated
when absent; on every answer, in every problem body, also for the connection-level refusals."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import pytest
from support import ServerProcess, assert_problem, in_process_app, make_snapshot

from runstore.client import AsyncRunStoreClient
from runstore.client.problems import RunNotFound
from runstore.service import Settings

pytestmark = pytest.mark.anyio

GENERATED = re.compile(r"[0-9a-f]{32}")
OPENAPI = Path(__file__).resolve().parents[2] / "openapi.json"


@pytest.mark.parametrize(
    "sent",
    ["abc-123", "a" * 200, "!~{}[]/:;=?@", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"],
)
async def test_a_valid_request_id_is_echoed(client: httpx.AsyncClient, sent: str) -> None:
    answer = await client.put("/runs/r", json=make_snapshot("r"), headers={"X-Request-Id": sent})
    assert answer.status_code == 201
    assert answer.headers["x-request-id"] == sent


@pytest.mark.parametrize("sent", ["", "a" * 201, "has space", "tab\there", "caf\u00e9"])
async def test_an_invalid_request_id_is_replaced(client: httpx.AsyncClient, sent: str) -> None:
    answer = await client.get("/healthz", headers=[(b"X-Request-Id", sent.encode("utf-8"))])
    assert answer.status_code == 200
    assert GENERATED.fullmatch(answer.headers["x-request-id"])


async def test_each_request_without_one_gets_its_own(client: httpx.AsyncClient) -> None:
    ids = {(await client.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED.fullmatch(request_id) for request_id in ids)


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/runs/absent", None, 404),
        ("GET", "/no/such/path", None, 404),
        ("POST", "/healthz", None, 405),
        ("PUT", "/runs/r", {"runId": "r"}, 422),
        ("PATCH", "/runs/absent", {"status": "done"}, 404),
    ],
)
async def test_every_problem_names_its_request(
    client: httpx.AsyncClient, method: str, path: str, body: object, status: int
) -> None:
    answer = await client.request(method, path, json=body, headers={"X-Request-Id": "req-42"})
    problem = assert_problem(answer, status)
    assert answer.headers["x-request-id"] == "req-42"
    assert problem["requestId"] == "req-42"


async def test_a_generated_id_is_the_same_in_header_and_problem(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/runs/absent")
    assert assert_problem(answer, 404)["requestId"] == answer.headers["x-request-id"]


async def test_the_client_s_error_exposes_the_request_id(settings: Settings) -> None:
    async with (
        in_process_app(settings) as app,
        AsyncRunStoreClient("http://runstore", transport=httpx.ASGITransport(app=app)) as store,
    ):
        with pytest.raises(RunNotFound) as raised:
            await store.delete_run("absent")
    assert raised.value.request_id is not None
    assert GENERATED.fullmatch(raised.value.request_id)


@pytest.mark.server
def test_refusals_before_the_app_carry_a_request_id(server: ServerProcess) -> None:
    # A head over the limit (64 KiB by default) is answered by the protocol, not the app.
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
    request_id = headers[b"x-request-id"].decode()
    assert GENERATED.fullmatch(request_id)
    problem = httpx.Response(431, content=body).json()
    assert problem["requestId"] == request_id
    assert problem["status"] == 431


def test_openapi_declares_the_request_id_on_every_answer() -> None:
    document = json.loads(OPENAPI.read_text())
    answers = [
        (path, method, status, response)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for status, response in operation["responses"].items()
    ]
    assert answers
    for path, method, status, response in answers:
        assert "X-Request-Id" in response.get("headers", {}), (path, method, status)
    problem = document["components"]["schemas"]["Problem"]["properties"]
    assert problem["requestId"]["type"] == "string"
