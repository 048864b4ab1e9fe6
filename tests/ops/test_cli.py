"""The ``runstore`` command as a user runs it: the console script and ``python -m``."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

RUNSTORE = str(Path(sys.executable).with_name("runstore"))
MODULE = (sys.executable, "-m", "runstore.service")


def run(
    *command: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTORE_")}
    return subprocess.run(
        command,
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("entry", [(RUNSTORE,), MODULE], ids=["console-script", "python-m"])
def test_help_names_every_command(entry: tuple[str, ...]) -> None:
    result = run(*entry, "--help")

    assert result.returncode == 0
    for command in ("serve", "import"):
        assert command in result.stdout


@pytest.mark.parametrize("entry", [(RUNSTORE,), MODULE], ids=["console-script", "python-m"])
def test_serve_help_names_its_flags_and_variables(entry: tuple[str, ...]) -> None:
    result = run(*entry, "serve", "--help")

    assert result.returncode == 0
    for flag, variable in (
        ("--db", "RUNSTORE_DB"),
        ("--host", "RUNSTORE_HOST"),
        ("--port", "RUNSTORE_PORT"),
    ):
        assert flag in result.stdout
        assert variable in result.stdout


@pytest.mark.parametrize(
    "arguments",
    [(), ("launch",), ("serve", "--port", "eighty"), ("import",)],
    ids=["no-command", "unknown-command", "port-not-a-number", "import-without-source"],
)
def test_usage_errors_exit_2_with_usage(arguments: tuple[str, ...]) -> None:
    result = run(RUNSTORE, *arguments)

    assert result.returncode == 2
    assert "usage: runstore" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "env", "setting"),
    [
        (("serve", "--port", "70000"), {}, "port"),
        (("serve",), {"RUNSTORE_PORT": "not-a-port"}, "port"),
        (("serve",), {"RUNSTORE_MAX_BODY_BYTES": "12"}, "max_body_bytes"),
        (("serve",), {"RUNSTORE_DATABASE_URL": "mysql://x"}, "database_url"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, arguments: tuple[str, ...], env: dict[str, str], setting: str
) -> None:
    result = run(RUNSTORE, *arguments, "--db", str(tmp_path / "runs.db"), env=env)

    assert result.returncode == 2
    assert f"invalid setting {setting}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs.db").exists()


def test_import_of_a_file_that_is_not_there_says_so(tmp_path: Path) -> None:
    result = run(RUNSTORE, "import", str(tmp_path / "missing.db"), "--db", str(tmp_path / "s.db"))

    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.db").exists()


def test_import_of_a_database_without_agent_runs_says_so(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (body TEXT)")
    connection.close()

    result = run(RUNSTORE, "import", str(other), "--db", str(tmp_path / "s.db"))

    assert result.returncode == 1
    assert "agent_runs" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_writes_to_runstore_db_without_db_flag(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.db"
    with sqlite3.connect(legacy) as connection:
        connection.execute(
            "CREATE TABLE agent_runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "started_at INTEGER NOT NULL, completed_at INTEGER, input TEXT NOT NULL, "
            "history TEXT, plan TEXT, trace TEXT NOT NULL, usage TEXT NOT NULL, "
            "step_index INTEGER NOT NULL, iterations INTEGER NOT NULL, "
            "revisions INTEGER NOT NULL, result_text TEXT, error TEXT)"
        )
        connection.execute(
            "INSERT INTO agent_runs VALUES "
            "('run-1', 'running', 1, NULL, 'hi', NULL, NULL, '[]', '{}', 0, 0, 0, NULL, NULL)"
        )
    connection.close()
    store = tmp_path / "from-env.db"

    result = run(RUNSTORE, "import", str(legacy), env={"RUNSTORE_DB": str(store)}, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "imported 1" in result.stdout
    assert store.exists()
    assert not (tmp_path / "runs.db").exists()


# The console script's entry point, run as if pydantic-settings and the other server extras
# were not installed (a client-only install: ``pip install .``); None in sys.modules makes
# their import fail as a missing module does.
CLIENT_ONLY = """
import sys
from importlib.metadata import entry_points
for name in ("pydantic_settings", "fastapi", "uvicorn", "orjson", "msgspec"):
    sys.modules[name] = None
(command,) = entry_points(group="console_scripts", name="runstore")
raise SystemExit(command.load()(sys.argv[1:]))
"""


def test_help_works_in_a_client_only_install() -> None:
    result = run(sys.executable, "-c", CLIENT_ONLY, "--help")

    assert result.returncode == 0, result.stderr
    assert "backup" in result.stdout


@pytest.mark.parametrize(
    "arguments",
    [("serve",), ("backup", "copy.db"), ("import", "agent_runs.db")],
    ids=["serve", "backup", "import"],
)
def test_a_client_only_install_says_in_one_line_what_to_install(
    arguments: tuple[str, ...], tmp_path: Path
) -> None:
    result = run(sys.executable, "-c", CLIENT_ONLY, *arguments, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pydantic_settings" in result.stderr
    assert 'pip install "runstore[server]"' in result.stderr
    assert list(tmp_path.iterdir()) == []
