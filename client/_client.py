# Generated from client/_async_client.py by scripts/generate_sync.py: edit that file and run
# `make sync-clients`; tests/client/test_sync_generated.py keeps this file current.

"""The HTTP clients of a runstore server: thin users of one ``httpx`` client each.

:class:`AsyncRunStoreClient` is written in ``_async_client.py``; :class:`RunStoreClient` in
``_client.py`` is generated from it by ``scripts/generate_sync.py`` (``make sync-clients``), and
``tests/client/test_sync_generated.py`` fails when it is not current. Why generate the blocking
code, as httpcore does, rather than keep a sans-IO core under two hand-written shells: the
clients are little more than their methods' signatures, docstrings and the retry loop around one
``httpx`` call, which two shells would each repeat. Generated, a method or a fix cannot reach
one client and miss the other. What a client reads and decides without I/O (headers, answers,
failed attempts) is in :mod:`._http` and :mod:`._retry`; the names the two differ in (how they
wait, what the hooks are handed) are in :mod:`._concurrency`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_sse import connect_sse

from ._concurrency import sleep
from ._events import apply_event, run_event
from ._http import (
    DEFAULT_TIMEOUT,
    Failure,
    ack_of,
    base_headers,
    check,
    claim_body,
    claimed_of,
    deleted_count,
    lease_body,
    lease_of,
    list_params,
    page_of,
    stored_snapshot,
    write_headers,
)
from ._ledger import RunLedger
from ._persistence import RunPersistence
from ._retry import RETRYABLE_STATUSES, RETRYABLE_TRANSPORT_ERRORS, RetryPolicy, retry_policy
from ._wire import (
    SnapshotLike,
    StoredSnapshot,
    Write,
    encode,
    encode_body,
    run_path,
    view_of,
)
from .models import ClaimedRun, Lease, RunEvent, RunPatch, RunSnapshot, RunSummary, WriteAck
from .problems import UnexpectedResponse

__all__ = ["RunStoreClient"]


def _stream_refused(response: httpx.Response) -> Failure | None:
    """What the first answer to an event-stream request says: None when the stream is open
    (200), a Failure to retry after when the answer is one to retry (503, say); any other
    answer is read and raised as its error."""
    if response.status_code == 200:
        return None
    response.read()
    if response.status_code in RETRYABLE_STATUSES:
        return Failure.of_response(response)
    check(response)
    # check raises for every status but 2xx: another success is no event stream either.
    raise UnexpectedResponse(
        f"GET {response.request.url.path} answered {response.status_code}, not an event stream.",
        status=response.status_code,
    )


class RunStoreClient:
    """A client of a runstore server over one ``httpx`` client (one keep-alive pool).

    :class:`RunStoreClient` blocks; :class:`AsyncRunStoreClient` has the same methods, awaited,
    for asyncio or trio. Use either as a context manager (``with`` or ``async with``), or close
    it.

    ``token`` is sent as ``Authorization: Bearer``. ``timeout`` (seconds or an
    ``httpx.Timeout``) bounds each attempt; ``retries`` (a :class:`RetryPolicy`, or a number of
    retries after the first try) bounds how hard each call tries when the store is unreachable
    or answers 408, 429, 502, 503 or 504. Errors are :class:`RunStoreError` subclasses.

    ``transport`` replaces httpx's default transport (tests give an ``httpx.ASGITransport`` or
    an ``httpx.MockTransport`` here). Without one, httpx's own rules apply: proxies from the
    environment (``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), credentials in the URL as basic
    auth, TLS for ``https://``.
    """

    def __init__(
        self,
        base_url: str | httpx.URL = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: RetryPolicy | int = RetryPolicy(),  # noqa: B008 (frozen, so sharing it is safe)
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry_policy = retry_policy(retries)
        self._http = httpx.Client(
            base_url=base_url, headers=base_headers(token), timeout=timeout, transport=transport
        )

    @property
    def base_url(self) -> httpx.URL:
        return self._http.base_url

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool; idempotent."""
        self._http.close()

    def _request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
    ) -> tuple[httpx.Response, bool]:
        """The first answer that is not worth retrying, and whether an earlier attempt may have
        been applied; StoreUnavailable once the retry policy gives up."""
        schedule = self.retry_policy.schedule()
        uncertain = False
        while True:
            try:
                response = self._http.request(
                    method, url, content=content, headers=headers, params=params
                )
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                failure = Failure.of_exception(exc)
            else:
                if response.status_code not in RETRYABLE_STATUSES:
                    return response, uncertain
                failure = Failure.of_response(response)
            uncertain = uncertain or failure.uncertain
            delay = schedule.next_delay(failure.retry_after)
            if delay is None:
                raise failure.give_up(schedule, method, url) from failure.exception
            sleep(delay)

    def put_run(
        self,
        snapshot: SnapshotLike,
        *,
        if_match: int | None = None,
        if_none_match: bool = False,
        lease: int | None = None,
    ) -> WriteAck:
        """Create or replace a whole run (a :class:`RunSnapshot` or a camelCase mapping).

        ``if_match``: only if the stored version is this one. ``if_none_match``: only if the run
        does not exist. Either failing raises PreconditionFailed. ``lease``: the writer's lease
        on the run (every write method takes it): LeaseLost if a newer lease exists; without
        it, LeaseHeld while another holder's lease is live.
        """
        write = RunLedger.whole(view_of(snapshot))
        response, _ = self._request(
            "PUT",
            run_path(write.run_id),
            content=write.body(),
            headers=write_headers(if_match, if_none_match=if_none_match, lease=lease),
        )
        return ack_of(response)

    def patch_run(
        self,
        run_id: str,
        patch: RunPatch | Mapping[str, Any],
        *,
        if_match: int | None = None,
        lease: int | None = None,
    ) -> WriteAck:
        """Apply a PATCH: ``trace`` from ``traceFrom``, ``history`` from ``historyFrom``, and
        fields to replace (None clears an optional one). RunNotFound if the run is absent."""
        body = patch.to_wire() if isinstance(patch, RunPatch) else dict(patch)
        response, _ = self._request(
            "PATCH",
            run_path(run_id),
            content=encode_body(encode(body)),
            headers=write_headers(if_match, lease=lease),
        )
        return ack_of(response)

    def get_run(self, run_id: str) -> RunSnapshot | None:
        """The stored run, or None."""
        stored = self._read(run_id)
        return None if stored is None else stored.snapshot()

    def delete_run(
        self, run_id: str, *, if_match: int | None = None, lease: int | None = None
    ) -> None:
        """Delete a run; RunNotFound if absent.

        When an earlier attempt may have been applied (its answer was lost) a 404 counts as done.
        """
        response, uncertain = self._request(
            "DELETE", run_path(run_id), headers=write_headers(if_match, lease=lease)
        )
        if response.status_code == 404 and uncertain:
            return
        check(response)

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        started_after: int | None = None,
        started_before: int | None = None,
        page_size: int = 100,
    ) -> Iterator[RunSummary]:
        """Every matching run's summary, newest ``startedAt`` first, fetched a page at a time
        as the iteration goes. ``status`` may name several; the bounds are exclusive (ms)."""
        params = list_params(status, started_after, started_before, page_size)
        cursor: str | None = None
        while True:
            page_params = params if cursor is None else [*params, ("cursor", cursor)]
            response, _ = self._request("GET", "/runs", params=page_params)
            summaries, cursor = page_of(response)
            for summary in summaries:
                yield summary
            if cursor is None:
                return

    def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        """Bulk retention (admin scope): delete the runs matching every bound given; how many."""
        params = {
            name: value
            for name, value in (
                ("completedBefore", completed_before),
                ("startedBefore", started_before),
            )
            if value is not None
        }
        response, _ = self._request("DELETE", "/runs", params=params)
        return deleted_count(response)

    def acquire_lease(
        self, run_id: str, holder: str, ttl: float, *, lease: int | None = None
    ) -> Lease:
        """Take the lease on a run for ``ttl`` seconds (1 to 3600) as ``holder``, or renew
        lease ``lease``. LeaseHeld while another holder's lease is live; LeaseLost when
        ``lease`` is no longer the run's latest; RunNotFound. Taking it again as the same
        holder while it is live renews it (so a retried call is safe)."""
        response, _ = self._request(
            "POST",
            f"{run_path(run_id)}/lease",
            content=encode_body(encode(lease_body(holder, ttl, lease))),
            headers=write_headers(),
        )
        return lease_of(response)

    def release_lease(self, run_id: str, lease: int) -> None:
        """End lease ``lease`` now (safe to repeat); LeaseLost if a newer lease exists."""
        response, _ = self._request(
            "DELETE", f"{run_path(run_id)}/lease", headers=write_headers(lease=lease)
        )
        check(response)

    def claim(
        self,
        holder: str,
        ttl: float,
        *,
        status: str | Iterable[str] = "running",
        stale_after: float = 60.0,
    ) -> ClaimedRun | None:
        """Take over the orphaned run that has waited longest, or None when none qualifies.

        Orphaned: not finished, ``status`` one of those given, and its last lease expired, or
        it never had a lease and was last written ``stale_after`` seconds ago. The answer holds
        the run and the new lease (``ttl`` seconds) for ``holder``; hand it to the hooks'
        ``resume`` to go on with the run. Two claimers never get the same run.
        """
        body = claim_body(holder, ttl, status, stale_after)
        response, _ = self._request(
            "POST", "/claims", content=encode_body(encode(body)), headers=write_headers()
        )
        return claimed_of(response)

    def persistence(
        self, *, holder: str | None = None, lease_ttl: float = 30.0, close_client: bool = False
    ) -> RunPersistence:
        """The persistence hooks over this client; ``close_client``: their ``close()`` closes
        the client too. With ``holder``, each run the hooks start or resume is held under a
        lease of ``lease_ttl`` seconds, renewed in the background (see
        :class:`AsyncRunPersistence`)."""
        return RunPersistence(
            self._send_write,
            self._read,
            close=self.close if close_client else None,
            holder=holder,
            lease_ttl=lease_ttl,
            acquire_lease=self._acquire_lease,
            release_lease=self.release_lease,
        )

    def _acquire_lease(self, run_id: str, holder: str, ttl_ms: int, lease: int | None) -> Lease:
        return self.acquire_lease(run_id, holder, ttl_ms / 1000, lease=lease)

    def watch(
        self, run_id: str, *, after: int | None = None, read_timeout: float = 60.0
    ) -> Iterator[RunEvent]:
        """The run's events as they happen (docs/api.md, "Events"): ``run``, then a ``patch``
        per write, or ``deleted``; the iteration ends after a finished run's last event.

        ``after``: the version already known (nothing before it is sent again). A dropped
        connection, a stream silent for ``read_timeout`` seconds (the server sends a keep-alive
        comment every 15 s) or a server that stops is followed by a reconnect with
        ``Last-Event-ID``, under the retry policy, so no change is missed or repeated.
        RunNotFound if the run is absent.
        """
        last = after
        schedule = self.retry_policy.schedule()
        timeout = self._http.timeout.as_dict()
        timeout["read"] = read_timeout
        while True:
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            failure: Failure | None = None
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    run_path(run_id) + "/events",
                    headers=headers,
                    timeout=httpx.Timeout(**timeout),
                ) as source:
                    failure = _stream_refused(source.response)
                    if failure is None:
                        for sse in source.iter_sse():
                            event = run_event(sse)
                            if event is None:
                                continue
                            schedule = self.retry_policy.schedule()  # progress: a fresh budget
                            if event.version is not None:
                                last = event.version
                            yield event
                            if event.finished:
                                return
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                failure = Failure.of_exception(exc)
            if failure is None:
                # The server ended the stream before a final event: it is stopping, or the
                # run was finished already at ``last``.
                if self._finished_at(run_id, last):
                    return
                continue
            delay = schedule.next_delay(failure.retry_after)
            if delay is None:
                raise failure.give_up(schedule, "GET", run_path(run_id) + "/events")
            sleep(delay)

    def _finished_at(self, run_id: str, version: int | None) -> bool:
        """Whether the run is deleted, or finished and still at ``version``."""
        stored = self._read(run_id)
        if stored is None:
            return True
        snapshot = stored.snapshot()
        return snapshot.finished and stored.version == version

    def follow(self, run_id: str, *, read_timeout: float = 60.0) -> Iterator[RunSnapshot]:
        """The run as it is after each of its events (patches applied here), from now until it
        is finished; a deleted run ends the iteration. RunNotFound if the run is absent."""
        run: dict[str, Any] | None = None
        for event in self.watch(run_id, read_timeout=read_timeout):
            run = apply_event(run, event)
            if run is None:
                return
            yield RunSnapshot.model_validate(run)

    def events(
        self, *, status: str | Iterable[str] | None = None, read_timeout: float = 60.0
    ) -> Iterator[RunEvent]:
        """Every run's changes from now on: ``summary`` (``data``: the run's summary) after each
        write, ``deleted`` (``{"runId"}``); ``status``: only runs with these statuses. No replay:
        after a reconnect it goes on from the changes made then. Ends when the caller stops."""
        statuses = [status] if isinstance(status, str) else list(status or ())
        params = [("status", value) for value in statuses]
        schedule = self.retry_policy.schedule()
        timeout = self._http.timeout.as_dict()
        timeout["read"] = read_timeout
        while True:
            failure: Failure | None = None
            try:
                with connect_sse(
                    self._http, "GET", "/events", params=params, timeout=httpx.Timeout(**timeout)
                ) as source:
                    failure = _stream_refused(source.response)
                    if failure is None:
                        schedule = self.retry_policy.schedule()
                        for sse in source.iter_sse():
                            event = run_event(sse)
                            if event is not None:
                                yield event
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                failure = Failure.of_exception(exc)
            if failure is None:
                continue  # the server ended the stream (it is stopping): connect again
            delay = schedule.next_delay(failure.retry_after)
            if delay is None:
                raise failure.give_up(schedule, "GET", "/events")
            sleep(delay)

    def _send_write(self, write: Write) -> WriteAck:
        response, _ = self._request(
            write.method,
            run_path(write.run_id),
            content=write.body(),
            headers=write_headers(write.if_match, lease=write.lease),
        )
        return ack_of(response)

    def _read(self, run_id: str) -> StoredSnapshot | None:
        response, _ = self._request("GET", run_path(run_id))
        return stored_snapshot(response)
