"""openapi.json declares every header the server sends, on each operation and status (issue 15).

A real server (tokens on, so 401 and 403 answer too) is driven through every operation of the
document, to its successes and to the refusals a client meets most (404, 409 lease-held, 412,
422, 304), and each answer's headers are compared with what the document declares for that
operation and status. An operation added to the document without a call here, a status the
document does not list, or a header a route starts sending without declaring it fails the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ServerProcess, make_snapshot

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
HTTP_METHODS = {"get", "put", "post", "delete", "head", "patch"}
# What HTTP itself says of every answer (framing, media type, the server's clock), not
# anything an operation means: a generated client gets these from its HTTP library.
TRANSPORT_HEADERS = frozenset(
    {"content-length", "content-type", "date", "server", "transfer-encoding", "connection"}
)
TOKENS = {"admin": "admin-token", "reader": "read-token"}


@dataclass(frozen=True)
class Answer:
    method: str
    template: str
    status: int
    headers: frozenset[str]


class Driver:
    """Calls the server and records each answer against its operation's path template."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.answers: list[Answer] = []

    def call(
        self,
        method: str,
        template: str,
        expected: int,
        *,
        path: str | None = None,
        token: str | None = TOKENS["admin"],
        **kwargs: Any,
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = self.http.build_request(method, path or template, headers=headers, **kwargs)
        # Streams are read up to their headers only: GET /events never ends by itself.
        response = self.http.send(request, stream=True)
        try:
            if template != "/events":
                response.read()
        finally:
            response.close()
        assert response.status_code == expected, (method, path or template, response.text)
        names = frozenset(name.lower() for name in response.headers)
        self.answers.append(Answer(method.lower(), template, response.status_code, names))
        return response


def drive(driver: Driver) -> None:
    call = driver.call
    run, other = "/runs/r-1", "/runs/r-2"
    absent = "/runs/absent"

    call("GET", "/healthz", 200, token=None)
    call("HEAD", "/healthz", 200, token=None)
    call("GET", "/readyz", 200)
    call("GET", "/readyz", 401, token=None)
    call("GET", "/metrics", 200, token=TOKENS["reader"])
    call("GET", "/metrics", 401, token=None)

    item = "/runs/{runId}"
    call("PUT", item, 201, path=run, json=make_snapshot("r-1"))
    call("PUT", item, 200, path=run, json=make_snapshot("r-1"))
    call("PUT", item, 412, path=run, json=make_snapshot("r-1"), headers={"If-None-Match": "*"})
    call("PUT", item, 400, path=run, json=make_snapshot("r-9"))
    call("PUT", item, 422, path=run, json={"runId": "r-1"})
    call("PUT", item, 401, path=run, json=make_snapshot("r-1"), token="wrong")
    call("PUT", item, 403, path=run, json=make_snapshot("r-1"), token=TOKENS["reader"])
    call("PATCH", item, 200, path=run, json={"stepIndex": 1})
    call("PATCH", item, 404, path=absent, json={"stepIndex": 1})
    call("PATCH", item, 412, path=run, json={"stepIndex": 2}, headers={"If-Match": '"1"'})
    call("PATCH", item, 409, path=run, json={"trace": [{}], "traceFrom": 5})
    etag = call("GET", item, 200, path=run).headers["ETag"]
    call("GET", item, 304, path=run, headers={"If-None-Match": etag})
    call("GET", item, 404, path=absent)
    call("HEAD", item, 200, path=run)
    call("HEAD", item, 304, path=run, headers={"If-None-Match": etag})
    call("HEAD", item, 404, path=absent)

    call("GET", "/runs", 200, params={"status": "running", "limit": 1})
    call("GET", "/runs", 422, params={"limit": 0})

    lease = "/runs/{runId}/lease"
    taken = call("POST", lease, 200, path=f"{run}/lease", json={"holder": "w1", "ttlMs": 60_000})
    number = taken.json()["lease"]
    call("POST", lease, 409, path=f"{run}/lease", json={"holder": "w2", "ttlMs": 60_000})
    call("POST", lease, 404, path=f"{absent}/lease", json={"holder": "w1", "ttlMs": 60_000})
    call("PUT", item, 409, path=run, json=make_snapshot("r-1"))
    call("PATCH", item, 409, path=run, json={"iterations": 1})
    call("DELETE", item, 409, path=run)
    call("PATCH", item, 200, path=run, json={"iterations": 1}, headers=lease_header(number))
    call("DELETE", lease, 204, path=f"{run}/lease", headers=lease_header(number))
    call("DELETE", lease, 422, path=f"{run}/lease")
    call("DELETE", lease, 409, path=f"{run}/lease", headers=lease_header(number + 5))

    claim = {"holder": "w3", "ttlMs": 60_000, "staleAfterMs": 0}
    call("PUT", item, 201, path=other, json=make_snapshot("r-2"))
    call("POST", "/claims", 200, json=claim)
    call("POST", "/claims", 204, json={**claim, "status": ["nothing-like-it"]})
    call("POST", "/claims", 422, json={"holder": "w3"})

    call("PATCH", item, 200, path=run, json={"status": "completed", "completedAt": 2})
    call("GET", "/runs/{runId}/events", 200, path=f"{run}/events")
    call("GET", "/runs/{runId}/events", 404, path=f"{absent}/events")
    call("GET", "/events", 200)
    call("GET", "/events", 422, params={"status": "Not A Status"})

    call("DELETE", item, 204, path=run)
    call("DELETE", item, 404, path=run)
    call("DELETE", "/runs", 200, params={"completedBefore": 1})
    call("DELETE", "/runs", 422)

    page = call("GET", "/ui/", 200, token=None)
    call("GET", "/ui/", 304, token=None, headers={"If-None-Match": page.headers["ETag"]})
    call("GET", "/ui/{path}", 200, path="/ui/viewer.css", token=None)
    call("GET", "/ui/{path}", 404, path="/ui/absent.css", token=None)


def lease_header(number: int) -> dict[str, str]:
    return {"Runstore-Lease": str(number)}


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Answer]]:
    tokens = f"{TOKENS['admin']}:admin,{TOKENS['reader']}:read"
    db = tmp_path_factory.mktemp("headers") / "runs.db"
    with ServerProcess(db, env={"RUNSTORE_TOKENS": tokens}) as server, server.client() as http:
        driver = Driver(http)
        drive(driver)
        yield driver.answers


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "openapi.json").read_text())
    return loaded


def declared_operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def test_every_operation_of_the_document_is_driven(
    answers: list[Answer], document: dict[str, Any]
) -> None:
    driven = {(answer.method, answer.template) for answer in answers}

    assert not set(declared_operations(document)) - driven


def test_every_status_the_server_answers_is_declared(
    answers: list[Answer], document: dict[str, Any]
) -> None:
    operations = declared_operations(document)
    undeclared = [
        (answer.method, answer.template, answer.status)
        for answer in answers
        if str(answer.status) not in operations[answer.method, answer.template]["responses"]
    ]

    assert not undeclared, f"answered, not declared: {undeclared}"


def test_every_header_the_server_sends_is_declared(
    answers: list[Answer], document: dict[str, Any]
) -> None:
    operations = declared_operations(document)
    undeclared = set()
    for answer in answers:
        response = operations[answer.method, answer.template]["responses"][str(answer.status)]
        declared = {name.lower() for name in response.get("headers", {})}
        for name in answer.headers - TRANSPORT_HEADERS - declared:
            undeclared.add((answer.method, answer.template, answer.status, name))

    assert not undeclared, "sent, not declared:\n" + "\n".join(map(str, sorted(undeclared)))
