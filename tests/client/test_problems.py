"""The problem types: one class each, answered by the server, raised by the client and by
embedded mode alike (runstore.client.problems)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_rig import agent_snapshot, client_rig, take_step
from fastapi import FastAPI

from runstore.client import EmbeddedStore, WriteAck
from runstore.client._wire import Write
from runstore.client.problems import (
    PROBLEM_TYPE_PREFIX,
    PROBLEM_TYPES,
    BadRequest,
    InternalError,
    InvalidRun,
    PreconditionFailed,
    RunNotFound,
    RunStoreError,
    StaleWrite,
    StoreUnavailable,
    TraceGap,
    UnexpectedResponse,
    WriteConflict,
    error_for_problem,
)
from runstore.service import Settings
from runstore.service.api.problems import install_problem_handlers

anyio_mark = pytest.mark.anyio
FIELD_ERRORS = [{"path": "$.trace", "message": "must be an array", "type": "array"}]


def raised(cls: type[RunStoreError]) -> RunStoreError:
    """An instance of ``cls`` as the store or a route raises it."""
    if cls is InvalidRun:
        return InvalidRun("The snapshot has invalid fields: $.trace.", FIELD_ERRORS)
    return cls(f"A {cls.__name__} happened.")


def problem_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/raise/{slug}")
    async def raise_problem(slug: str) -> None:
        raise raised(PROBLEM_TYPES[slug])

    @app.get("/raise-untyped")
    async def raise_untyped() -> None:
        raise UnexpectedResponse("Not a problem type of the contract.")

    return app


@pytest.fixture
async def problem_client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=problem_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://runstore") as client:
        yield client


def test_each_problem_type_is_one_class_with_its_slug_status_and_title() -> None:
    assert len(PROBLEM_TYPES) == len(set(PROBLEM_TYPES.values()))
    for slug, cls in PROBLEM_TYPES.items():
        assert cls.slug == slug
        assert issubclass(cls, RunStoreError)
        assert isinstance(cls.default_status, int)
        assert cls.default_title


def test_a_slug_names_one_class() -> None:
    with pytest.raises(TypeError, match="stale-write"):
        type("AnotherStaleWrite", (WriteConflict,), {"slug": "stale-write"})
    assert PROBLEM_TYPES["stale-write"] is StaleWrite


@anyio_mark
@pytest.mark.parametrize("cls", list(PROBLEM_TYPES.values()), ids=list(PROBLEM_TYPES))
async def test_every_problem_type_round_trips(
    problem_client: httpx.AsyncClient, cls: type[RunStoreError]
) -> None:
    response = await problem_client.get(f"/raise/{cls.slug}")
    assert response.status_code == cls.default_status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    expected = {
        "type": f"{PROBLEM_TYPE_PREFIX}{cls.slug}",
        "title": cls.default_title,
        "status": cls.default_status,
        "detail": raised(cls).detail,
        "instance": f"/raise/{cls.slug}",
    }
    if cls is InvalidRun:
        expected["errors"] = FIELD_ERRORS
    assert body == expected
    assert list(body) == list(expected)  # the keys in the order the contract shows them

    # The client raises the class the answer names ...
    error = error_for_problem(response.status_code, body)
    assert type(error) is cls
    assert (error.status, error.problem, error.detail) == (cls.default_status, body, body["detail"])
    # ... and an error raised in this process (the store's, in embedded mode) carries the same.
    local = raised(cls)
    assert local.status == cls.default_status
    assert local.problem == {key: value for key, value in body.items() if key != "instance"}
    assert local.type == body["type"]
    assert local.title == body["title"]


@anyio_mark
async def test_an_error_with_no_problem_type_is_answered_as_an_internal_error(
    problem_client: httpx.AsyncClient,
) -> None:
    response = await problem_client.get("/raise-untyped")
    assert response.status_code == 500
    assert response.json()["type"] == f"{PROBLEM_TYPE_PREFIX}{InternalError.slug}"
    assert type(error_for_problem(500, response.json())) is InternalError


@pytest.mark.parametrize(
    ("status", "problem", "cls"),
    [
        (400, {"type": "urn:runstore:problem:some-newer-type"}, BadRequest),
        (404, {}, RunNotFound),
        (409, {"title": "Conflict"}, WriteConflict),
        (429, {}, StoreUnavailable),
        (502, {}, StoreUnavailable),
        (418, {}, UnexpectedResponse),
    ],
)
def test_an_answer_without_a_known_type_is_typed_by_its_status(
    status: int, problem: dict[str, Any], cls: type[RunStoreError]
) -> None:
    error = error_for_problem(status, problem)
    assert type(error) is cls
    assert error.status == status
    assert error.problem == {**problem, "detail": error.detail, "status": status}


def test_a_client_failure_with_no_answer_has_no_status_nor_problem_type() -> None:
    error = StoreUnavailable("PUT /runs/x failed 3 times", status=None, attempts=3)
    assert error.status is None
    assert error.type is None
    assert error.problem == {"detail": "PUT /runs/x failed 3 times"}
    assert str(error) == "PUT /runs/x failed 3 times"


# The same refusals through the HTTP client and through embedded mode: the same classes.


def _whole(snapshot: dict[str, Any], *, if_match: int | None = None) -> Write:
    fields = {name: value for name, value in snapshot.items() if name not in ("trace", "history")}
    history = snapshot.get("history")
    return Write(
        snapshot["runId"],
        whole=True,
        fields=fields,
        trace=[json.dumps(step) for step in snapshot["trace"]],
        history=None if history is None else [json.dumps(turn) for turn in history],
        if_match=if_match,
    )


def _patch(
    run_id: str,
    fields: dict[str, Any],
    *,
    trace_from: int | None = None,
    trace: list[Any] | None = None,
    if_match: int | None = None,
) -> Write:
    return Write(
        run_id,
        whole=False,
        fields=fields,
        trace=[json.dumps(step) for step in trace or []],
        trace_from=trace_from,
        if_match=if_match,
    )


def _snapshot(run_id: str, steps: int, **fields: Any) -> dict[str, Any]:
    snapshot = agent_snapshot(run_id, **fields)
    for _ in range(steps):
        take_step(snapshot)
    return snapshot


# (the write embedded mode is sent, the same write through the HTTP client, the class raised)
REFUSALS: list[tuple[str, Callable[[], Write], Callable[[Any], Any], type[RunStoreError]]] = [
    (
        "stale-write",
        lambda: _whole(_snapshot("e", 1)),
        lambda client: client.put_run(_snapshot("e", 1)),
        StaleWrite,
    ),
    (
        "trace-gap",
        lambda: _patch("e", {}, trace_from=9, trace=[{}]),
        lambda client: client.patch_run("e", {"traceFrom": 9, "trace": [{}]}),
        TraceGap,
    ),
    (
        "precondition-failed",
        lambda: _patch("e", {"revisions": 1}, if_match=99),
        lambda client: client.patch_run("e", {"revisions": 1}, if_match=99),
        PreconditionFailed,
    ),
    (
        "invalid-fields",
        lambda: _whole(_snapshot("e", 3, revisions="3")),
        lambda client: client.put_run(_snapshot("e", 3, revisions="3")),
        InvalidRun,
    ),
    (
        "not-found",
        lambda: _patch("absent", {"revisions": 1}),
        lambda client: client.patch_run("absent", {"revisions": 1}),
        RunNotFound,
    ),
]


@anyio_mark
@pytest.mark.parametrize(
    ("write", "call", "cls"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
async def test_embedded_mode_raises_the_class_the_http_client_raises(
    settings: Settings,
    tmp_path: Path,
    write: Callable[[], Write],
    call: Callable[[Any], Any],
    cls: type[RunStoreError],
) -> None:
    embedded = EmbeddedStore(tmp_path / "embedded.db")
    try:
        assert isinstance(embedded._send(_whole(_snapshot("e", 3))), WriteAck)
        with pytest.raises(RunStoreError) as in_process:
            embedded._send(write())
    finally:
        embedded.close()
    async with client_rig(settings, "async") as rig:
        assert isinstance(await rig.client.put_run(_snapshot("e", 3)), WriteAck)
        with pytest.raises(RunStoreError) as over_http:
            await call(rig.client)
    assert type(in_process.value) is type(over_http.value) is cls
    assert in_process.value.status == over_http.value.status == cls.default_status
    for key in ("type", "title", "status", "errors"):
        assert in_process.value.problem.get(key) == over_http.value.problem.get(key), key
