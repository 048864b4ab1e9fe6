"""Every error is problem+json, and no refused request changes a stored run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support import assert_problem, make_snapshot

from runstore.service import Settings

pytestmark = pytest.mark.anyio

JSON_TYPE = {"Content-Type": "application/json"}


def raw(body: bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return {"content": body, "headers": headers}


def snapshot_with(**fields: Any) -> dict[str, Any]:
    return {"json": make_snapshot("run-1", steps=4, **fields)}


def snapshot_without(name: str) -> dict[str, Any]:
    snapshot = make_snapshot("run-1", steps=4)
    del snapshot[name]
    return {"json": snapshot}


async def state(client: httpx.AsyncClient) -> tuple[int, str, bytes, bytes]:
    """What a client can see of the stored run: GET and its place in the list."""
    run = await client.get("/runs/run-1")
    listing = await client.get("/runs")
    return run.status_code, run.headers["etag"], run.content, listing.content


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> tuple[int, str, bytes, bytes]:
    response = await client.put("/runs/run-1", json=make_snapshot("run-1", steps=3))
    assert response.status_code == 201
    return await state(client)


MALFORMED: list[Any] = [
    pytest.param("PUT", raw(b'{"runId": "run-1", '), id="truncated"),
    pytest.param("PUT", raw(b""), id="empty"),
    pytest.param("PUT", raw(b"   "), id="blank"),
    pytest.param("PUT", raw(b'{"a": NaN}'), id="nan"),
    pytest.param("PUT", raw(b'{"a": -Infinity}'), id="infinity"),
    pytest.param("PUT", raw(b'{"a": 1e400}'), id="too-large-for-a-double"),
    pytest.param("PUT", raw(b'{"a": 1, "a": 2}'), id="duplicate-key"),
    pytest.param("PUT", raw(b'{"a": "\xff"}'), id="invalid-utf-8"),
    pytest.param("PUT", raw(b"[" * 100_000 + b"]" * 100_000), id="nested-too-deep"),
    pytest.param("PUT", raw(b"{'runId': 'run-1'}"), id="single-quotes"),
    pytest.param("PATCH", raw(b'{"trace": [1,], "traceFrom": 3}'), id="patch-trailing-comma"),
    pytest.param("PATCH", raw(b""), id="patch-empty"),
]


@pytest.mark.parametrize(("method", "request_kwargs"), MALFORMED)
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, stored: Any, method: str, request_kwargs: dict[str, Any]
) -> None:
    response = await client.request(method, "/runs/run-1", **request_kwargs)

    assert_problem(response, 400, "malformed-json")
    assert await state(client) == stored


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("PUT", make_snapshot("run-2", steps=5)),
        ("PATCH", {"runId": "run-2", "iterations": 3}),
        ("PATCH", {"runId": "RUN-1", "trace": [], "traceFrom": 3}),
    ],
)
async def test_a_body_run_id_that_differs_from_the_url_is_400(
    client: httpx.AsyncClient, stored: Any, method: str, body: dict[str, Any]
) -> None:
    response = await client.request(method, "/runs/run-1", json=body)

    assert_problem(response, 400, "run-id-mismatch")
    assert await state(client) == stored
    assert_problem(await client.get("/runs/run-2"), 404, "not-found")


NOT_JSON: list[Any] = [
    pytest.param(None, id="no-content-type"),
    pytest.param("text/plain", id="text"),
    pytest.param("application/x-www-form-urlencoded", id="form"),
    pytest.param("application/xml", id="xml"),
    pytest.param("multipart/form-data; boundary=x", id="multipart"),
    pytest.param("application/json; charset=latin-1", id="not-utf-8"),
    pytest.param("application/jsonx", id="lookalike"),
]


@pytest.mark.parametrize("content_type", NOT_JSON)
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_a_body_that_is_not_json_is_415(
    client: httpx.AsyncClient, stored: Any, method: str, content_type: str | None
) -> None:
    body = json.dumps(make_snapshot("run-1", steps=5)).encode()

    response = await client.request(method, "/runs/run-1", **raw(body, content_type))

    assert_problem(response, 415, "unsupported-media-type")
    assert await state(client) == stored


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/x+json",
    ],
)
async def test_json_media_types_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    body = json.dumps(make_snapshot("run-1")).encode()

    response = await client.put("/runs/run-1", **raw(body, content_type))

    assert response.status_code == 201


INVALID: list[Any] = [
    pytest.param("PUT", snapshot_without("status"), ["$.status"], id="missing-status"),
    pytest.param("PUT", snapshot_without("trace"), ["$.trace"], id="missing-trace"),
    pytest.param("PUT", snapshot_without("runId"), ["$.runId"], id="missing-run-id"),
    pytest.param("PUT", snapshot_with(startedAt="1700000000000"), ["$.startedAt"], id="str-int"),
    pytest.param("PUT", snapshot_with(stepIndex=4.0), ["$.stepIndex"], id="float-int"),
    pytest.param("PUT", snapshot_with(iterations=True), ["$.iterations"], id="bool-int"),
    pytest.param("PUT", snapshot_with(revisions=-1), ["$.revisions"], id="negative"),
    pytest.param("PUT", snapshot_with(startedAt=2**63), ["$.startedAt"], id="over-64-bits"),
    pytest.param("PUT", snapshot_with(completedAt="soon"), ["$.completedAt"], id="completed-at"),
    pytest.param("PUT", snapshot_with(status="Running"), ["$.status"], id="status-case"),
    pytest.param("PUT", snapshot_with(status="x" * 33), ["$.status"], id="status-long"),
    pytest.param("PUT", snapshot_with(input=42), ["$.input"], id="input-number"),
    pytest.param("PUT", snapshot_with(trace={"0": {}}), ["$.trace"], id="trace-object"),
    pytest.param("PUT", snapshot_with(usage=[1, 2]), ["$.usage"], id="usage-list"),
    pytest.param("PUT", snapshot_with(plan=["a"]), ["$.plan"], id="plan-list"),
    pytest.param("PUT", snapshot_with(history=[{}, "turn"]), ["$.history[1]"], id="turn"),
    pytest.param("PUT", snapshot_with(text=1), ["$.text"], id="text-number"),
    pytest.param("PUT", snapshot_with(error=False), ["$.error"], id="error-bool"),
    pytest.param("PUT", snapshot_with(version=3), ["$.version"], id="reserved-version"),
    pytest.param("PUT", snapshot_with(traceFrom=0), ["$.traceFrom"], id="reserved-trace-from"),
    pytest.param(
        "PUT",
        snapshot_with(stepIndex="1", iterations=-2, status=7),
        ["$.stepIndex", "$.iterations", "$.status"],
        id="several",
    ),
    pytest.param("PUT", {"json": [make_snapshot("run-1")]}, ["$"], id="array-body"),
    pytest.param("PUT", raw(b"null"), ["$"], id="null-body"),
    pytest.param("PATCH", {"json": "text"}, ["$"], id="patch-string-body"),
    pytest.param("PATCH", {"json": {"startedAt": -1}}, ["$.startedAt"], id="patch-negative"),
    pytest.param(
        "PATCH", {"json": {"trace": [{}], "traceFrom": 3.0}}, ["$.traceFrom"], id="patch-float"
    ),
]


@pytest.mark.parametrize(("method", "request_kwargs", "paths"), INVALID)
async def test_invalid_fields_are_422_naming_each_by_json_path(
    client: httpx.AsyncClient,
    stored: Any,
    method: str,
    request_kwargs: dict[str, Any],
    paths: list[str],
) -> None:
    response = await client.request(method, "/runs/run-1", **request_kwargs)

    problem = assert_problem(response, 422, "invalid-fields")
    named = [error["path"] for error in problem["errors"]]
    assert set(paths) <= set(named), named
    assert await state(client) == stored


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/runs/run-1", {"PUT", "PATCH", "GET", "HEAD", "DELETE"}),
        ("POST", "/runs", {"GET", "DELETE"}),
        ("PUT", "/runs", {"GET", "DELETE"}),
        ("PATCH", "/runs", {"GET", "DELETE"}),
        ("DELETE", "/healthz", {"GET"}),
        ("PUT", "/readyz", {"GET"}),
    ],
)
async def test_a_method_a_path_does_not_have_is_405(
    client: httpx.AsyncClient, stored: Any, method: str, path: str, allowed: set[str]
) -> None:
    response = await client.request(method, path, json=make_snapshot("run-1", steps=9))

    assert_problem(response, 405, "method-not-allowed")
    assert {name.strip() for name in response.headers["allow"].split(",")} & allowed
    assert await state(client) == stored


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nothing-here"),
        ("PUT", "/runs/run-1/steps"),
        ("GET", "/runs/"),
        ("DELETE", "/runs/run-1/"),
        ("GET", "/run/run-1"),
    ],
)
async def test_a_path_the_contract_does_not_have_is_404(
    client: httpx.AsyncClient, stored: Any, method: str, path: str
) -> None:
    response = await client.request(method, path)

    assert_problem(response, 404, "not-found")
    assert await state(client) == stored


class TestBodyLimit:
    """RUNSTORE_MAX_BODY_BYTES, set small: the limit holds whatever Content-Length says."""

    LIMIT = 4096

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"max_body_bytes": self.LIMIT})

    def padded(self, size: int) -> bytes:
        """A valid snapshot of exactly ``size`` bytes."""
        snapshot = make_snapshot("run-1", steps=4, input="")
        overhead = len(json.dumps(snapshot).encode())
        snapshot["input"] = "x" * (size - overhead)
        body = json.dumps(snapshot).encode()
        assert len(body) == size
        return body

    async def test_a_body_at_the_limit_is_accepted(
        self, client: httpx.AsyncClient, stored: Any
    ) -> None:
        body = self.padded(self.LIMIT)
        response = await client.put("/runs/run-1", **raw(body))

        assert response.status_code == 200
        stored_now = await client.get("/runs/run-1")
        assert stored_now.headers["etag"] == response.headers["etag"]
        assert stored_now.json() == json.loads(body)

    @pytest.mark.parametrize("method", ["PUT", "PATCH"])
    async def test_a_body_over_the_limit_is_413(
        self, client: httpx.AsyncClient, stored: Any, method: str
    ) -> None:
        response = await client.request(method, "/runs/run-1", **raw(self.padded(self.LIMIT + 1)))

        assert_problem(response, 413, "body-too-large")
        assert await state(client) == stored

    async def test_a_content_length_that_understates_the_body_is_no_way_around(
        self, client: httpx.AsyncClient, stored: Any
    ) -> None:
        body = self.padded(self.LIMIT * 4)

        response = await client.put(
            "/runs/run-1", content=body, headers={**JSON_TYPE, "Content-Length": "100"}
        )

        assert_problem(response, 413, "body-too-large")
        assert await state(client) == stored

    async def test_a_content_length_over_the_limit_is_refused_before_the_body(
        self, client: httpx.AsyncClient, stored: Any
    ) -> None:
        response = await client.put(
            "/runs/run-1",
            content=b"{}",
            headers={**JSON_TYPE, "Content-Length": str(self.LIMIT + 1)},
        )

        assert_problem(response, 413, "body-too-large")
        assert await state(client) == stored

    async def test_a_chunked_body_is_counted_as_it_arrives(
        self, client: httpx.AsyncClient, stored: Any
    ) -> None:
        body = self.padded(self.LIMIT * 3)
        sent: list[int] = []

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1000):
                sent.append(start)
                yield body[start : start + 1000]

        response = await client.put("/runs/run-1", content=chunks(), headers=JSON_TYPE)

        assert_problem(response, 413, "body-too-large")
        assert "content-length" not in response.request.headers
        # The server stops reading once the limit is passed.
        assert max(sent) <= self.LIMIT
        assert await state(client) == stored

    async def test_a_content_length_that_is_not_a_number_is_400(
        self, client: httpx.AsyncClient, stored: Any
    ) -> None:
        response = await client.put(
            "/runs/run-1",
            content=self.padded(1000),
            headers={**JSON_TYPE, "Content-Length": "lots"},
        )

        assert_problem(response, 400, "bad-request")
        assert await state(client) == stored


async def test_problem_bodies_are_compact_like_success_bodies(client: httpx.AsyncClient) -> None:
    response = await client.get("/runs/absent")

    assert response.status_code == 404
    compact = json.dumps(response.json(), ensure_ascii=False, separators=(",", ":"))
    assert response.content == compact.encode()


@pytest.mark.parametrize(
    ("query", "path", "message"),
    [
        ("status=Bad", "query.status[0]", "must match ^[a-z][a-z0-9_-]{0,31}$"),
        ("status=running&status=Bad", "query.status[1]", "must match ^[a-z][a-z0-9_-]{0,31}$"),
        ("limit=0", "query.limit", "must be >= 1"),
        ("limit=ten", "query.limit", "must be an integer"),
    ],
)
async def test_parameter_errors_are_written_like_body_errors(
    client: httpx.AsyncClient, query: str, path: str, message: str
) -> None:
    response = await client.get(f"/runs?{query}")

    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert (error["path"], error["message"]) == (path, message)
