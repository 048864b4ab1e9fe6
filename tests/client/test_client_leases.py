"""The clients' leases: hooks that hold, renew and release a run's lease, claims and resume.

Each test runs once per client kind: the sync client and the async client against a real
server, and embedded mode on a file. The async client runs on an event loop of its own thread
(an anyio blocking portal), so its renewer task goes on while the test blocks, as an agent's
loop would while it awaits a slow model call.
"""

from __future__ import annotations

import contextlib
import inspect
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from client_rig import agent_snapshot, finish, take_step
from support import ServerProcess

from runstore.client import (
    AsyncRunStoreClient,
    ClaimedRun,
    EmbeddedStore,
    LeaseHeld,
    LeaseLost,
    RunSnapshot,
    RunStoreClient,
    embedded_persistence,
)

MODES = ("sync", "async", "embedded")
TTL = 1.0  # seconds: the shortest lease the contract allows


class Blocking:
    """Calls an object's methods from this thread, awaiting coroutines on the portal's loop."""

    def __init__(self, target: Any, portal: anyio.from_thread.BlockingPortal) -> None:
        self._target = target
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: self._portal.call(lambda: attribute(*args, **kwargs))


class Kind:
    """One client kind: clients (lease methods, claims) and hooks, all blocking to call."""

    def __init__(self, mode: str, url: str, db: Path, portal: anyio.from_thread.BlockingPortal):
        self.mode, self.url, self.db, self.portal = mode, url, db, portal
        self._closers: list[Any] = []

    def client(self) -> Any:
        if self.mode == "sync":
            client: Any = RunStoreClient(self.url)
        elif self.mode == "async":
            client = Blocking(AsyncRunStoreClient(self.url), self.portal)
        else:
            client = EmbeddedStore(self.db)
        self._closers.append(client.close)
        return client

    def hooks(self, holder: str, lease_ttl: float = 30.0) -> Any:
        if self.mode == "embedded":
            hooks: Any = embedded_persistence(self.db, holder=holder, lease_ttl=lease_ttl)
        else:
            hooks = self.client().persistence(holder=holder, lease_ttl=lease_ttl)
            if self.mode == "async":
                hooks = Blocking(hooks, self.portal)
        self._closers.append(hooks.close)
        return hooks

    def stored(self, run_id: str) -> RunSnapshot | None:
        stored: RunSnapshot | None = self.client().get_run(run_id)
        return stored

    def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("leases") / "runs.db") as server:
        yield server


@pytest.fixture(params=MODES)
def kind(request: pytest.FixtureRequest, served: ServerProcess, tmp_path: Path) -> Iterator[Kind]:
    with anyio.from_thread.start_blocking_portal() as portal:
        kind = Kind(request.param, served.url, tmp_path / "embedded.db", portal)
        try:
            yield kind
        finally:
            kind.close()


def run_id_for(kind: Kind, name: str) -> str:
    return f"{name}-{kind.mode}-{time.monotonic_ns()}"


def status_for(kind: Kind, name: str) -> str:
    """A status no other test's run has, so claims see this test's runs only."""
    return f"{name}-{kind.mode}"


def trace_of(kind: Kind, run_id: str) -> list[Any]:
    stored = kind.stored(run_id)
    assert isinstance(stored, RunSnapshot)
    return list(stored.trace)


def test_hooks_take_the_lease_write_under_it_and_release_it(kind: Kind) -> None:
    run_id = run_id_for(kind, "held")
    hooks = kind.hooks("worker-7")
    other = kind.client()
    run = agent_snapshot(run_id)
    hooks.on_run_start(run)
    lease = hooks.lease(run_id)
    assert (lease.holder, lease.lease) == ("worker-7", 1)
    # Another holder cannot take the run, nor write it without the lease.
    with pytest.raises(LeaseHeld) as held:
        other.acquire_lease(run_id, "intruder", 30.0)
    assert held.value.holder == "worker-7"
    assert 1 <= held.value.retry_after <= 30
    hooks.on_step_complete(take_step(run))
    hooks.on_run_complete(finish(take_step(run)))
    assert hooks.lease(run_id) is None
    # Released: the next owner's lease is number 2.
    assert other.acquire_lease(run_id, "next", 30.0).lease == 2
    assert len(trace_of(kind, run_id)) == 2


