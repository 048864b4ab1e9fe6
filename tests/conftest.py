from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).parent))

from support import BACKENDS, ServerProcess, StoreLocation, in_process_app, store_location

from runstore.service import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings(db=str(db_path), tokens=None, database_url=None)


POSTGRES_URL_VARIABLE = "RUNSTORE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session: created here, dropped at the end.

    RUNSTORE_TEST_POSTGRES_URL names the server (a role that may create databases). Without it
    the PostgreSQL tests skip; with it, an unreachable server fails them.
    """
    admin_url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not admin_url:
        pytest.skip(
            f"PostgreSQL tests need a server: set {POSTGRES_URL_VARIABLE}="
            "postgresql://postgres@127.0.0.1:5432/postgres (a role that may create databases), "
            "as .ci/run does"
        )
    import psycopg
    from psycopg import sql

    name = f"runstore_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(name)
                )
            )
    except psycopg.OperationalError as exc:
        pytest.fail(f"{POSTGRES_URL_VARIABLE} is set but PostgreSQL is unreachable: {exc}")
    try:
        yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """The session's PostgreSQL database with no runs in it, so tests stay independent."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "DO $$ BEGIN IF to_regclass('runs') IS NOT NULL THEN "
            "TRUNCATE runs, steps, turns, probe CASCADE; END IF; END $$"
        )
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each storage backend in turn: tests that use ``client`` run once on each."""
    backend_name: str = request.param
    return backend_name


@pytest.fixture
async def client(
    backend: str, settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """An async client talking to the app in process: SQLite in a temporary file, or
    PostgreSQL in the session's database."""
    if backend == "postgres":
        url = request.getfixturevalue("postgres_database")
        settings = settings.model_copy(update={"database_url": SecretStr(url)})
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://runstore"
        ) as http,
    ):
        yield http


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerProcess]:
    """A real uvicorn server (``runstore serve``) on a free port."""
    with ServerProcess(db_path) as process:
        yield process


@pytest.fixture(params=BACKENDS)
def served_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    """Each backend in turn, for tests that run real servers: where they store."""
    return store_location(request, tmp_path)
