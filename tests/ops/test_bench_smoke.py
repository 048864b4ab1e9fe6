"""The benchmarks still run: tiny workloads, every target, no timing checked."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

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


def test_http_load_runs_every_scenario_and_pairs_the_rounds(tmp_path: Path) -> None:
    results = tmp_path / "load.json"
    command = [sys.executable, str(ROOT / "bench" / "http_load.py")]
    command += ["--seconds", "0.3", "--warmup", "0.1", "--rounds", "2", "--connections", "2"]
    command += ["--json", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(results.read_text())
    rows = report["results"]
    expected = {
        ("floor", "PATCH 1 step"),
        ("durable", "PATCH 1 step"),
        ("runstore", "PATCH 1 step"),
        ("naive", "PUT 50 steps"),
        ("runstore", "PUT 50 steps"),
        ("naive", "GET 50 steps"),
        ("runstore", "GET 50 steps"),
        ("runstore", "PATCH unleased"),
        ("runstore", "PATCH leased"),
    }
    for round_number in (0, 1):
        measured = [row for row in rows if row["round"] == round_number]
        assert {(row["target"], row["scenario"]) for row in measured} == expected
        assert all(row["requests"] > 0 and row["errors"] == 0 for row in measured)
    # Runstore and its references take turns at going first.
    firsts = [
        next(row["target"] for row in rows if row["round"] == n and row["scenario"] == scenario)
        for scenario in ("PATCH 1 step", "PUT 50 steps")
        for n in (0, 1)
    ]
    assert firsts == ["floor", "durable", "naive", "runstore"]
    names = (
        "patch_vs_floor",
        "durable_patch_vs_floor",
        "patch_vs_durable",
        "put_vs_naive",
        "get_p99_over_p50",
        "leased_patch_vs_unleased",
    )
    for name in names:
        verdict = report["summary"][name]
        assert len(verdict["rounds"]) == 2
        # The median of two rounds is their mean.
        assert verdict["ratio"] == pytest.approx(sum(verdict["rounds"]) / 2, abs=0.002)
    patch = report["summary"]["patch_vs_floor"]
    by_round = {
        (row["target"], row["round"]): row["throughput"]
        for row in rows
        if row["scenario"] == "PATCH 1 step"
    }
    assert patch["rounds"] == [
        round(by_round["runstore", n] / by_round["floor", n], 3) for n in (0, 1)
    ]
    assert f"(rounds: {patch['rounds'][0]:.2f} {patch['rounds'][1]:.2f})" in done.stdout
    # The durable reference's figures have no target, and are printed as such.
    assert report["summary"]["patch_vs_durable"]["met"] is None
    assert "patch_vs_durable" in done.stdout


def test_the_durable_reference_answers_once_the_body_is_committed(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from http_load import start_reference
    finally:
        sys.path.remove(str(ROOT / "bench"))

    db = tmp_path / "durable.db"
    bodies = [f'{{"step": {n}}}'.encode() for n in range(20)]
    server = start_reference("durable", str(db), False)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            for n, body in enumerate(bodies):
                assert client.patch(f"/runs/run-{n % 3}", content=body).status_code == 204
                # Read on another connection at once: what was answered is committed.
                with contextlib.closing(sqlite3.connect(db)) as reader:
                    stored = reader.execute("SELECT count(*) FROM bodies").fetchone()[0]
                assert stored == n + 1
    finally:
        server.stop()
    with contextlib.closing(sqlite3.connect(db)) as reader:
        rows = reader.execute("SELECT run_id, body FROM bodies ORDER BY rowid").fetchall()
        mode = reader.execute("PRAGMA journal_mode").fetchone()
    assert rows == [(f"run-{n % 3}", body) for n, body in enumerate(bodies)]
    assert mode == ("wal",)


def test_http_load_compares_patch_with_instrumentation_on_and_off(tmp_path: Path) -> None:
    results = tmp_path / "load.json"
    command = [sys.executable, str(ROOT / "bench" / "http_load.py"), "--scenarios"]
    command += ["instrumentation", "--seconds", "0.3", "--warmup", "0.1", "--rounds", "2"]
    command += ["--connections", "2", "--json", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(results.read_text())
    measured = {(row["target"], row["round"]) for row in report["results"]}
    targets = ("floor", "uninstrumented", "runstore")
    assert measured == {(target, n) for target in targets for n in (0, 1)}
    assert set(report["summary"]) == {"patch_on_vs_off", "patch_vs_floor"}
    assert all(len(verdict["rounds"]) == 2 for verdict in report["summary"].values())


@pytest.mark.parametrize(
    ("kind", "flags"),
    [("patch", ()), ("put", ()), ("patch", ("--no-metrics",)), ("metrics", ())],
)
def test_app_cpu_runs_the_app_with_an_instant_store(kind: str, flags: tuple[str, ...]) -> None:
    command = [sys.executable, str(ROOT / "bench" / "app_cpu.py"), kind, "-n", "50", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    # It checks every answer was a 200 and fails otherwise.
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"{kind}: ")
    assert float(done.stdout.split()[1]) > 0


def test_events_bench_delivers_every_event_and_measures_both_loads() -> None:
    command = [sys.executable, str(ROOT / "bench" / "events.py"), "--watchers", "1,3"]
    command += ["--events", "5", "--seconds", "0.5", "--connections", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("  {")]
    assert [(row["watchers"], row["deliveries"]) for row in rows] == [(1, 5), (3, 15)]
    assert all(row["watchers_without_last_event"] == 0 for row in rows)
    assert "without watchers: " in done.stdout
    assert "with 3 watchers: " in done.stdout
    assert "p99 ratio" in done.stdout
    assert "paced p99 ratio" in done.stdout  # the interleaved comparison
    assert "saturating p99 ratio" in done.stdout


@pytest.mark.postgres
def test_pg_groups_measures_each_group_size(postgres_database: str) -> None:
    command = [sys.executable, str(ROOT / "bench" / "pg_groups.py"), "--database-url"]
    command += [postgres_database, "--sizes", "1", "3", "--groups", "5", "--rounds", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    # It reads every run back and fails when a PATCH is missing.
    assert done.returncode == 0, done.stdout + done.stderr
    medians = [line for line in done.stdout.splitlines() if "median replica" in line]
    assert [line.split(":")[0] for line in medians] == ["group of   1", "group of   3"]
