"""The problem types of the contract, as one tree of exceptions.

Each problem type of the HTTP contract (``urn:runstore:problem:<slug>``, RFC 9457) is a class
here, carrying its slug, status and title. The store raises these classes, the server answers
each with the problem+json its class describes, the HTTP client raises the class an answer names,
and embedded mode lets the store's own exception through::

    RunStoreError                      every error; ``status``, ``problem``, ``detail``
    ├── BadRequest                400  bad-request: a bad header, a body that never came
    │   ├── MalformedJson         400  malformed-json
    │   │   └── NestingTooDeep    400  nesting-too-deep: JSON nested past the depth limit
    │   ├── RunIdMismatch         400  run-id-mismatch: the body's runId is not the URL's
    │   └── HeadTooLarge          431  head-too-large: request line and headers over the limit
    ├── Unauthorized              401  unauthorized: no token, or not a valid one
    ├── Forbidden                 403  forbidden: the token lacks the scope
    ├── RunNotFound               404  not-found
    ├── WriteConflict             409  conflict
    │   ├── StaleWrite            409  stale-write: would un-finish the run or shorten its trace
    │   ├── TraceGap              409  trace-gap: traceFrom / historyFrom past the stored end
    │   ├── LeaseHeld             409  lease-held: another holder's lease is live (``holder``,
    │   │                              ``expiresAt``; Retry-After)
    │   └── LeaseLost             409  lease-lost: a newer lease fenced this one off
    ├── PreconditionFailed        412  precondition-failed: If-Match / If-None-Match: * failed
    ├── BodyTooLarge              413  body-too-large
    │   └── TooManyItems          413  too-many-items: trace/history items over the limit
    ├── InvalidRun                422  invalid-fields: ``errors`` names each bad field
    ├── StoreUnavailable          503  storage-unavailable; and, in the client, every retryable
    │   │                              failure once retries are spent (status None: no answer)
    │   ├── RequestTimeout        408  request-timeout: the head or body came too slowly
    │   └── ServerBusy            503  server-busy: connection cap or body memory budget reached
    └── UnexpectedResponse             anything the contract does not lead the client to expect
        ├── MethodNotAllowed      405  method-not-allowed
        ├── UnsupportedMediaType  415  unsupported-media-type
        └── InternalError         500  internal-error

A new problem type is one subclass with ``slug`` (and ``default_status`` / ``default_title``
where its parent's do not fit): :data:`PROBLEM_TYPES` picks it up when the class is defined.

Each error carries the problem details: those the store answered with, or, when raised in this
process (by the store, embedded mode or the client itself), those its class describes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

__all__ = [
    "PROBLEM_TYPES",
    "PROBLEM_TYPE_PREFIX",
    "BadRequest",
    "BodyTooLarge",
    "FieldError",
    "Forbidden",
    "HeadTooLarge",
    "InternalError",
    "InvalidRun",
    "LeaseHeld",
    "LeaseLost",
    "MalformedJson",
    "MethodNotAllowed",
    "NestingTooDeep",
    "PreconditionFailed",
    "RequestTimeout",
    "RunIdMismatch",
    "RunNotFound",
    "RunStoreError",
    "ServerBusy",
    "StaleWrite",
    "StoreUnavailable",
    "TooManyItems",
    "TraceGap",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "WriteConflict",
    "error_for_problem",
    "problem_type_for_status",
    "retry_after_of",
]

PROBLEM_TYPE_PREFIX: Final = "urn:runstore:problem:"

# One bad field of a 422: {"path": "$.trace[3]", "message": ..., "type": ...}.
FieldError = dict[str, Any]

# slug -> class; filled by RunStoreError.__init_subclass__, in the order the classes are defined.
PROBLEM_TYPES: Final[dict[str, type[RunStoreError]]] = {}


class _Unset(enum.Enum):
    STATUS = enum.auto()


class RunStoreError(Exception):
    """Base of every error of the run store, its server and its client.

    ``status`` is the HTTP status (None when no answer came), ``problem`` the problem details as
    a dict (``type``, ``title``, ``status``, ``detail`` and, for 422, ``errors``).
    """

    # The problem type a class stands for; None: it has none of its own.
    slug: ClassVar[str | None] = None
    default_status: ClassVar[int | None] = None
    default_title: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        slug = cls.__dict__.get("slug")
        if slug is not None:
            if slug in PROBLEM_TYPES:
                raise TypeError(f"problem type {slug!r} is already {PROBLEM_TYPES[slug]!r}")
            PROBLEM_TYPES[slug] = cls

    def __init__(
        self,
        detail: str,
        *,
        status: int | Literal[_Unset.STATUS] | None = _Unset.STATUS,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = self.default_status if status is _Unset.STATUS else status
        if problem is None:
            # Raised in this process: its class's problem, unless the status is not the class's
            # own (None: no answer came), which the problem type would not describe.
            if self.slug is not None and self.status == self.default_status:
                self.problem = self.problem_details(detail)
            else:
                self.problem = {"status": self.status} if self.status is not None else {}
                self.problem["detail"] = detail
        else:
            # An answer's problem is kept as it came.
            self.problem = dict(problem)
            self.problem.setdefault("detail", detail)
            if self.status is not None:
                self.problem.setdefault("status", self.status)

    @classmethod
    def problem_details(cls, detail: str) -> dict[str, Any]:
        """The problem details the server answers this class with: type, title, status and
        ``detail``, in that order. TypeError for a class with no problem type of its own."""
        if cls.slug is None:
            raise TypeError(f"{cls.__name__} has no problem type of its own")
        return {
            "type": PROBLEM_TYPE_PREFIX + cls.slug,
            "title": cls.default_title,
            "status": cls.default_status,
            "detail": detail,
        }

    def response_headers(self) -> dict[str, str]:
        """Headers the server answers this error with, beyond the problem's own."""
        return {}

    @property
    def type(self) -> str | None:
        """The problem type, such as ``urn:runstore:problem:stale-write``."""
        value = self.problem.get("type")
        return value if isinstance(value, str) else None

    @property
    def title(self) -> str | None:
        value = self.problem.get("title")
        return value if isinstance(value, str) else None

    @property
    def request_id(self) -> str | None:
        """The server's id of the request that failed (``requestId``): its log lines name it."""
        value = self.problem.get("requestId")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        title = f"{self.title}: " if self.title else ""
        return f"{prefix}{title}{self.detail}"


