"""The runstore client: snapshots, HTTP clients with persistence hooks, and embedded mode.

Needs httpx and pydantic only; embedded mode uses the store engine of ``runstore.service``,
which needs no server dependency either. The contract lives in two public modules that the
server imports too: :mod:`runstore.client.models` (the wire models) and
:mod:`runstore.client.problems` (the problem types, one exception tree).
"""

from __future__ import annotations

from ._async_client import AsyncRunStoreClient
from ._async_persistence import AsyncPersistence, AsyncRunPersistence
from ._client import RunStoreClient
from ._embedded import EmbeddedStore, embedded_persistence
from ._persistence import Persistence, RunPersistence
from ._retry import RetryPolicy
from ._wire import SnapshotLike
from .models import ClaimedRun, Lease, RunPatch, RunSnapshot, RunSummary, WriteAck
from .problems import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    InternalError,
    InvalidRun,
    LeaseHeld,
    LeaseLost,
    MalformedJson,
    MethodNotAllowed,
    PreconditionFailed,
    RequestTimeout,
    RunIdMismatch,
    RunNotFound,
    RunStoreError,
    StaleWrite,
    StoreUnavailable,
    TraceGap,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    WriteConflict,
)

__all__ = [
    "AsyncPersistence",
    "AsyncRunPersistence",
    "AsyncRunStoreClient",
    "BadRequest",
    "BodyTooLarge",
    "ClaimedRun",
    "EmbeddedStore",
    "Forbidden",
    "InternalError",
    "InvalidRun",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "MalformedJson",
    "MethodNotAllowed",
    "Persistence",
    "PreconditionFailed",
    "RequestTimeout",
    "RetryPolicy",
    "RunIdMismatch",
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
    "UnsupportedMediaType",
    "WriteAck",
    "WriteConflict",
    "embedded_persistence",
]
