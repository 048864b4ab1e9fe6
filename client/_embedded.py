"""Embedded mode: the same hooks on the store engine in this process, with no server.

The original local-SQLite design, in Python: :func:`embedded_persistence` opens a SQLite WAL
file with the server's own engine (``runstore.service.store``: validation, the split storage of
steps, group commit with ``synchronous=FULL``), and the hooks write to it directly. Several
processes on one machine may open the same file; SQLite's locking orders their writes, and a
write that finds the file locked for longer than the busy timeout is retried like a 503.

The engine is imported when a store is opened, not with this module, and it needs neither
FastAPI nor uvicorn: ``pip install runstore`` is enough. The engine raises the errors of
:mod:`runstore.client.problems`, the same classes the HTTP client raises, and they pass through
unchanged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from ._persistence import RunPersistence
from ._retry import RetryPolicy, retry_policy
from ._wire import StoredSnapshot, Write, run_path
from .models import ClaimedRun, Lease, RunSnapshot, WriteAck
from .problems import StoreUnavailable

if TYPE_CHECKING:
    from runstore.service.store.sqlite import SQLiteEngine

__all__ = ["EmbeddedStore", "embedded_persistence"]

T = TypeVar("T")


class EmbeddedStore:
    """A SQLite store file opened in this process: what the embedded hooks write through.

    Its methods are those of :class:`RunStoreClient` that embedded mode has (``get_run``, the
    lease calls, ``claim``), taking the same arguments and returning the same types. Use it
    as a context manager, or close it. Raises StoreUnavailable if the file cannot be opened (a
    missing directory, a damaged file, a schema newer than this runstore).
    """

    def __init__(self, path: str | os.PathLike[str], *, retries: RetryPolicy | int = 5) -> None:
        from runstore.service.store.sqlite import SQLiteEngine
        from runstore.service.store.sqlite_schema import CorruptDatabase

        self.path = os.fspath(path)
        self.retry_policy = retry_policy(retries)
        try:
            self._engine: SQLiteEngine = SQLiteEngine(self.path)
        except (CorruptDatabase, sqlite3.Error) as exc:
            raise StoreUnavailable(f"Cannot open the store {self.path!r}: {exc}") from exc

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
        """Commit queued writes and close the file; idempotent."""
        self._engine.close()

    def _call(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying while the storage is unavailable (locked, full)."""
        schedule = self.retry_policy.schedule()
        while True:
            try:
                return operation()
            except StoreUnavailable as exc:
                delay = schedule.next_delay()
                if delay is None:
                    exc.attempts = schedule.attempts
                    raise
                time.sleep(delay)

    def _send(self, write: Write) -> WriteAck:
        """Apply a ledger's write: validated exactly as the server validates a request body."""
        from runstore.service.store.records import patch_record, snapshot_record

        document = write.document()
        if write.whole:
            record = self._call(lambda: snapshot_record(document))
            result = self._call(
                lambda: self._engine.put_run(record, if_match=write.if_match, lease=write.lease)
            )
        else:
            patch = self._call(lambda: patch_record(document))
            result = self._call(
                lambda: self._engine.patch_run(
                    write.run_id, patch, if_match=write.if_match, lease=write.lease
                )
            )
        return WriteAck(
            run_id=result.run_id,
            version=result.version,
            trace_length=result.trace_length,
            created=result.created,
        )

    def get_run(self, run_id: str) -> RunSnapshot | None:
        """The stored run, or None, as :meth:`RunStoreClient.get_run`."""
        stored = self._read(run_id)
        return None if stored is None else stored.snapshot()

    def _read(self, run_id: str) -> StoredSnapshot | None:
        """The stored run and its version, for the hooks (what the HTTP client's ETag gives)."""
        run_path(run_id)  # InvalidRun for an id no run can have, as over HTTP
        stored = self._call(lambda: self._engine.get_run(run_id))
        if stored is None:
            return None
        return StoredSnapshot(json.loads(stored.body), stored.version)

    def acquire_lease(
        self, run_id: str, holder: str, ttl: float, *, lease: int | None = None
    ) -> Lease:
        """Take or renew a lease, as :meth:`RunStoreClient.acquire_lease`."""
        return self._lease(run_id, holder, round(ttl * 1000), lease)

    def _lease(self, run_id: str, holder: str, ttl_ms: int, lease: int | None) -> Lease:
        from runstore.service.store.records import validated

        from .models import LeaseRequest

        request = validated(
            LeaseRequest, {"holder": holder, "ttlMs": ttl_ms, "lease": lease}, "lease request"
        )
        granted = self._call(
            lambda: self._engine.acquire_lease(
                run_id, request.holder, request.ttl_ms, lease=request.lease
            )
        )
        return Lease.model_validate(granted._asdict())

    def release_lease(self, run_id: str, lease: int) -> None:
        """End a lease now, as :meth:`RunStoreClient.release_lease`."""
        self._call(lambda: self._engine.release_lease(run_id, lease))

    def claim(
        self,
        holder: str,
        ttl: float,
        *,
        status: str | Iterable[str] = "running",
        stale_after: float = 60.0,
    ) -> ClaimedRun | None:
        """Take over an orphaned run, as :meth:`RunStoreClient.claim`."""
        from runstore.service.store.base import ClaimQuery
        from runstore.service.store.records import validated

        from ._http import claim_body
        from .models import ClaimRequest

        request = validated(ClaimRequest, claim_body(holder, ttl, status, stale_after), "claim")
        query = ClaimQuery(
            request.holder,
            request.ttl_ms,
            tuple(dict.fromkeys(request.status)),
            request.stale_after_ms,
        )
        claimed = self._call(lambda: self._engine.claim_run(query))
        if claimed is None:
            return None
        return ClaimedRun(
            run=RunSnapshot.model_validate_json(claimed.run.body),
            lease=Lease.model_validate(claimed.lease._asdict()),
            version=claimed.run.version,
        )


def embedded_persistence(
    path: str | os.PathLike[str],
    *,
    retries: RetryPolicy | int = 5,
    holder: str | None = None,
    lease_ttl: float = 30.0,
) -> RunPersistence:
    """The persistence hooks on a SQLite store file in this process, with no server.

    ``retries`` bounds how long a write waits out a locked or full database (beyond SQLite's own
    busy timeout). ``close()`` on the hooks closes the file. ``holder`` and ``lease_ttl``: as
    :meth:`RunStoreClient.persistence` (leases, renewed on a thread).
    """
    store = EmbeddedStore(path, retries=retries)
    return RunPersistence(
        store._send,
        store._read,
        close=store.close,
        holder=holder,
        lease_ttl=lease_ttl,
        acquire_lease=store._lease,
        release_lease=store.release_lease,
    )