class BadRequest(RunStoreError):
    """The store could not read the request (400)."""

    slug = "bad-request"
    default_status = 400
    default_title = "Bad request"


class MalformedJson(BadRequest):
    """The body is not one JSON value in UTF-8 (or it is empty)."""

    slug = "malformed-json"
    default_title = "Malformed JSON"


class NestingTooDeep(MalformedJson):
    """The body's JSON nests arrays and objects deeper than the server's limit."""

    slug = "nesting-too-deep"
    default_title = "JSON nested too deeply"


class RunIdMismatch(BadRequest):
    """The body's ``runId`` differs from the run id in the URL."""

    slug = "run-id-mismatch"
    default_title = "Run id mismatch"


class HeadTooLarge(BadRequest):
    """The request line and headers are over the server's limit (431)."""

    slug = "head-too-large"
    default_status = 431
    default_title = "Request header fields too large"


class Unauthorized(RunStoreError):
    """No token, or a token the store does not know (401)."""

    slug = "unauthorized"
    default_status = 401
    default_title = "Unauthorized"


class Forbidden(RunStoreError):
    """The token lacks the scope the request needs (403)."""

    slug = "forbidden"
    default_status = 403
    default_title = "Forbidden"


class RunNotFound(RunStoreError):
    """No run is stored under that id (404)."""

    slug = "not-found"
    default_status = 404
    default_title = "Not found"


class WriteConflict(RunStoreError):
    """The write conflicts with what is stored (409)."""

    slug = "conflict"
    default_status = 409
    default_title = "Conflict"


class StaleWrite(WriteConflict):
    """The write would move the run backwards: un-finish it or shorten its trace.

    Another writer got further; the store keeps the newest. Not retried.
    """

    slug = "stale-write"
    default_title = "Stale write"


class TraceGap(WriteConflict):
    """An append starts past the stored end: the store holds less than the writer thought."""

    slug = "trace-gap"
    default_title = "Trace gap"


class LeaseHeld(WriteConflict):
    """Another holder's lease on the run is live: wait (``retry_after`` seconds) or leave it.

    Raised for a write without ``Runstore-Lease`` on a run whose lease is live, and for taking a
    lease another holder has. ``holder`` and ``expires_at`` (ms, by the store's clock) name it.
    """

    slug = "lease-held"
    default_title = "Lease held"

    def __init__(
        self,
        detail: str,
        *,
        holder: str | None = None,
        expires_at: int | None = None,
        retry_after: int | None = None,
        status: int | Literal[_Unset.STATUS] | None = _Unset.STATUS,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, status=status, problem=problem)
        if holder is not None:
            self.problem["holder"] = holder
        if expires_at is not None:
            self.problem["expiresAt"] = expires_at
        # Seconds until the lease expires, as the store saw it (the Retry-After header).
        self.retry_after = retry_after

    def response_headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    @property
    def holder(self) -> str | None:
        """Who holds the lease."""
        value = self.problem.get("holder")
        return value if isinstance(value, str) else None

    @property
    def expires_at(self) -> int | None:
        """When the lease expires unless renewed, in ms by the store's clock."""
        value = self.problem.get("expiresAt")
        return value if type(value) is int else None


