"""Traces (docs/operations.md, "Traces"): with RUNSTORE_TELEMETRY and an OpenTelemetry SDK
provider, each request is a span (the run routes' included), with the store's write and its
group commit as child spans, on either backend. Run in a process of its own: a tracer provider
is set once per process, for good."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install runstore[otel])")

TESTS = Path(__file__).resolve().parent.parent

SCRIPT = """
import asyncio, json, sys
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import in_process_app, make_snapshot
from runstore.service import Settings

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def main():
    where = sys.argv[1]
    if where.startswith("postgresql://"):
        settings = Settings(database_url=where, telemetry=True)
    else:
        settings = Settings(db=where, telemetry=True)
    async with in_process_app(settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rs") as http:
            await http.put("/runs/r", json=make_snapshot("r"))
            exporter.clear()
            await http.patch("/runs/r", json={"status": "paused"})

asyncio.run(main())
spans = [
    {
        "name": span.name,
        "id": span.context.span_id,
        "trace": span.context.trace_id,
        "parent": span.parent.span_id if span.parent else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
    }
    for span in exporter.get_finished_spans()
]
print(json.dumps(spans))
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or the PostgreSQL test database with no runs in it."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_database")
        return url
    return str(tmp_path / "runs.db")


def test_a_patch_is_a_request_span_with_store_write_and_commit_children(
    store_location: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, store_location],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    spans: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])
    by_name = {span["name"]: span for span in spans}
    request = by_name["PATCH /runs/{runId}"]
    assert request["kind"] == "SERVER"
    assert request["attributes"]["http.route"] == "/runs/{runId}"
    assert request["attributes"]["http.response.status_code"] == 200
    write = by_name["runstore.store.write"]
    assert write["parent"] == request["id"]
    assert write["attributes"]["runstore.write"] == "PatchRun"
    commit = by_name["runstore.store.commit"]
    assert commit["parent"] == write["id"]
    assert commit["attributes"]["runstore.writes"] == 1
    assert {span["trace"] for span in (request, write, commit)} == {request["trace"]}
