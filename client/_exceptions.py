"""The errors the client raises, in one tree, whichever mode (HTTP or embedded) it runs in::

    RunStoreError                 every error; ``status``, ``problem``, ``detail``
    ├── BadRequest           400  malformed JSON, a body runId unlike the URL's, a bad header
    ├── Unauthorized         401  no token, or not a valid one
    ├── Forbidden            403  the token lacks the scope
    ├── RunNotFound          404
    ├── WriteConflict        409
    │   ├── StaleWrite            the write would un-finish the run or shorten its trace
    │   └── TraceGap              ``traceFrom`` / ``historyFrom`` past the stored end
    ├── PreconditionFailed   412  ``If-Match`` / ``If-None-Match: *`` did not hold
    ├── BodyTooLarge         413
    ├── InvalidRun           422  ``errors`` names each bad field by its JSON path
    ├── StoreUnavailable     503  and every retryable failure once retries are spent
    └── UnexpectedResponse        anything else the store answered (405, 415, 500, ...)

Each carries the problem details (RFC 9457) the store answered with, or, in embedded mode and for
failures that never reached the store, the same keys filled in by the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "Forbidden",
    "InvalidRun",
    "PreconditionFailed",
    "RunNotFound",
    "RunStoreError",
    "StaleWrite",
    "StoreUnavailable",
    "TraceGap",
    "Unauthorized",
    "UnexpectedResponse",
    "WriteConflict",
    "error_for_problem",
]

TYPE_PREFIX: Final = "urn:runstore:problem:"


class RunStoreError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status (None when no answer came), ``problem`` the problem details as
    a dict (``type``, ``title``, ``status``, ``detail`` and, for 422, ``errors``).
    """

    default_status: int | None = None

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status if status is not None else self.default_status
        self.problem: dict[str, Any] = dict(problem or {})
        self.problem.setdefault("detail", detail)
        if self.status is not None:
            self.problem.setdefault("status", self.status)

    @property
    def type(self) -> str | None:
        """The problem type, such as ``urn:runstore:problem:stale-write``."""
        value = self.problem.get("type")
        return value if isinstance(value, str) else None

    @property
    def title(self) -> str | None:
        value = self.problem.get("title")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        title = f"{self.title}: " if self.title else ""
        return f"{prefix}{title}{self.detail}"


class BadRequest(RunStoreError):
    """The store could not read the request (400)."""

    default_status = 400


class Unauthorized(RunStoreError):
    """No token, or a token the store does not know (401)."""

    default_status = 401


class Forbidden(RunStoreError):
    """The token lacks the scope the request needs (403)."""

    default_status = 403


class RunNotFound(RunStoreError):
    """No run is stored under that id (404)."""

    default_status = 404


class WriteConflict(RunStoreError):
    """The write conflicts with what is stored (409)."""

    default_status = 409


class StaleWrite(WriteConflict):
    """The write would move the run backwards: un-finish it or shorten its trace.

    Another writer got further; the store keeps the newest. Not retried.
    """


class TraceGap(WriteConflict):
    """An append starts past the stored end: the store holds less than the writer thought."""


class PreconditionFailed(RunStoreError):
    """``If-Match`` or ``If-None-Match: *`` did not hold (412). Not retried."""

    default_status = 412


class BodyTooLarge(RunStoreError):
    """The request body is over the store's limit (413)."""

    default_status = 413


class InvalidRun(RunStoreError):
    """A field breaks the snapshot's rules (422); ``errors`` lists each by JSON path."""

    default_status = 422

    @property
    def errors(self) -> list[dict[str, Any]]:
        """``[{"path": "$.trace", "message": ..., "type": ...}, ...]``."""
        errors = self.problem.get("errors")
        return list(errors) if isinstance(errors, list) else []


class StoreUnavailable(RunStoreError):
    """The store cannot take the request now, and retries are spent (or were not allowed).

    ``attempts`` says how many were made. The cause (``__cause__``) is the last failure when it
    was a connection error or a timeout.
    """

    default_status = None

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(detail, status=status, problem=problem)
        self.attempts = attempts


class UnexpectedResponse(RunStoreError):
    """An answer the contract does not lead the client to expect (405, 415, 500, not JSON)."""


_BY_SLUG: Final[dict[str, type[RunStoreError]]] = {
    "malformed-json": BadRequest,
    "run-id-mismatch": BadRequest,
    "bad-request": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not-found": RunNotFound,
    "stale-write": StaleWrite,
    "trace-gap": TraceGap,
    "conflict": WriteConflict,
    "precondition-failed": PreconditionFailed,
    "body-too-large": BodyTooLarge,
    "invalid-fields": InvalidRun,
    "storage-unavailable": StoreUnavailable,
}

_BY_STATUS: Final[dict[int, type[RunStoreError]]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: RunNotFound,
    409: WriteConflict,
    412: PreconditionFailed,
    413: BodyTooLarge,
    422: InvalidRun,
    408: StoreUnavailable,
    429: StoreUnavailable,
    502: StoreUnavailable,
    503: StoreUnavailable,
    504: StoreUnavailable,
}


def error_for_problem(status: int, problem: Mapping[str, Any]) -> RunStoreError:
    """The typed error for an answer: by the problem's ``type`` slug, else by its status."""
    kind = problem.get("type")
    slug = kind.removeprefix(TYPE_PREFIX) if isinstance(kind, str) else ""
    cls = _BY_SLUG.get(slug) or _BY_STATUS.get(status, UnexpectedResponse)
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        title = problem.get("title")
        detail = title if isinstance(title, str) and title else f"The store answered {status}."
    return cls(detail, status=status, problem=problem)
