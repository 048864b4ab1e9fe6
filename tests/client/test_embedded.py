"""Embedded mode: the hooks on a SQLite file in process, with no server and no server
dependencies; several processes on one file; random run histories read back as last held; the
same methods, types and values as the HTTP client."""

from __future__ import annotations

import copy
import inspect
import itertools
import multiprocessing
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from client_rig import agent_snapshot, finish, take_step, wire
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ServerProcess

from runstore.client import (
    ClaimedRun,
    EmbeddedStore,
    Lease,
    RunPersistence,
    RunSnapshot,
    RunStoreClient,
    StoreUnavailable,
    embedded_persistence,
)
from runstore.service.store.sqlite import SQLiteEngine

BLOCKED = ("fastapi", "starlette", "uvicorn", "pydantic_settings")

NO_SERVER_DEPENDENCIES = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    BLOCKED = {blocked!r}

    class RefuseServerDependencies(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not installed")
            return None

    sys.meta_path.insert(0, RefuseServerDependencies())

    import runstore.client
    from runstore.client import RunSnapshot, StaleWrite, embedded_persistence

    assert "runstore.service" not in sys.modules, "importing the client loaded the service"
    snapshot = {{"runId": "solo", "status": "running", "startedAt": 1, "input": "hi",
                "trace": [], "usage": {{}}, "stepIndex": 0, "iterations": 0, "revisions": 0}}
    with embedded_persistence({path!r}) as hooks:
        hooks.on_run_start(snapshot)
        for step in range(3):
            snapshot["trace"].append({{"step": step}})
            hooks.on_step_complete(snapshot)
        loaded = hooks.load_run("solo")
        assert isinstance(loaded, RunSnapshot) and len(loaded.trace) == 3
    with embedded_persistence({path!r}) as other:
        try:
            other.on_run_start({{**snapshot, "trace": []}})
            raise AssertionError("a shorter trace was accepted")
        except StaleWrite:
            pass
    loaded_modules = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded_modules, loaded_modules
    print("embedded ok")
    """
)


def test_embedded_mode_needs_no_server_dependency(tmp_path: Path) -> None:
    script = NO_SERVER_DEPENDENCIES.format(blocked=BLOCKED, path=str(tmp_path / "runs.db"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "embedded ok"


def agent_process(path: str, worker: int, runs: int, steps: int) -> list[dict[str, Any]]:
    """One agent process: ``runs`` runs of ``steps`` steps through the embedded hooks."""
    finished = []
    with embedded_persistence(path) as hooks:
        for run in range(runs):
            snapshot = agent_snapshot(f"w{worker}-r{run}", startedAt=1_000 * worker + run)
            hooks.on_run_start(snapshot)
            for _ in range(steps):
                hooks.on_step_complete(take_step(snapshot, note=f" by w{worker}"))
            hooks.on_run_complete(finish(snapshot))
            finished.append(copy.deepcopy(snapshot))
    return finished


@pytest.mark.slow
def test_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    workers, runs, steps = 4, 2, 25
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = list(
            pool.map(
                agent_process,
                [path] * workers,
                range(workers),
                [runs] * workers,
                [steps] * workers,
            )
        )
    with EmbeddedStore(path) as store, SQLiteEngine(path) as engine:
        for snapshot in itertools.chain.from_iterable(results):
            stored = store.get_run(snapshot["runId"])
            assert stored is not None
            assert stored.to_wire() == wire(snapshot)
            assert engine.get_version(snapshot["runId"]) == steps + 2


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda path: None, "unable to open"),
        (lambda path: path.write_bytes(b"not a database, " * 512), "not a database"),
    ],
    ids=["missing-directory", "damaged-file"],
)
def test_a_store_that_cannot_be_opened_is_unavailable(
    tmp_path: Path, prepare: Any, message: str
) -> None:
    path = tmp_path / "runs.db"
    prepare(path)
    target = tmp_path / "missing" / "runs.db" if message == "unable to open" else path
    with pytest.raises(StoreUnavailable) as caught:
        embedded_persistence(target)
    assert caught.value.status == 503
    assert message in str(caught.value)


# Random run histories: whatever an agent does to its snapshot, the store ends up with it.

OPERATIONS = (
    "step",
    "step",
    "step",
    "rewrite-last",
    "rewrite-earlier",
    "rewind",
    "summarise-history",
    "drop-history",
    "set-error",
    "clear-error",
    "set-extra",
    "drop-extra",
    "replan",
    "same",
)


def apply(operation: str, snapshot: dict[str, Any], pick: int) -> bool:
    """Change the snapshot as an agent might; True if an earlier step was changed in place
    (which the hooks promise to store by completion, not at once)."""
    trace = snapshot["trace"]
    if operation == "step" or (not trace and operation.startswith(("rewrite", "rewind"))):
        if snapshot.get("history") is None:
            snapshot["history"] = []
        take_step(snapshot)
    elif operation == "rewrite-last":
        trace[-1]["output"] += " (revised)"
    elif operation == "rewrite-earlier":
        trace[pick % len(trace)]["output"] += " (fixed)"
        return pick % len(trace) < len(trace) - 1
    elif operation == "rewind":
        del trace[pick % len(trace) :]
    elif operation == "summarise-history" and snapshot.get("history"):
        snapshot["history"] = [{"role": "system", "content": f"summary {pick}"}]
    elif operation == "drop-history":
        snapshot["history"] = None
    elif operation == "set-error":
        snapshot["error"] = f"error {pick}"
    elif operation == "clear-error":
        snapshot["error"] = None
    elif operation == "set-extra":
        snapshot["x-trace-id"] = {"id": pick, "tags": ["a", pick]}
    elif operation == "drop-extra":
        snapshot.pop("x-trace-id", None)
    elif operation == "replan":
        snapshot["plan"] = None if pick % 3 == 0 else {"steps": list(range(pick % 5))}
    return False


_runs = itertools.count()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("embedded") / "runs.db"
    with embedded_persistence(path) as hooks:
        store = EmbeddedStore(path)
        yield hooks, store
        store.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(
        st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 1_000)), min_size=1, max_size=25
    )
)
def test_any_run_history_is_stored_as_the_agent_last_held_it(
    embedded: tuple[RunPersistence, EmbeddedStore], operations: list[tuple[str, int]]
) -> None:
    hooks, store = embedded
    snapshot = agent_snapshot(f"random-{next(_runs)}")
    hooks.on_run_start(snapshot)
    pending_rewrite = False
    for operation, pick in operations:
        pending_rewrite |= apply(operation, snapshot, pick)
        hooks.on_step_complete(snapshot)
        stored = store.get_run(snapshot["runId"])
        assert stored is not None
        if not pending_rewrite:
            assert stored.to_wire() == wire(snapshot)
    hooks.on_run_complete(finish(snapshot))
    stored = store.get_run(snapshot["runId"])
    assert stored is not None
    assert stored.to_wire() == wire(snapshot)


def test_the_embedded_store_has_the_http_client_s_methods_and_signatures() -> None:
    public = [
        name
        for name, member in inspect.getmembers(EmbeddedStore, inspect.isfunction)
        if not name.startswith("_")
    ]

    assert {"get_run", "acquire_lease", "release_lease", "claim", "close"} <= set(public)
    for name in public:
        embedded = inspect.signature(getattr(EmbeddedStore, name), eval_str=True)
        over_http = inspect.signature(getattr(RunStoreClient, name), eval_str=True)
        assert embedded == over_http, name


@pytest.mark.server
def test_embedded_and_http_clients_return_the_same_types_and_values(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    mixed = {
        **agent_snapshot("mixed"),
        "history": [{"role": "user", "content": "Résumé, s'il vous plaît 🙂"}],
        "plan": {"steps": ["read", "write"], "budget": 2.5},
        "usage": {"inputTokens": 12, "cost": 0.0031},
        "agentVersion": "2.1",  # unknown to the contract: kept as sent
    }
    with embedded_persistence(path) as hooks:
        hooks.on_run_start(mixed)
        take_step(mixed)
        hooks.on_step_complete(mixed)
        for run_id in ("orphan-a", "orphan-b"):
            hooks.on_run_start({**agent_snapshot(run_id), "status": "waiting"})

    with (
        ServerProcess(path) as server,
        RunStoreClient(server.url) as http,
        EmbeddedStore(path) as embedded,
    ):
        for run_id in ("mixed", "absent"):
            over_http, in_process = http.get_run(run_id), embedded.get_run(run_id)
            assert type(in_process) is type(over_http)
            assert in_process == over_http
        assert isinstance(embedded.get_run("mixed"), RunSnapshot)

        leases = [http.acquire_lease("mixed", "worker-1", 30.0)]
        http.release_lease("mixed", leases[0].lease)
        leases.append(embedded.acquire_lease("mixed", "worker-1", 30.0))
        embedded.release_lease("mixed", leases[1].lease)
        assert [type(lease) for lease in leases] == [Lease, Lease]
        assert [lease.lease for lease in leases] == [1, 2]
        ignored = {"lease", "expires_at"}
        assert leases[1].model_dump(exclude=ignored) == leases[0].model_dump(exclude=ignored)

        # Two identical orphaned runs: each client claims one.
        claims = [
            client.claim("rescuer", 30.0, status="waiting", stale_after=0)
            for client in (http, embedded)
        ]
        assert [type(claim) for claim in claims] == [ClaimedRun, ClaimedRun]
        first, second = (claim for claim in claims if claim is not None)
        assert {first.run.run_id, second.run.run_id} == {"orphan-a", "orphan-b"}
        assert second.run.model_dump(exclude={"run_id"}) == first.run.model_dump(exclude={"run_id"})
        assert (second.version, second.lease.holder) == (first.version, first.lease.holder)
        assert http.claim("rescuer", 30.0, status="waiting", stale_after=0) is None
        assert embedded.claim("rescuer", 30.0, status="waiting", stale_after=0) is None
