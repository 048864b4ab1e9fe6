"""The one interface every storage backend implements.

Routes talk to a :class:`RunStore` only; a backend module (``sqlite``, ``postgres``) implements
it. Every method is a coroutine; none of them blocks the event loop. The rules that make a write
acceptable (versions, the stale-write rule, preconditions, append gaps) are decided in
:mod:`.rules`; a backend reads the run's row, has the rules judge the write and writes their
answer inside one transaction, so that concurrent writers cannot slip between a check and a
write. Turning the rows a read returns into runs and pages is :mod:`.reads`.
"""

from __future__ import annotations

import base64
import binascii
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, Self

from runstore.client.models import is_run_id

from .records import PatchRecord, SnapshotRecord
from .tally import TallyDelta

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from .changes import ChangeListener

__all__ = [
    "ClaimQuery",
    "ClaimedRun",
    "CommitObserver",
    "Cursor",
    "Lease",
    "RunPage",
    "RunQuery",
    "RunStore",
    "StoreStats",
    "StoredRun",
    "WriteResult",
    "decode_cursor",
    "encode_cursor",
    "list_filters",
    "retention_filter",
]


class WriteResult(NamedTuple):
    """What a PUT or PATCH left stored (a NamedTuple, like the records: built per request)."""

    run_id: str
    version: int
    trace_length: int
    created: bool = False


