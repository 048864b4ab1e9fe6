"""The HTTP clients: one suite for RunStoreClient and AsyncRunStoreClient (parametrized), over
the app in process; the retry policy on its own."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import anyio.to_thread
import httpx
import pytest
from client_rig import (
    BASE_URL,
    HTTP_MODES,
    Blocking,
    Rig,
    agent_snapshot,
    client_rig,
    collect_runs,
    take_step,
    wire,
)
from pydantic import SecretStr

from runstore.client import (
    AsyncPersistence,
    AsyncRunStoreClient,
    BodyTooLarge,
    Forbidden,
    InvalidRun,
    Persistence,
    PreconditionFailed,
    RetryPolicy,
    RunIdMismatch,
    RunNotFound,
    RunPatch,
    RunSnapshot,
    RunStoreClient,
    RunStoreError,
    StaleWrite,
    StoreUnavailable,
    TraceGap,
    Unauthorized,
    UnexpectedResponse,
    embedded_persistence,
)
from runstore.client._retry import parse_retry_after, retry_policy
from runstore.service import Settings

anyio_mark = pytest.mark.anyio


@pytest.fixture(params=HTTP_MODES)
async def rig(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Rig]:
    async with client_rig(settings, request.param) as rig:
        yield rig


def snapshot_with(run_id: str, steps: int, **fields: Any) -> dict[str, Any]:
    snapshot = agent_snapshot(run_id, **fields)
    for _ in range(steps):
        take_step(snapshot)
    return snapshot


@anyio_mark
async def test_put_get_patch_delete(rig: Rig) -> None:
    client = rig.client
    snapshot = snapshot_with("crud", 2)
    created = await client.put_run(snapshot)
    assert (created.run_id, created.version, created.trace_length, created.created) == (
        "crud",
        1,
        2,
        True,
    )
    replaced = await client.put_run(RunSnapshot.model_validate(snapshot))
    assert (replaced.version, replaced.created) == (2, False)

    got = await client.get_run("crud")
    assert got is not None
    assert got.to_wire() == wire(snapshot)

    step = {"step": 2, "output": "three"}
    patched = await client.patch_run("crud", RunPatch(trace=[step], trace_from=2, status="done"))
    assert (patched.version, patched.trace_length) == (3, 3)
    patched = await client.patch_run("crud", {"text": "answer"}, if_match=3)
    assert patched.version == 4
    stored = await rig.stored("crud")
    assert stored == {**wire(snapshot), "trace": [*snapshot["trace"], step], "status": "done",
                      "text": "answer"}  # fmt: skip

    await client.delete_run("crud", if_match=4)
    assert await client.get_run("crud") is None
    with pytest.raises(RunNotFound) as caught:
        await client.delete_run("crud")
    assert caught.value.problem["type"] == "urn:runstore:problem:not-found"


@anyio_mark
async def test_list_runs_pages_lazily_through_every_run(rig: Rig) -> None:
    for index in range(7):
        status = "completed" if index % 2 else "running"
        await rig.client.put_run(
            snapshot_with(f"run-{index}", 0, startedAt=1_000 + index, status=status)
        )
    summaries = await collect_runs(rig.client, page_size=3)
    assert [s.run_id for s in summaries] == [f"run-{i}" for i in reversed(range(7))]
    assert all(s.trace_length == 0 and s.version == 1 for s in summaries)
    assert len([s for s in rig.sent if s.path == "/runs"]) == 3

    assert [s.run_id for s in await collect_runs(rig.client, status="completed")] == [
        "run-5",
        "run-3",
        "run-1",
    ]
    window = await collect_runs(
        rig.client, status=["running", "completed"], started_after=1_001, started_before=1_005
    )
    assert [s.run_id for s in window] == ["run-4", "run-3", "run-2"]

    before = len(rig.sent)
    if isinstance(rig.client, Blocking):
        first = await anyio.to_thread.run_sync(
            lambda: next(iter(rig.client.target.list_runs(page_size=2)))
        )
    else:
        first = await anext(aiter(rig.client.list_runs(page_size=2)))
    assert first.run_id == "run-6"
    assert len(rig.sent) == before + 1  # one page fetched, not all of them


@anyio_mark
async def test_delete_runs_in_bulk(rig: Rig) -> None:
    await rig.client.put_run(snapshot_with("old", 0, completedAt=5_000, startedAt=1_000))
    await rig.client.put_run(snapshot_with("new", 0, completedAt=9_000, startedAt=1_000))
    assert await rig.client.delete_runs(completed_before=6_000) == 1
    assert [s.run_id for s in await collect_runs(rig.client)] == ["new"]


async def _stale(client: Any) -> None:
    await client.put_run(snapshot_with("e", 1))


async def _gap(client: Any) -> None:
    await client.patch_run("e", {"traceFrom": 9, "trace": [{}]})


async def _precondition(client: Any) -> None:
    await client.patch_run("e", {"revisions": 1}, if_match=99)


async def _exists(client: Any) -> None:
    await client.put_run(snapshot_with("e", 3), if_none_match=True)


async def _invalid(client: Any) -> None:
    await client.put_run(snapshot_with("e", 3, revisions="3"))


async def _absent(client: Any) -> None:
    await client.patch_run("absent", {"revisions": 1})


async def _mismatch(client: Any) -> None:
    await client.patch_run("e", {"runId": "other"})


@anyio_mark
@pytest.mark.parametrize(
    ("call", "error", "status", "slug"),
    [
        (_stale, StaleWrite, 409, "stale-write"),
        (_gap, TraceGap, 409, "trace-gap"),
        (_precondition, PreconditionFailed, 412, "precondition-failed"),
        (_exists, PreconditionFailed, 412, "precondition-failed"),
        (_invalid, InvalidRun, 422, "invalid-fields"),
        (_absent, RunNotFound, 404, "not-found"),
        (_mismatch, RunIdMismatch, 400, "run-id-mismatch"),
    ],
)
async def test_refusals_are_typed_errors_and_change_nothing(
    rig: Rig,
    call: Callable[[Any], Any],
    error: type[RunStoreError],
    status: int,
    slug: str,
) -> None:
    await rig.client.put_run(snapshot_with("e", 3))
    before = await rig.stored("e")
    sent = len(rig.sent)
    with pytest.raises(error) as caught:
        await call(rig.client)
    assert type(caught.value) is error
    assert caught.value.status == status
    assert caught.value.type == f"urn:runstore:problem:{slug}"
    assert caught.value.problem["status"] == status
    assert caught.value.detail
    assert str(status) in str(caught.value)
    assert len(rig.sent) == sent + 1  # refusals are not retried
    assert await rig.stored("e") == before
    if error is InvalidRun:
        assert [e["path"] for e in caught.value.errors] == ["$.revisions"]


@anyio_mark
@pytest.mark.parametrize("mode", HTTP_MODES)
@pytest.mark.parametrize(
    ("token", "error"), [(None, Unauthorized), ("wrong", Unauthorized), ("reader", Forbidden)]
)
async def test_auth_failures_are_typed(
    settings: Settings, mode: str, token: str | None, error: type[RunStoreError]
) -> None:
    settings = settings.model_copy(update={"tokens": SecretStr("reader:read,writer:write")})
    async with client_rig(settings, mode, token=token) as rig:
        with pytest.raises(error):
            await rig.client.put_run(snapshot_with("auth", 0))
    async with client_rig(settings, mode, token="writer") as rig:
        await rig.client.put_run(snapshot_with("auth", 0))
        assert (await rig.client.get_run("auth")) is not None


@anyio_mark
@pytest.mark.parametrize("mode", HTTP_MODES)
async def test_a_body_over_the_limit_is_too_large(settings: Settings, mode: str) -> None:
    settings = settings.model_copy(update={"max_body_bytes": 1024})
    async with client_rig(settings, mode) as rig:
        with pytest.raises(BodyTooLarge) as caught:
            await rig.client.put_run(snapshot_with("big", 0, input="x" * 2048))
        assert caught.value.status == 413
        assert await rig.stored("big") is None


@anyio_mark
async def test_not_now_answers_are_retried_until_one_succeeds(rig: Rig) -> None:
    rig.faults.fail(2, status=503, retry_after="0")
    rig.faults.fail(1, status=429)
    await rig.client.put_run(snapshot_with("retried", 1))
    assert [s.status for s in rig.sent] == [503, 503, 429, 201]
    assert await rig.stored("retried") == wire(snapshot_with("retried", 1))


@anyio_mark
async def test_retries_give_up_after_the_configured_attempts(rig: Rig) -> None:
    rig.faults.fail(10, status=503)
    with pytest.raises(StoreUnavailable) as caught:
        await rig.client.put_run(snapshot_with("never", 1))
    assert caught.value.attempts == 4
    assert caught.value.status == 503
    assert "failed 4 times" in str(caught.value)
    assert len(rig.sent) == 4
    assert await rig.stored("never") is None


@anyio_mark
@pytest.mark.parametrize("mode", HTTP_MODES)
@pytest.mark.parametrize(
    ("policy", "retry_after", "attempts"),
    [
        (RetryPolicy(max_attempts=10, total=0.0), None, 1),  # no time left for a retry
        (RetryPolicy(max_attempts=10, total=5.0), "60", 1),  # asked to wait past the bound
        (0, None, 1),
        (2, "0", 3),
    ],
)
async def test_retries_stop_at_the_time_bound(
    settings: Settings, mode: str, policy: RetryPolicy | int, retry_after: str | None, attempts: int
) -> None:
    async with client_rig(settings, mode, retries=policy) as rig:
        rig.faults.fail(10, status=503, retry_after=retry_after)
        with pytest.raises(StoreUnavailable) as caught:
            await rig.client.get_run("any")
        assert caught.value.attempts == attempts
        assert len(rig.sent) == attempts


@anyio_mark
async def test_an_unexpected_answer_is_not_retried(rig: Rig) -> None:
    rig.faults.fail(1, status=500)
    with pytest.raises(UnexpectedResponse) as caught:
        await rig.client.get_run("any")
    assert caught.value.status == 500
    assert caught.value.detail == "upstream trouble"
    assert len(rig.sent) == 1


@anyio_mark
async def test_a_delete_whose_answer_was_lost_is_done(rig: Rig) -> None:
    await rig.client.put_run(snapshot_with("gone", 0))
    rig.faults.fail(1, status=504, forward=True, method="DELETE")
    await rig.client.delete_run("gone")
    assert [s.status for s in rig.sent[-2:]] == [504, 404]
    assert await rig.stored("gone") is None


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@anyio_mark
@pytest.mark.parametrize("mode", HTTP_MODES)
async def test_an_unreachable_store_is_unavailable_after_the_retries(mode: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    policy = RetryPolicy(max_attempts=3, first_delay=0.01, max_delay=0.02)
    if mode == "async":
        async with AsyncRunStoreClient(url, retries=policy) as client:
            with pytest.raises(StoreUnavailable) as caught:
                await client.put_run(snapshot_with("x", 0))
    else:
        with (
            RunStoreClient(url, retries=policy) as sync_client,
            pytest.raises(StoreUnavailable) as caught,
        ):
            sync_client.put_run(snapshot_with("x", 0))
    assert caught.value.attempts == 3
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert "PUT /runs/x failed 3 times" in str(caught.value)


@anyio_mark
async def test_the_hooks_have_the_persistence_shape(tmp_path: Any) -> None:
    with RunStoreClient(BASE_URL) as client:
        assert isinstance(client.persistence(), Persistence)
    with embedded_persistence(tmp_path / "runs.db") as hooks:
        assert isinstance(hooks, Persistence)
    async with AsyncRunStoreClient(BASE_URL) as async_client:
        assert isinstance(async_client.persistence(), AsyncPersistence)


@pytest.mark.parametrize("mode", HTTP_MODES)
@anyio_mark
async def test_closing_the_hooks_can_close_their_client(mode: str) -> None:
    client: Any = AsyncRunStoreClient(BASE_URL) if mode == "async" else RunStoreClient(BASE_URL)

    async def close_hooks(**options: bool) -> None:
        hooks = client.persistence(**options)
        await (hooks.close() if mode == "async" else Blocking(hooks).close())

    await close_hooks()
    assert not client._http.is_closed
    await close_hooks(close_client=True)
    assert client._http.is_closed


# The retry policy on its own: a fake clock and fixed draws instead of sleeping.


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("draw", [0.0, 0.5, 1.0])
def test_backoff_doubles_within_its_jitter_up_to_the_cap(draw: float) -> None:
    policy = RetryPolicy(max_attempts=8, first_delay=0.1, max_delay=1.0, total=100.0)
    schedule = policy.schedule(clock=Clock(), rng=lambda: draw)
    delays = [schedule.next_delay() for _ in range(7)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert delays == pytest.approx([c / 2 + draw * c / 2 for c in ceilings])
    assert schedule.next_delay() is None
    assert schedule.attempts == 8


def test_retry_after_is_honoured_and_bounded_by_the_total() -> None:
    clock = Clock()
    schedule = RetryPolicy(max_attempts=5, total=10.0).schedule(clock=clock, rng=lambda: 0.0)
    assert schedule.next_delay(retry_after=3.0) == 3.0
    clock.now = 6.0
    assert schedule.next_delay(retry_after=3.0) == 3.0
    clock.now = 9.5
    assert schedule.next_delay(retry_after=1.0) is None


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 7, UTC), usegmt=True)
    assert parse_retry_after({"retry-after": "2"}, now=now) == 2.0
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(7.0)
    assert parse_retry_after({"retry-after": "soon"}, now=now) is None
    assert parse_retry_after({}, now=now) is None


def test_retries_as_a_number_or_a_policy() -> None:
    assert retry_policy(0).max_attempts == 1
    assert retry_policy(3).max_attempts == 4
    policy = RetryPolicy(total=1.0)
    assert retry_policy(policy) is policy
    with pytest.raises(TypeError):
        retry_policy(-1)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
