"""Errors of the run store, independent of HTTP.

The store raises these; ``runstore.service.api.problems`` turns each class into a problem+json
response, and the embedded client lets them through as they are::

    StoreError
    ├── InvalidRun             422  a field breaks the snapshot's rules (``errors`` lists them)
    ├── RunNotFound            404
    ├── WriteConflict          409
    │   ├── StaleWrite              the write would move the run backwards
    │   └── TraceGap                an append starts past the stored end
    ├── PreconditionFailed     412  If-Match / If-None-Match did not hold
    └── StorageUnavailable     503  disk full, read-only, locked, database down
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FieldError",
    "InvalidRun",
    "PreconditionFailed",
    "RunNotFound",
    "StaleWrite",
    "StorageUnavailable",
    "StoreError",
    "TraceGap",
    "WriteConflict",
]

FieldError = dict[str, Any]


class StoreError(Exception):
    """Base of every error the store raises on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRun(StoreError):
    """The snapshot or patch breaks a field rule; ``errors`` names each field by JSON path."""

    def __init__(self, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.errors = errors


class RunNotFound(StoreError):
    """No run is stored under that id."""


class WriteConflict(StoreError):
    """The write conflicts with what is stored."""


class StaleWrite(WriteConflict):
    """The write would un-finish a finished run or shorten its trace."""


class TraceGap(WriteConflict):
    """``traceFrom`` or ``historyFrom`` points past the stored end."""


class PreconditionFailed(StoreError):
    """``If-Match`` did not match the stored version, or ``If-None-Match: *`` met a run."""


class StorageUnavailable(StoreError):
    """The storage cannot take the operation now (full, read-only, locked or unreachable)."""
