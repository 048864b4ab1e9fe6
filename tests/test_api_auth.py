"""Auth as the contract states it: RUNSTORE_TOKENS with read, write and admin scopes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from support import assert_problem, make_snapshot

from runstore.service import Settings

pytestmark = pytest.mark.anyio

TOKENS = "reader-token:read,writer-token:write,admin-token:admin,bare-token"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"tokens": SecretStr(TOKENS)})


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> bytes:
    response = await client.put(
        "/runs/run-1", json=make_snapshot("run-1", steps=2), headers=bearer("writer-token")
    )
    assert response.status_code == 201
    return (await client.get("/runs/run-1", headers=bearer("reader-token"))).content


READS: list[tuple[str, str, Any]] = [
    ("GET", "/runs/run-1", None),
    ("HEAD", "/runs/run-1", None),
    ("GET", "/runs", None),
    ("GET", "/readyz", None),
]
WRITES: list[tuple[str, str, Any]] = [
    ("PUT", "/runs/run-1", make_snapshot("run-1", steps=3)),
    ("PATCH", "/runs/run-1", {"trace": [{"n": 2}], "traceFrom": 2}),
    ("DELETE", "/runs/run-1", None),
]
ADMIN: list[tuple[str, str, Any]] = [("DELETE", "/runs?startedBefore=9999999999999", None)]
EVERYTHING = READS + WRITES + ADMIN


@pytest.mark.parametrize(("method", "path", "body"), EVERYTHING)
@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (None, None),
        ("Bearer wrong-token", "invalid_token"),
        ("Bearer reader-token-but-longer", "invalid_token"),
        ("Basic cmVhZGVyLXRva2VuOg==", "invalid_request"),
        ("reader-token", "invalid_request"),
        ("Bearer ", "invalid_request"),
    ],
)
async def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(
    client: httpx.AsyncClient,
    stored: bytes,
    method: str,
    path: str,
    body: Any,
    authorization: str | None,
    error: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.request(method, path, json=body, headers=headers)

    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if error is not None:
        assert f'error="{error}"' in challenge
    if method != "HEAD":
        assert_problem(response, 401, "unauthorized")
    assert (await client.get("/runs/run-1", headers=bearer("admin-token"))).content == stored


@pytest.mark.parametrize(
    ("token", "method", "path", "body"),
    [("reader-token", *request) for request in WRITES + ADMIN]
    + [("writer-token", *request) for request in ADMIN]
    + [("bare-token", *request) for request in ADMIN],
)
async def test_a_token_without_the_scope_is_403(
    client: httpx.AsyncClient, stored: bytes, token: str, method: str, path: str, body: Any
) -> None:
    response = await client.request(method, path, json=body, headers=bearer(token))

    problem = assert_problem(response, 403, "forbidden")
    assert "scope" in problem["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert (await client.get("/runs/run-1", headers=bearer("admin-token"))).content == stored


@pytest.mark.parametrize(
    ("token", "method", "path", "body"),
    [("reader-token", *request) for request in READS]
    + [(token, *request) for token in ("writer-token", "bare-token") for request in READS + WRITES]
    + [("admin-token", *request) for request in EVERYTHING],
)
async def test_a_token_with_the_scope_is_let_through(
    client: httpx.AsyncClient, stored: bytes, token: str, method: str, path: str, body: Any
) -> None:
    response = await client.request(method, path, json=body, headers=bearer(token))

    assert response.status_code in (200, 204), response.text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"])
async def test_healthz_never_needs_a_token(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await client.get("/healthz", headers=headers)

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_unknown_paths_need_a_token_too(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nothing-here"), 401, "unauthorized")
    assert_problem(
        await client.get("/nothing-here", headers=bearer("reader-token")), 404, "not-found"
    )


async def test_the_scheme_name_is_case_insensitive(
    client: httpx.AsyncClient, stored: bytes
) -> None:
    response = await client.get("/runs/run-1", headers={"Authorization": "bearer reader-token"})

    assert response.status_code == 200
    assert response.content == stored
