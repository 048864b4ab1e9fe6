from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import ServerProcess, in_process_app  # noqa: E402

from runstore.service import Settings  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings(db=str(db_path), tokens=None, database_url=None)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An async client talking to the app in process (SQLite in a temporary file)."""
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://runstore")
        as http,
    ):
        yield http


@pytest.fixture
def server(db_path: Path) -> Iterator[ServerProcess]:
    """A real uvicorn server (``runstore serve``) on a free port."""
    with ServerProcess(db_path) as process:
        yield process
