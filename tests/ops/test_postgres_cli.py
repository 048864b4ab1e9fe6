"""``runstore import`` and ``runstore serve`` pointed at PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import ServerProcess

pytestmark = [pytest.mark.postgres]

_LEGACY_TABLE = """
CREATE TABLE agent_runs (
    run_id TEXT PRIMARY KEY, status TEXT NOT NULL, started_at INTEGER NOT NULL,
    completed_at INTEGER, input TEXT NOT NULL, history TEXT, plan TEXT, trace TEXT NOT NULL,
    usage TEXT NOT NULL, step_index INTEGER NOT NULL, iterations INTEGER NOT NULL,
    revisions INTEGER NOT NULL, result_text TEXT, error TEXT
)
"""


def legacy_database(path: Path) -> Path:
    """An original agent_runs file: two good runs and one whose trace is not JSON."""
    with sqlite3.connect(path) as connection:
        connection.execute(_LEGACY_TABLE)
        connection.executemany(
            "INSERT INTO agent_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("done", "completed", 1000, 2000, "q", None, '{"steps":["a"]}',
                 '[{"output":1.5e300},{"output":12345678901234567890}]', '{"tokens":3}',
                 2, 2, 0, "the answer", None),
                ("going", "running", 3000, None, "q2", '[{"role":"user"}]', None, "[]",
                 "{}", 0, 0, 0, None, None),
                ("broken", "running", 4000, None, "q3", None, None, "[not json", "{}",
                 0, 0, 0, None, None),
            ],
        )  # fmt: skip
    connection.close()
    return path


def runstore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstore.service", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.server
def test_import_copies_legacy_runs_into_postgres(tmp_path: Path, postgres_database: str) -> None:
    source = legacy_database(tmp_path / "legacy.db")
    first = runstore("import", str(source), "--database-url", postgres_database)
    assert first.returncode == 1, first.stderr  # one row could not be imported
    assert "imported 2, unchanged 0, kept newer stored 0, invalid 1" in first.stdout
    assert "not imported: broken" in first.stderr

    again = runstore("import", str(source), "--database-url", postgres_database)
    assert "imported 0, unchanged 2" in again.stdout

    with ServerProcess(args=("--database-url", postgres_database)) as server:
        done = httpx.get(f"{server.url}/runs/done").json()
        going = httpx.get(f"{server.url}/runs/going")
    assert done["trace"] == [{"output": 1.5e300}, {"output": 12345678901234567890}]
    assert done["plan"] == {"steps": ["a"]}
    assert (done["completedAt"], done["text"]) == (2000, "the answer")
    assert going.headers["etag"] == '"1"'
    assert json.loads(going.content)["history"] == [{"role": "user"}]


@pytest.mark.slow
def test_import_says_when_it_cannot_reach_postgres(tmp_path: Path, postgres_url: str) -> None:
    source = legacy_database(tmp_path / "legacy.db")
    # No server listens there: after the start-up wait, a one-line reason.
    result = runstore(
        "import", str(source), "--database-url", "postgresql://postgres@127.0.0.1:1/none"
    )
    assert result.returncode == 1
    assert "Cannot connect to PostgreSQL at 127.0.0.1:1/none" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.server
@pytest.mark.slow
def test_serve_refuses_a_database_it_cannot_reach_with_one_line(postgres_url: str) -> None:
    result = runstore("serve", "--port", "0", "--database-url", "postgresql://u:pw@127.0.0.1:1/x")
    assert result.returncode == 1
    assert "runstore: Cannot connect to PostgreSQL at 127.0.0.1:1/x" in result.stderr
    assert "u:pw@" not in result.stderr
    assert "Traceback" not in result.stderr
