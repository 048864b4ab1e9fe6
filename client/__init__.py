"""The runstore client: snapshots, HTTP clients with persistence hooks, and embedded mode.

Needs httpx and pydantic only; embedded mode uses the store engine of ``runstore.service``,
which needs no server dependency either.
"""

from __future__ import annotations

from ._async_client import AsyncRunStoreClient
from ._async_persistence import AsyncPersistence, AsyncRunPersistence
from ._client import RunStoreClient
from ._embedded import EmbeddedStore, embedded_persistence
from ._exceptions import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    InvalidRun,
    PreconditionFailed,
    RunNotFound,
    RunStoreError,
    StaleWrite,
    StoreUnavailable,
    TraceGap,
    Unauthorized,
    UnexpectedResponse,
    WriteConflict,
)
from ._models import RunPatch, RunSnapshot, RunSummary
from ._persistence import Persistence, RunPersistence
from ._retry import RetryPolicy
from ._wire import SnapshotLike, WriteAck

__all__ = [
    "AsyncPersistence",
    "AsyncRunPersistence",
    "AsyncRunStoreClient",
    "BadRequest",
    "BodyTooLarge",
    "EmbeddedStore",
    "Forbidden",
    "InvalidRun",
    "Persistence",
    "PreconditionFailed",
    "RetryPolicy",
    "RunNotFound",
    "RunPatch",
    "RunPersistence",
    "RunSnapshot",
    "RunStoreClient",
    "RunStoreError",
    "RunSummary",
    "SnapshotLike",
    "StaleWrite",
    "StoreUnavailable",
    "TraceGap",
    "Unauthorized",
    "UnexpectedResponse",
    "WriteAck",
    "WriteConflict",
    "embedded_persistence",
]
