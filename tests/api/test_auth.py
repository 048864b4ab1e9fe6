"""Tokens and scopes (docs/api.md, Auth): every endpoint under every scope, and no token.

``read`` < ``write`` < ``admin``; a bare token is ``write``; ``/healthz`` is open; a missing or
unknown token is 401 with ``WWW-Authenticate: Bearer``; a valid token without the scope is 403.
A refused request changes nothing. Binding to a non-loopback address without tokens warns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from support import ServerProcess, assert_problem, make_snapshot

from runstore.service import Settings, create_app
from runstore.service.api.auth import BearerAuth

TOKENS = "reader-token:read,writer-token:write,admin-token:admin,bare-token"
RUN = "run-auth"


@dataclass(frozen=True)
class Caller:
    """Who sends the request: the Authorization header and the scope it carries."""

    name: str
    authorization: str | None
    rank: int  # 0 none or invalid, 1 read, 2 write, 3 admin
    # The challenge's error code when refused for its credentials (RFC 6750, section 3.1).
    error: str | None = None


CALLERS = [
    Caller("no-header", None, 0),
    Caller("unknown-token", "Bearer not-a-token", 0, "invalid_token"),
    Caller("token-prefix", "Bearer reader-tok", 0, "invalid_token"),
    Caller("token-longer", "Bearer reader-token-but-longer", 0, "invalid_token"),
    Caller("token-in-other-case", "Bearer READER-TOKEN", 0, "invalid_token"),
    Caller("basic-scheme", "Basic cmVhZGVyLXRva2VuOg==", 0, "invalid_request"),
    Caller("bearer-without-token", "Bearer ", 0, "invalid_request"),
    Caller("token-without-scheme", "reader-token", 0, "invalid_request"),
    Caller("read", "Bearer reader-token", 1),
    Caller("write", "Bearer writer-token", 2),
    Caller("bare-is-write", "Bearer bare-token", 2),
    Caller("admin", "Bearer admin-token", 3),
    Caller("scheme-in-lower-case", "bearer admin-token", 3),
]


@dataclass(frozen=True)
class Endpoint:
    """One operation of the API, the scope it needs and what it answers when allowed."""

    name: str
    method: str
    path: str
    needs: int  # 0 open, 1 read, 2 write, 3 admin
    success: int
    body: dict[str, Any] | None = None
    changes: bool = False


ENDPOINTS = [
    Endpoint("healthz", "GET", "/healthz", 0, 200),
    # The viewer's static pages hold no data; their data calls need the token.
    Endpoint("viewer-page", "GET", "/ui/", 0, 200),
    Endpoint("viewer-script", "GET", "/ui/run.js", 0, 200),
    Endpoint("viewer-post", "POST", "/ui/", 2, 405),
    Endpoint("readyz", "GET", "/readyz", 1, 200),
    Endpoint("get-run", "GET", f"/runs/{RUN}", 1, 200),
    Endpoint("head-run", "HEAD", f"/runs/{RUN}", 1, 200),
    Endpoint("list-runs", "GET", "/runs?limit=5", 1, 200),
    Endpoint("unknown-path", "GET", "/nothing-here", 1, 404),
    Endpoint("create-run", "PUT", "/runs/run-new", 2, 201, make_snapshot("run-new"), True),
    Endpoint("replace-run", "PUT", f"/runs/{RUN}", 2, 200, make_snapshot(RUN, 2), True),
    Endpoint(
        "patch-run",
        "PATCH",
        f"/runs/{RUN}",
        2,
        200,
        {"trace": [{"step": 1}], "traceFrom": 1},
        True,
    ),
    Endpoint("delete-run", "DELETE", f"/runs/{RUN}", 2, 204, changes=True),
    Endpoint("post-run", "POST", f"/runs/{RUN}", 2, 405),
    Endpoint("bulk-delete", "DELETE", "/runs?startedBefore=1800000000000", 3, 200, changes=True),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"tokens": SecretStr(TOKENS)})


@pytest.fixture
async def secured(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A client of the app in process, on each backend, whose RUNSTORE_TOKENS is TOKENS, with
    one run stored."""
    seeded = await client.put(
        f"/runs/{RUN}", json=make_snapshot(RUN, 1), headers={"Authorization": "Bearer admin-token"}
    )
    assert seeded.status_code == 201, seeded.text
    return client


