"""The PostgreSQL backend answers exactly as the SQLite one: the same requests, sent to a real
server on each, get the same statuses, headers that matter and bytes."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ServerProcess, make_snapshot

pytestmark = [pytest.mark.postgres, pytest.mark.server, pytest.mark.slow]

MAX_INT = 2**63 - 1


@pytest.fixture(scope="module")
def servers(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SQLite server and a PostgreSQL server, each with a client."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "DO $$ BEGIN IF to_regclass('runs') IS NOT NULL THEN "
            "TRUNCATE runs, steps, turns, probe CASCADE; END IF; END $$"
        )
    db: Path = tmp_path_factory.mktemp("differential") / "runs.db"
    with (
        ServerProcess(db) as sqlite_server,
        ServerProcess(args=("--database-url", postgres_url)) as postgres_server,
        sqlite_server.client(timeout=30) as sqlite_client,
        postgres_server.client(timeout=30) as postgres_client,
    ):
        yield sqlite_client, postgres_client


any_text = st.text(st.characters(exclude_categories=()), max_size=8)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
json_object = st.dictionaries(any_text, json_value, max_size=3)
millis = st.sampled_from([0, 1, 1_700_000_000_000, MAX_INT])
maybe_millis = st.none() | millis


def snapshots() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "status": st.sampled_from(["running", "completed", "failed"]),
            "startedAt": millis,
            "input": any_text,
            "trace": st.lists(json_value, max_size=5),
            "usage": json_object,
        },
        optional={
            "completedAt": maybe_millis,
            "history": st.none() | st.lists(json_object, max_size=3),
            "plan": st.none() | json_object,
            "text": st.none() | any_text,
            "error": st.none() | any_text,
            "stepIndex": st.integers(0, MAX_INT),
            "agentVersion": json_value,
        },
    )


def _flatten(patch: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in patch.items() if k not in ("_trace", "_history")}
    if "_trace" in patch:
        body["trace"], body["traceFrom"] = patch["_trace"]
    if "_history" in patch:
        body["history"], body["historyFrom"] = patch["_history"]
    return body


def patches() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            # "end": from the stored length, as an agent appends; a number may leave a gap.
            "_trace": st.tuples(
                st.lists(json_value, max_size=3), st.just("end") | st.integers(0, 7)
            ),
            "_history": st.tuples(
                st.lists(json_object, max_size=2), st.just("end") | st.integers(0, 3)
            ),
            "history": st.none(),
            "status": st.sampled_from(["running", "completed"]),
            "startedAt": millis,
            "completedAt": maybe_millis,
            "plan": st.none() | json_object,
            "usage": json_object,
            "text": st.none() | any_text,
            "agentVersion": json_value,
        },
    ).map(_flatten)


# Mostly unconditional writes, so that most reach the store's rules; "current" is the stored
# version, so conditional writes succeed too.
if_match = st.sampled_from([None, None, None, "current", "current", 1, 3])
operation = st.sampled_from(["PUT", "PATCH", "PATCH", "PATCH", "PATCH", "DELETE", "RETAIN"])
operations = st.lists(
    operation.flatmap(
        lambda kind: st.tuples(
            st.just(kind),
            {"PUT": snapshots(), "PATCH": patches(), "DELETE": st.none(), "RETAIN": millis}[kind],
            if_match if kind != "RETAIN" else st.none(),
            st.sampled_from([False, False, True]) if kind == "PUT" else st.just(False),
        )
    ),
    min_size=3,
    max_size=10,
)
serial = itertools.count()


def answer_of(response: httpx.Response) -> tuple[Any, ...]:
    """What must match between backends: status, ETag, and the body (updatedAt and a
    problem's requestId aside: each answer's is its own)."""
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json") and body:
        body = json.loads(body)
        if isinstance(body, dict):
            body.pop("requestId", None)
        if isinstance(body, dict) and isinstance(body.get("runs"), list):
            for summary in body["runs"]:
                summary.pop("updatedAt")
    return response.status_code, response.headers.get("etag"), body


def same_answer(
    clients: tuple[httpx.Client, httpx.Client], method: str, url: str, **kw: Any
) -> Any:
    answers = [answer_of(client.request(method, url, **kw)) for client in clients]
    assert answers[0] == answers[1], f"{method} {url} {kw}"
    return answers[0]


def compare_listings(clients: tuple[httpx.Client, httpx.Client]) -> None:
    for params in ({"limit": 7}, {"limit": 5, "status": ["running", "failed"]}):
        cursor = None
        for _ in range(100):
            page_params = dict(params) if cursor is None else {**params, "cursor": cursor}
            _, _, page = same_answer(clients, "GET", "/runs", params=page_params)
            cursor = page["nextCursor"]
            if cursor is None:
                break


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    prefix=st.sampled_from(["a", "B", "Z9", "a.b", "a~", "0"]),
    first=snapshots(),
    steps=operations,
)
def test_both_backends_answer_every_request_alike(
    servers: tuple[httpx.Client, httpx.Client],
    prefix: str,
    first: dict[str, Any],
    steps: list[tuple[str, Any, int | str | None, bool]],
) -> None:
    run_id = f"{prefix}-{next(serial)}"
    url = f"/runs/{run_id}"
    stored: dict[str, Any] = {}
    for method, body, version, create_only in [("PUT", first, None, False), *steps]:
        headers = {"content-type": "application/json"}
        if version == "current":
            version = stored.get("_version", 1)
        if version is not None:
            headers["if-match"] = f'"{version}"'
        if create_only:
            headers["if-none-match"] = "*"
        if method == "PUT":
            body = make_snapshot(run_id, **body)
        if method == "PATCH":
            for items, start in (("trace", "traceFrom"), ("history", "historyFrom")):
                if body.get(start) == "end":
                    body = {**body, start: len(stored.get(items) or [])}
        if method in ("PUT", "PATCH"):
            same_answer(servers, method, url, content=json.dumps(body), headers=headers)
        elif method == "RETAIN":
            same_answer(servers, "DELETE", "/runs", params={"completedBefore": body})
        else:
            same_answer(servers, method, url, headers=headers)
        status, etag, stored = same_answer(servers, "GET", url)
        stored = {**stored, "_version": int(etag.strip('"'))} if status == 200 else {}
    compare_listings(servers)
