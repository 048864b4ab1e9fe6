"""GET /metrics (docs/operations.md, "Metrics"): request metrics by route template, store
metrics, runs by status and live leases kept by the writes, scope and the metrics port."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from metrics_rig import Samples, promtool
from pydantic import SecretStr
from support import ServerProcess, in_process_app, make_snapshot

from runstore.service import Settings

pytestmark = pytest.mark.anyio


async def scrape(http: httpx.AsyncClient, **headers: str) -> Samples:
    answer = await http.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Samples(answer.text)


async def test_requests_are_counted_by_route_template_never_by_run_id(
    client: httpx.AsyncClient,
) -> None:
    run_id = "run-with-a-distinctive-id"
    assert (await client.put(f"/runs/{run_id}", json=make_snapshot(run_id))).status_code == 201
    patch = {"trace": [{"step": 0}], "traceFrom": 0}
    assert (await client.patch(f"/runs/{run_id}", json=patch)).status_code == 200
    assert (await client.get("/runs/absent-run-id")).status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    assert (await client.post("/healthz")).status_code == 405

    samples = await scrape(client)

    requests = "runstore_http_requests_total"
    assert samples.get(requests, route="/runs/{runId}", method="PUT", status="2xx") == 1
    assert samples.get(requests, route="/runs/{runId}", method="PATCH", status="2xx") == 1
    assert samples.get(requests, route="/runs/{runId}", method="GET", status="4xx") == 1
    assert samples.get(requests, route="unmatched", method="GET", status="4xx") == 1
    assert samples.get(requests, route="/healthz", method="POST", status="4xx") == 1
    count = "runstore_http_request_duration_seconds_count"
    assert samples.get(count, route="/runs/{runId}", method="PATCH", status="2xx") == 1
    assert run_id not in samples.text
    assert "absent-run-id" not in samples.text
    assert "/no/such/path" not in samples.text
    # Two writes, each committed (alone: nothing else was writing).
    assert samples.get("runstore_store_commit_duration_seconds_count") == 2
    assert samples.get("runstore_store_commit_writes_sum") == 2
    assert samples.get("runstore_store_write_queue") == 0
    assert samples.get("runstore_event_streams_open") == 0
    assert samples.get("process_cpu_seconds_total") is not None
    assert samples.labelled("python_info")


async def test_a_sqlite_store_reports_its_wal_and_a_postgres_store_its_pool(
    client: httpx.AsyncClient, backend: str
) -> None:
    await client.put("/runs/r", json=make_snapshot("r"))
    samples = await scrape(client)
    if backend == "sqlite":
        wal = samples.get("runstore_sqlite_wal_bytes")
        assert wal is not None
        assert wal > 0
        assert not samples.labelled("runstore_postgres_pool_connections")
    else:
        assert samples.get("runstore_sqlite_wal_bytes") is None
        in_use = samples.get("runstore_postgres_pool_connections", state="in_use")
        idle = samples.get("runstore_postgres_pool_connections", state="idle")
        assert in_use is not None
        assert idle is not None
        assert in_use + idle >= 1


async def test_runs_by_status_follow_every_write_and_survive_a_restart(settings: Settings) -> None:
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        for number in range(3):
            await http.put(f"/runs/r{number}", json=make_snapshot(f"r{number}", history=turns))
        samples = await scrape(http)
        assert samples.get("runstore_runs", status="running") == 3

        # With a shorter history: the group writes the run before its turns are cut.
        finish = {"status": "completed", "completedAt": 5, "history": [], "historyFrom": 0}
        assert (await http.patch("/runs/r0", json=finish)).status_code == 200
        await http.put("/runs/r1", json=make_snapshot("r1", status="failed", completedAt=6))
        await http.delete("/runs/r2")
        # Refused writes change nothing: a stale write, a missing run.
        stale = await http.put("/runs/r0", json=make_snapshot("r0", status="running"))
        assert stale.status_code == 409
        assert (await http.delete("/runs/absent")).status_code == 404
        samples = await scrape(http)
        assert samples.get("runstore_runs", status="running") == 0
        assert samples.get("runstore_runs", status="completed") == 1
        assert samples.get("runstore_runs", status="failed") == 1

        deleted = await http.delete("/runs", params={"completedBefore": 10})
        assert deleted.json() == {"deleted": 2}
        samples = await scrape(http)
        assert samples.get("runstore_runs", status="completed") == 0
        assert samples.get("runstore_runs", status="failed") == 0
        await http.put("/runs/kept", json=make_snapshot("kept", status="paused"))

    # A new process counts the store once as it opens.
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        samples = await scrape(http)
        assert samples.labelled("runstore_runs") == [{"status": "paused"}]
        assert samples.get("runstore_runs", status="paused") == 1


async def test_postgres_counts_runs_by_status_as_it_opens(
    settings: Settings, postgres_database: str
) -> None:
    settings = settings.model_copy(update={"database_url": SecretStr(postgres_database)})
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        await http.put("/runs/a", json=make_snapshot("a"))
        await http.put("/runs/b", json=make_snapshot("b", status="completed", completedAt=1))
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        samples = await scrape(http)
        assert samples.get("runstore_runs", status="running") == 1
        assert samples.get("runstore_runs", status="completed") == 1


test_postgres_counts_runs_by_status_as_it_opens = pytest.mark.postgres(
    test_postgres_counts_runs_by_status_as_it_opens
)


async def test_live_leases_follow_grants_releases_claims_and_deletes(settings: Settings) -> None:
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        for run_id in ("a", "b", "c"):
            await http.put(f"/runs/{run_id}", json=make_snapshot(run_id))
        lease = await http.post("/runs/a/lease", json={"holder": "w1", "ttlMs": 60_000})
        assert lease.status_code == 200
        await http.post("/runs/b/lease", json={"holder": "w2", "ttlMs": 60_000})
        assert (await scrape(http)).get("runstore_leases_live") == 2

        released = await http.delete(
            "/runs/a/lease", headers={"Runstore-Lease": str(lease.json()["lease"])}
        )
        assert released.status_code == 204
        assert (await scrape(http)).get("runstore_leases_live") == 1

        claimed = await http.post(
            "/claims", json={"holder": "w3", "ttlMs": 60_000, "staleAfterMs": 0}
        )
        assert claimed.status_code == 200
        assert (await scrape(http)).get("runstore_leases_live") == 2

        await http.delete("/runs/b", headers={"Runstore-Lease": "1"})
        assert (await scrape(http)).get("runstore_leases_live") == 1


async def test_metrics_need_the_read_scope_under_tokens(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "runs.db"), tokens=SecretStr("reader:read"))
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        await scrape(http, authorization="Bearer reader")


async def test_metrics_off_serves_no_metrics_and_no_request_ids(tmp_path: Path) -> None:
    settings = Settings(db=str(tmp_path / "runs.db"), metrics=False)
    async with (
        in_process_app(settings) as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rs") as http,
    ):
        answer = await http.get("/metrics")
        assert answer.status_code == 404
        assert "x-request-id" not in answer.headers
        assert "requestId" not in answer.json()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.server
def test_the_metrics_port_serves_without_a_token(tmp_path: Path) -> None:
    port = free_port()
    env = {"RUNSTORE_TOKENS": "writer:write", "RUNSTORE_METRICS_PORT": str(port)}
    with ServerProcess(tmp_path / "runs.db", env=env) as server:
        with server.client(headers={"authorization": "Bearer writer"}) as http:
            assert http.put("/runs/r", json=make_snapshot("r")).status_code == 201
        with server.client() as anonymous:
            assert anonymous.get("/metrics").status_code == 401
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert answer.status_code == 200
        samples = Samples(answer.text)
        assert samples.get("runstore_runs", status="running") == 1
        assert (
            samples.get(
                "runstore_http_requests_total", route="/runs/{runId}", method="PUT", status="2xx"
            )
            == 1
        )


@pytest.mark.server
def test_open_event_streams_are_counted(server: ServerProcess) -> None:
    with server.client() as http:
        http.put("/runs/r", json=make_snapshot("r"))
        with http.stream("GET", "/runs/r/events") as run_stream:
            run_lines = run_stream.iter_lines()  # kept: a dropped iterator closes the stream
            assert next(run_lines) == "event: run"
            assert Samples(http.get("/metrics").text).get("runstore_event_streams_open") == 1
            with http.stream("GET", "/events") as all_stream:
                all_lines = all_stream.iter_lines()
                assert next(all_lines) == ": keep-alive"
                samples = Samples(http.get("/metrics").text)
                assert samples.get("runstore_event_streams_open") == 2


@pytest.mark.server
def test_promtool_accepts_a_real_scrape(server: ServerProcess, tmp_path: Path) -> None:
    checker = promtool()
    with server.client() as http:
        http.put("/runs/r", json=make_snapshot("r"))
        http.get("/runs/absent")
        http.post("/runs/r/lease", json={"holder": "w", "ttlMs": 5000})
        page = http.get("/metrics").text
    checked = subprocess.run(
        [checker, "check", "metrics"], input=page, capture_output=True, text=True, timeout=60
    )
    # promtool's linter also reports style advice (on stdout); only errors fail it.
    assert checked.returncode == 0, checked.stdout + checked.stderr