def test_a_hook_that_blocks_for_three_ttls_keeps_its_lease(kind: Kind) -> None:
    run_id = run_id_for(kind, "slow")
    status = status_for(kind, "slow")
    hooks = kind.hooks("slow-worker", lease_ttl=TTL)
    other = kind.client()
    run = agent_snapshot(run_id, status=status)
    hooks.on_run_start(run)
    time.sleep(3 * TTL)  # a slow model call: only the renewer keeps the lease
    assert other.claim("claimer", 30.0, status=status, stale_after=0) is None
    with pytest.raises(LeaseHeld):
        other.acquire_lease(run_id, "intruder", 30.0)
    hooks.on_step_complete(take_step(run))
    assert hooks.lease(run_id).lease == 1
    hooks.on_run_complete(finish(run))
    assert len(trace_of(kind, run_id)) == 1


def test_a_lost_lease_raises_lease_lost_from_the_next_hook(kind: Kind) -> None:
    run_id = run_id_for(kind, "lost")
    hooks = kind.hooks("first")
    other = kind.client()
    run = agent_snapshot(run_id)
    hooks.on_run_start(run)
    hooks.on_step_complete(take_step(run))
    # Someone ends the lease and takes the run (as a claim would after an expiry).
    other.release_lease(run_id, 1)
    assert other.acquire_lease(run_id, "second", 30.0).lease == 2
    for _ in range(2):  # every hook for the run says so, until the worker lets it go
        with pytest.raises(LeaseLost):
            hooks.on_step_complete(take_step(run))
    assert len(trace_of(kind, run_id)) == 1
    with pytest.raises(LeaseLost):
        hooks.on_run_complete(finish(run))


def test_a_claimed_run_is_resumed_with_deltas_under_the_new_lease(kind: Kind) -> None:
    run_id = run_id_for(kind, "orphan")
    status = status_for(kind, "orphan")
    crashed = kind.hooks("crashed", lease_ttl=TTL)
    run = agent_snapshot(run_id, status=status)
    crashed.on_run_start(run)
    crashed.on_step_complete(take_step(run))
    crashed.close()  # stops renewing, as a dead worker would; the lease runs out
    time.sleep(TTL + 0.3)
    rescuer = kind.hooks("rescuer")
    claimed = kind.client().claim("rescuer", 30.0, status=status, stale_after=3600)
    assert isinstance(claimed, ClaimedRun)
    assert (claimed.run.run_id, claimed.lease.lease, claimed.lease.holder) == (run_id, 2, "rescuer")
    resumed = rescuer.resume(claimed).to_wire()
    assert len(resumed["trace"]) == 1
    rescuer.on_step_complete(take_step(resumed, note="rescuer"))
    rescuer.on_run_complete(finish(resumed))
    trace = trace_of(kind, run_id)
    assert len(trace) == 2
    # The crashed worker's lease is fenced off for good.
    with pytest.raises(LeaseLost):
        kind.client().acquire_lease(run_id, "crashed", 30.0, lease=1)


def test_resuming_a_run_someone_holds_is_lease_held(kind: Kind) -> None:
    run_id = run_id_for(kind, "owned")
    owner = kind.hooks("owner")
    owner.on_run_start(agent_snapshot(run_id))
    with pytest.raises(LeaseHeld):
        kind.hooks("someone-else").resume(run_id)
    with pytest.raises(LeaseHeld):  # starting it again elsewhere, too
        kind.hooks("someone-else").on_run_start(agent_snapshot(run_id))


@pytest.mark.slow
def test_the_lease_workers_example_finishes_the_crashed_run_once() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "lease_workers.py"
    done = subprocess.run(
        [sys.executable, str(example), "--workers", "3", "--steps", "6", "--lease-ttl", "1"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "worker-0 crashes after step 3" in done.stdout
    assert done.stdout.count("claimed it at step 3 (lease 2)") == 1
    assert done.stdout.count(": ok, steps by") == 3