class Lease(NamedTuple):
    """A lease on a run: ``holder`` owns run ``run_id`` under fencing token ``lease`` until
    ``expires_at`` (ms, by the store's clock)."""

    run_id: str
    holder: str
    lease: int
    expires_at: int
    ttl_ms: int

    def to_json(self) -> str:
        """The lease object of the contract."""
        return json.dumps(
            {
                "runId": self.run_id,
                "holder": self.holder,
                "lease": self.lease,
                "expiresAt": self.expires_at,
                "ttlMs": self.ttl_ms,
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True, slots=True)
class ClaimQuery:
    """``POST /claims``: give ``holder`` a lease of ``ttl_ms`` on the orphaned run with one of
    ``statuses`` that has waited longest."""

    holder: str
    ttl_ms: int
    statuses: tuple[str, ...] = ("running",)
    stale_after_ms: int = 60_000


class ClaimedRun(NamedTuple):
    """What a claim took: the run as stored and the new lease on it."""

    run: StoredRun
    lease: Lease


class StoredRun(NamedTuple):
    """A run read back: its version and its snapshot as JSON bytes."""

    version: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page of ``list_runs`` starts: after this (startedAt, runId)."""

    started_at: int
    run_id: str


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Filters of ``GET /runs``: newest ``startedAt`` first, ties by ``runId`` descending."""

    statuses: tuple[str, ...] = ()
    started_after: int | None = None
    started_before: int | None = None
    limit: int = 50
    cursor: Cursor | None = None


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of summaries (each a JSON object's text) and the cursor to the next, if any."""

    summaries: list[str] = field(default_factory=list)
    next_cursor: Cursor | None = None


def list_filters(query: RunQuery, mark: str) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its parameters for ``query``; ``mark`` is the driver's
    placeholder (``?`` or ``%s``). Both backends order by (started_at, run_id) descending."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.statuses:
        clauses.append(f"status IN ({', '.join([mark] * len(query.statuses))})")
        params += query.statuses
    if query.started_after is not None:
        clauses.append(f"started_at > {mark}")
        params.append(query.started_after)
    if query.started_before is not None:
        clauses.append(f"started_at < {mark}")
        params.append(query.started_before)
    if query.cursor is not None:
        clauses.append(f"(started_at, run_id) < ({mark}, {mark})")
        params += (query.cursor.started_at, query.cursor.run_id)
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def retention_filter(
    completed_before: int | None, started_before: int | None, mark: str
) -> tuple[str, list[int]]:
    """The WHERE clause and parameters of a bulk delete; ValueError with neither bound."""
    clauses: list[str] = []
    params: list[int] = []
    if completed_before is not None:
        clauses.append(f"completed_at < {mark}")
        params.append(completed_before)
    if started_before is not None:
        clauses.append(f"started_at < {mark}")
        params.append(started_before)
    if not clauses:
        raise ValueError("delete_runs needs completed_before and/or started_before")
    return f"WHERE {' AND '.join(clauses)}", params


# Rows (a run, its steps and its turns) one retention batch deletes, at most: a batch is one
# short transaction, and other clients' writes go between batches (issue 14: one DELETE of
# 18,001 runs held every writer for 4 s).
RETENTION_BATCH_ROWS: Final = 2_000
# Items one purge batch deletes, at most, of a deleted run that held more than this: deleting
# such a run removes its row at once (the run is gone for readers and writers, and a run
# re-created under its id gets a new key), and its items in batches like retention's (issue 14:
# deleting one run of millions of steps held every writer for 9 s).
PURGE_BATCH_ROWS: Final = RETENTION_BATCH_ROWS


def retention_candidates_sql(where: str, mark: str) -> str:
    """The runs a retention batch may take, each with the rows it holds, its key, its steps and
    its turns; ``LIMIT``
    is the last parameter (a run holds at least one row, so no more than the batch's rows are
    read)."""
    return (
        "SELECT run_id, 1 + trace_length + coalesce(history_length, 0), run_key, "
        f"trace_length, coalesce(history_length, 0) FROM runs {where} LIMIT {mark}"
    )


def retention_batch(candidates: Iterable[Sequence[Any]], rows: int) -> list[str]:
    """The run ids of one retention batch: candidates (run id, rows held, ...) in order while
    their rows fit in ``rows``, and always the first, however large, so that every batch makes
    progress (a run larger than a batch leaves its items to the purge)."""
    picked: list[str] = []
    total = 0
    for run_id, held, *_ in candidates:
        if picked and total + held > rows:
            break
        picked.append(run_id)
        total += held
    return picked


def encode_cursor(cursor: Cursor) -> str:
    """An opaque, URL-safe cursor string."""
    raw = json.dumps([cursor.started_at, cursor.run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str) -> Cursor:
    """The inverse of :func:`encode_cursor`; ValueError for anything it did not make."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        started_at, run_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError) as exc:
        raise ValueError("not a cursor this store issued") from exc
    if (
        type(started_at) is not int
        or not 0 <= started_at < 2**63
        # Only ids a run can have: anything else (a NUL, a lone surrogate) would reach the
        # database as a bound parameter it cannot encode.
        or not is_run_id(run_id)
    ):
        raise ValueError("not a cursor this store issued")
    return Cursor(started_at, run_id)


class CommitObserver(Protocol):
    """Who hears of every commit of a store (the server's metrics); called on any thread,
    must not wait."""

    def committed(self, seconds: float, writes: int, tallies: list[TallyDelta]) -> None:
        """A transaction of ``writes`` writes committed in ``seconds``; ``tallies``: what it
        changed in runs by status and leases."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What a store can say of itself without asking the database, for a metrics scrape.
    None: not known, or not a thing this backend has."""

    write_queue: int = 0
    reads_waiting: int = 0
    wal_bytes: int | None = None
    pool_size: int | None = None
    pool_in_use: int | None = None
    runs_by_status: dict[str, int] | None = None
    live_leases: int | None = None


class RunStore(ABC):
    """Durable storage of run snapshots.

    Write methods return only after the write is committed to stable storage. They raise the
    errors of :mod:`runstore.client.problems`: ``RunNotFound``, ``StaleWrite``, ``TraceGap``,
    ``PreconditionFailed``, ``LeaseHeld``, ``LeaseLost``, ``StoreUnavailable``.
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema. Raises if the storage cannot be served."""

    @abstractmethod
    async def close(self) -> None:
        """Finish queued writes and release every connection; safe to call twice."""

    @abstractmethod
    async def put_run(
        self,
        record: SnapshotRecord,
        *,
        if_match: int | None = None,
        if_none_match: bool = False,
        lease: int | None = None,
    ) -> WriteResult:
        """Create or replace a whole run.

        ``if_match``: the stored version must equal it (and then the stale-write rule is
        waived). ``if_none_match``: the run must not exist. ``lease``: the write's
        ``Runstore-Lease`` (every write method takes it; :mod:`.rules` says what it allows).
        """

    @abstractmethod
    async def patch_run(
        self,
        run_id: str,
        patch: PatchRecord,
        *,
        if_match: int | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        """Apply a PATCH to a stored run; its cost depends on the patch, not on the run."""

    @abstractmethod
    async def get_run(self, run_id: str) -> StoredRun | None:
        """The whole snapshot, or None."""

    @abstractmethod
    async def get_version(self, run_id: str) -> int | None:
        """The stored version (for HEAD and conditional requests), or None."""

    @abstractmethod
    async def delete_run(
        self, run_id: str, *, if_match: int | None = None, lease: int | None = None
    ) -> None:
        """Delete one run; RunNotFound if absent."""

    @abstractmethod
    async def acquire_lease(
        self, run_id: str, holder: str, ttl_ms: int, *, lease: int | None = None
    ) -> Lease:
        """Take a lease on a run, or (``lease`` given) renew that one; LeaseHeld, LeaseLost,
        RunNotFound."""

    @abstractmethod
    async def release_lease(self, run_id: str, lease: int) -> None:
        """End lease ``lease`` now; LeaseLost unless it is the run's latest."""

    @abstractmethod
    async def claim_run(self, query: ClaimQuery) -> ClaimedRun | None:
        """Give ``query.holder`` a new lease on the orphaned run that has waited longest, and
        return it with the run, in one atomic step; None when no run qualifies."""

    @abstractmethod
    async def list_runs(self, query: RunQuery) -> RunPage:
        """One page of summaries, newest first."""

    @abstractmethod
    async def delete_runs(
        self, *, completed_before: int | None = None, started_before: int | None = None
    ) -> int:
        """Delete every run matching all the given bounds; returns how many.

        In batches of at most :data:`RETENTION_BATCH_ROWS` rows, each its own transaction,
        so that other writes go between them. Interrupted, what was committed stays deleted and
        a retry deletes the rest."""

    @abstractmethod
    async def check_ready(self) -> None:
        """Raise StoreUnavailable unless the store can read and write now."""

    @abstractmethod
    async def observe(self, observer: CommitObserver) -> None:
        """Tell ``observer`` of every commit from now on (none by default), and count what
        :meth:`stats` reports of the runs."""

    @abstractmethod
    def trace(self, tracer: Tracer) -> None:
        """Make spans of writes and commits with ``tracer`` from now on (OpenTelemetry)."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """The store's gauges now; must not touch the database (see :class:`StoreStats`)."""

    @abstractmethod
    async def start_events(self, listener: ChangeListener) -> None:
        """From now until :meth:`close`, tell ``listener`` the change each committed write
        made, on the event loop this is awaited on: this store's writes, and on PostgreSQL
        those of every replica of the database."""