class LeaseLost(WriteConflict):
    """The lease this write or renewal names is not the run's latest: another worker took the
    run over (fencing). The worker must stop working on the run; nothing was written."""

    slug = "lease-lost"
    default_title = "Lease lost"


class PreconditionFailed(RunStoreError):
    """``If-Match`` or ``If-None-Match: *`` did not hold (412). Not retried."""

    slug = "precondition-failed"
    default_status = 412
    default_title = "Precondition failed"


class BodyTooLarge(RunStoreError):
    """The request body is over the store's limit (413)."""

    slug = "body-too-large"
    default_status = 413
    default_title = "Request body too large"


class TooManyItems(BodyTooLarge):
    """One write sends more ``trace`` and ``history`` items than the server's limit (413)."""

    slug = "too-many-items"
    default_title = "Too many items in one write"


class InvalidRun(RunStoreError):
    """A field breaks the snapshot's rules (422); ``errors`` lists each by JSON path."""

    slug = "invalid-fields"
    default_status = 422
    default_title = "Invalid fields"

    def __init__(
        self,
        detail: str,
        errors: list[FieldError] | None = None,
        *,
        status: int | Literal[_Unset.STATUS] | None = _Unset.STATUS,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, status=status, problem=problem)
        if errors is not None:
            self.problem["errors"] = errors

    @property
    def errors(self) -> list[FieldError]:
        """``[{"path": "$.trace", "message": ..., "type": ...}, ...]``."""
        errors = self.problem.get("errors")
        return list(errors) if isinstance(errors, list) else []


class StoreUnavailable(RunStoreError):
    """The store cannot take the request now: full, read-only, locked or unreachable.

    The client raises it once retries are spent (or were not allowed); ``attempts`` says how
    many were made, and the cause (``__cause__``) is the last failure when it was a connection
    error or a timeout.
    """

    slug = "storage-unavailable"
    default_status = 503
    default_title = "Storage unavailable"

    def __init__(
        self,
        detail: str,
        *,
        status: int | Literal[_Unset.STATUS] | None = _Unset.STATUS,
        problem: Mapping[str, Any] | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(detail, status=status, problem=problem)
        self.attempts = attempts


class RequestTimeout(StoreUnavailable):
    """The request's body did not arrive in time (408); the client retries it."""

    slug = "request-timeout"
    default_status = 408
    default_title = "Request timeout"


class ServerBusy(StoreUnavailable):
    """The server is at its connection cap or its memory budget for request bodies (503, with
    ``Retry-After``); the client retries it."""

    slug = "server-busy"
    default_title = "Server busy"


class UnexpectedResponse(RunStoreError):
    """An answer the contract does not lead the client to expect (405, 415, 500, not JSON)."""


class MethodNotAllowed(UnexpectedResponse):
    """The path does not take this method (405)."""

    slug = "method-not-allowed"
    default_status = 405
    default_title = "Method not allowed"


class UnsupportedMediaType(UnexpectedResponse):
    """The body is not sent as JSON in UTF-8 (415)."""

    slug = "unsupported-media-type"
    default_status = 415
    default_title = "Unsupported media type"


class InternalError(UnexpectedResponse):
    """The server failed to handle the request (500)."""

    slug = "internal-error"
    default_status = 500
    default_title = "Internal error"


def retry_after_of(expires_at: int, now: int) -> int:
    """Whole seconds (at least 1) from ``now`` until ``expires_at``, both in ms."""
    return max(1, -((now - expires_at) // 1000))


def problem_type_for_status(status: int) -> type[RunStoreError] | None:
    """The most general problem class answered with ``status``, or None (a parent is defined,
    and so listed in PROBLEM_TYPES, before its subclasses)."""
    for cls in PROBLEM_TYPES.values():
        if cls.default_status == status:
            return cls
    return None


# What a proxy in front of the store answers when the store is down or busy; retried like 503.
_UNAVAILABLE_STATUSES: Final = frozenset({429, 502, 504})


def error_for_problem(status: int, problem: Mapping[str, Any]) -> RunStoreError:
    """The typed error for an answer: by the problem's ``type`` slug, else by its status."""
    kind = problem.get("type")
    slug = kind.removeprefix(PROBLEM_TYPE_PREFIX) if isinstance(kind, str) else ""
    cls = PROBLEM_TYPES.get(slug) or problem_type_for_status(status)
    if cls is None:
        cls = StoreUnavailable if status in _UNAVAILABLE_STATUSES else UnexpectedResponse
    detail = problem.get("detail")
    if not isinstance(detail, str) or not detail:
        title = problem.get("title")
        detail = title if isinstance(title, str) and title else f"The store answered {status}."
    return cls(detail, status=status, problem=problem)