async def _stored_state(http: httpx.AsyncClient) -> list[Any]:
    listing = await http.get("/runs", headers={"Authorization": "Bearer admin-token"})
    assert listing.status_code == 200
    runs = listing.json()["runs"]
    bodies = []
    for summary in runs:
        run = await http.get(
            f"/runs/{summary['runId']}", headers={"Authorization": "Bearer admin-token"}
        )
        bodies.append((summary["version"], run.json()))
    return bodies


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c.name)
async def test_every_endpoint_under_every_scope(
    secured: httpx.AsyncClient, endpoint: Endpoint, caller: Caller
) -> None:
    before = await _stored_state(secured)
    headers = {} if caller.authorization is None else {"Authorization": caller.authorization}
    response = await secured.request(
        endpoint.method, endpoint.path, json=endpoint.body, headers=headers
    )
    allowed = caller.rank >= endpoint.needs
    if allowed:
        assert response.status_code == endpoint.success, response.text
        if endpoint.changes:
            assert await _stored_state(secured) != before
        return
    if endpoint.method == "HEAD":
        assert response.status_code == (401 if caller.rank == 0 else 403)
        assert response.content == b""
    elif caller.rank == 0:
        assert_problem(response, 401, "unauthorized")
    else:
        body = assert_problem(response, 403, "forbidden")
        assert "scope" in body["detail"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    error = caller.error if caller.rank == 0 else "insufficient_scope"
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    assert await _stored_state(secured) == before


@pytest.mark.anyio
async def test_an_unknown_token_says_so_in_the_challenge(secured: httpx.AsyncClient) -> None:
    response = await secured.get("/runs", headers={"Authorization": "Bearer wrong"})
    assert_problem(response, 401, "unauthorized")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    lacking = await secured.delete(
        "/runs?startedBefore=1", headers={"Authorization": "Bearer writer-token"}
    )
    assert_problem(lacking, 403, "forbidden")
    assert 'error="insufficient_scope"' in lacking.headers["www-authenticate"]


def test_tokens_are_held_as_digests_only() -> None:
    table = Settings(tokens=TOKENS).token_table
    assert table is not None
    assert all(len(digest) == 32 for digest, _ in table.scopes)
    held = b"".join(digest for digest, _ in table.scopes)
    assert b"reader-token" not in held
    assert b"admin-token" not in held


@pytest.mark.parametrize("spec", [":read", "reader-token:read, :admin", ",", " , "])
def test_a_token_list_with_an_empty_token_is_refused(spec: str) -> None:
    # ":admin" must not become a token spelled ":admin" with the write scope.
    with pytest.raises(ValueError, match="token"):
        Settings(tokens=spec)


@pytest.mark.server
def test_a_real_server_reads_its_tokens_from_the_environment(tmp_path: Path) -> None:
    with (
        ServerProcess(tmp_path / "runs.db", env={"RUNSTORE_TOKENS": TOKENS}) as server,
        server.client() as http,
    ):
        assert http.get("/healthz").status_code == 200
        assert_problem(http.get("/runs"), 401, "unauthorized")
        assert http.get("/runs", headers={"Authorization": "Bearer reader-token"}).is_success
        refused = http.put(
            "/runs/run-1",
            json=make_snapshot("run-1"),
            headers={"Authorization": "Bearer reader-token"},
        )
        assert_problem(refused, 403, "forbidden")
        created = http.put(
            "/runs/run-1",
            json=make_snapshot("run-1"),
            headers={"Authorization": "Bearer bare-token"},
        )
        assert created.status_code == 201


def _open_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "runstore"
        and record.levelno == logging.WARNING
        and "RUNSTORE_TOKENS" in record.getMessage()
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("host", "tokens", "warns"),
    [
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("192.0.2.10", None, True),
        ("runstore.example", None, True),
        ("0.0.0.0", "admin-token:admin", False),
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
        ("[::1]", None, False),
        ("localhost", None, False),
    ],
)
async def test_listening_beyond_loopback_without_tokens_warns_at_start(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    host: str,
    tokens: str | None,
    warns: bool,
) -> None:
    # The lifespan runs in process: nothing is bound, so no address is ever exposed here.
    settings = Settings(db=str(tmp_path / "runs.db"), host=host, tokens=tokens, database_url=None)
    app = create_app(settings)
    with caplog.at_level(logging.WARNING, logger="runstore"):
        async with app.router.lifespan_context(app):
            pass
    found = _open_warnings(caplog)
    if warns:
        assert len(found) == 1
        assert host in found[0].getMessage()
    else:
        assert found == []


def test_an_empty_token_list_means_no_auth_only_when_auth_is_disabled_by_name() -> None:
    with pytest.raises(ValueError, match="set but empty"):
        Settings(tokens="")
    assert Settings(tokens="", auth_disabled=True).token_table is None
    assert Settings(tokens="admin-token:admin", auth_disabled=True).token_table is None


@pytest.mark.parametrize("spec", ["r0: read", "r0:reader", "r0:READ ", "a b"])
def test_a_token_entry_that_is_not_token_colon_scope_is_refused(spec: str) -> None:
    # Once "r0: read" became a write token spelled "r0: read" (issue 14).
    if spec == "r0:READ ":
        assert Settings(tokens=spec).token_table is not None  # scopes ignore case; ends strip
        return
    with pytest.raises(ValueError, match="RUNSTORE_TOKENS entry 1"):
        Settings(tokens=spec)


@pytest.mark.anyio
async def test_websocket_connections_are_refused_before_any_route() -> None:
    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    guard = BearerAuth(app, Settings(tokens=TOKENS).token_table)  # type: ignore[arg-type]
    await guard({"type": "websocket", "path": "/runs", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert reached == []
