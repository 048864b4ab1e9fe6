"""The agent-workload benchmark still runs: a tiny workload, every target, no timing checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_agent_workload_runs_and_reads_every_run_back(tmp_path: Path) -> None:
    results = tmp_path / "workload.json"
    command = [sys.executable, str(ROOT / "bench" / "agent_workload.py")]
    command += ["-P", "2", "-R", "1", "-S", "5", "--embedded", "--json", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(results.read_text())
    figures = {row["target"]: row for row in summary["figures"]}
    assert set(figures) == {"runstore (sqlite)", "embedded", "reference (whole JSON)"}
    for row in figures.values():
        assert row["hooks"] == 2 * (5 + 2)
        assert (row["runs_checked"], row["runs_wrong"], row["errors"]) == (2, 0, [])
        assert row["hooks_per_second"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    assert summary["runstore_over_reference"] > 0
    assert "runstore / reference hooks per second" in done.stdout
