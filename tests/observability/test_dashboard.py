"""The dashboard and alert rules (docs/operations.md, "Dashboard", "Alerts"): promtool accepts
the rules, and the dashboard and the rules name only metrics the server exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from metrics_rig import Samples, promtool

from runstore.service.events import EventBroker
from runstore.service.metrics import ServerMetrics
from runstore.service.store.base import StoreStats

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "runstore.json"
ALERTS = ROOT / "deploy" / "observability" / "alerts.yml"
# A metric name in PromQL: the server's and the collectors' prefixes, and Prometheus's `up`.
NAME = re.compile(r"\b((?:runstore|process|python)_[a-z_]+|up)\b")
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def exposed_names() -> set[str]:
    """Every series name a server exposes, on either backend (a store that reports all)."""
    metrics = ServerMetrics()
    every_gauge = StoreStats(
        wal_bytes=1, pool_size=2, pool_in_use=1, runs_by_status={"running": 1}, live_leases=1
    )
    metrics.watch(lambda: every_gauge, EventBroker())
    metrics.request("/runs/{runId}", "PATCH", 200, 0.01)
    metrics.committed(0.002, 3, [])
    names = {name for name, _ in Samples(metrics.exposition().decode()).values}
    return names | {"up"}


def test_the_dashboard_uses_only_exposed_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in NAME.findall(expr)}
    assert used, "the dashboard has no queries"
    assert used - exposed_names() == set()
    # What the dashboard is for (issue 16): each of these has a panel.
    for wanted in (
        "runstore_http_requests_total",
        "runstore_http_request_duration_seconds_bucket",
        "runstore_store_commit_duration_seconds_bucket",
        "runstore_store_write_queue",
        "runstore_runs",
        "runstore_leases_live",
        "runstore_event_streams_open",
    ):
        assert wanted in used


def test_promtool_accepts_the_alert_rules_and_they_use_exposed_metrics() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 rules found" in checked.stdout
    used = set(NAME.findall(ALERTS.read_text()))
    assert used - exposed_names() == set()
