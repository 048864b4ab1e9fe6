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
from .models import ClaimedRun, Lease, RunEvent, RunPatch, RunSnapshot, RunSummary, WriteAck
from .problems import (
    BadRequest,
    BodyTooLarge,
    Forbidden,
    HeadTooLarge,
    InternalError,
    InvalidRun,
    LeaseHeld,
    LeaseLost,
    MalformedJson,
    MethodNotAllowed,
    NestingTooDeep,
    PreconditionFailed,
    RequestTimeout,
    RunIdMismatch,
    RunNotFound,
    RunStoreError,
    ServerBusy,
    StaleWrite,
    StoreUnavailable,
    TooManyItems,
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
    "HeadTooLarge",
    "InternalError",
    "InvalidRun",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "MalformedJson",
    "MethodNotAllowed",
    "NestingTooDeep",
    "Persistence",
    "PreconditionFailed",
    "RequestTimeout",
    "RetryPolicy",
    "RunEvent",
    "RunIdMismatch",
    "RunNotFound",
    "RunPatch",
    "RunPersistence",
    "RunSnapshot",
    "RunStoreClient",
    "RunStoreError",
    "RunSummary",
    "ServerBusy",
    "SnapshotLike",
    "StaleWrite",
    "StoreUnavailable",
    "TooManyItems",
    "TraceGap",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "WriteAck",
    "WriteConflict",
    "embedded_persistence",
]
