"""What the HTTP clients decide without I/O: headers, reading answers, failed attempts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from ._retry import RetrySchedule, parse_retry_after
from ._wire import StoredSnapshot
from .models import ClaimedRun, Lease, RunSnapshot, RunSummary, WriteAck
from .problems import (
    LeaseHeld,
    RunStoreError,
    StoreUnavailable,
    UnexpectedResponse,
    error_for_problem,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "Failure",
    "ack_of",
    "base_headers",
    "check",
    "claim_body",
    "claimed_of",
    "deleted_count",
    "lease_body",
    "lease_of",
    "list_params",
    "page_of",
    "stored_snapshot",
    "write_headers",
]

DEFAULT_TIMEOUT: Final = 10.0
USER_AGENT: Final = "runstore-client/0.1"
JSON_HEADERS: Final = {"content-type": "application/json"}
# The request may have reached the store and been applied before this failure.
_UNCERTAIN_STATUSES: Final = frozenset({502, 504})
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def base_headers(token: str | None) -> dict[str, str]:
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


def write_headers(
    if_match: int | None = None, *, if_none_match: bool = False, lease: int | None = None
) -> dict[str, str]:
    headers = dict(JSON_HEADERS)
    if if_match is not None:
        headers["if-match"] = f'"{if_match}"'
    if if_none_match:
        headers["if-none-match"] = "*"
    if lease is not None:
        headers["runstore-lease"] = str(lease)
    return headers


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        problem = json.loads(response.content)
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        return problem
    text = response.content[:500].decode(errors="replace").strip()
    return {
        "status": response.status_code,
        "title": response.reason_phrase,
        "detail": text or f"The store answered {response.status_code} {response.reason_phrase}.",
    }


def check(response: httpx.Response) -> None:
    """Raise the typed error for an answer that is not a success."""
    if response.status_code >= 400:
        error = error_for_problem(response.status_code, _problem(response))
        if isinstance(error, LeaseHeld):
            retry_after = parse_retry_after(response.headers)
            error.retry_after = None if retry_after is None else round(retry_after)
        raise error


def _json(response: httpx.Response) -> Any:
    check(response)
    try:
        return json.loads(response.content)
    except ValueError:
        raise UnexpectedResponse(
            f"The store answered {response.status_code} with a body that is not JSON.",
            status=response.status_code,
        ) from None


def ack_of(response: httpx.Response) -> WriteAck:
    """The ``{"runId", "version", "traceLength"}`` of a write's answer."""
    body = _json(response)
    try:
        return WriteAck(
            run_id=body["runId"],
            version=int(body["version"]),
            trace_length=int(body["traceLength"]),
            created=response.status_code == 201,
        )
    except (KeyError, TypeError, ValueError):
        raise UnexpectedResponse(
            "The store's answer to a write lacks runId, version or traceLength.",
            status=response.status_code,
        ) from None


def stored_snapshot(response: httpx.Response) -> StoredSnapshot | None:
    """A GET's answer: None for 404, else the snapshot and the version its ETag names."""
    if response.status_code == 404:
        return None
    wire = _json(response)
    etag = response.headers.get("etag", "").strip('"')
    if not isinstance(wire, dict) or not etag.isdigit():
        raise UnexpectedResponse(
            "The store's answer to GET is not a snapshot with an ETag.", status=200
        )
    return StoredSnapshot(wire, int(etag))


def lease_body(holder: str, ttl: float, lease: int | None) -> dict[str, Any]:
    """The body of ``POST /runs/{id}/lease``; ``ttl`` in seconds."""
    body: dict[str, Any] = {"holder": holder, "ttlMs": round(ttl * 1000)}
    if lease is not None:
        body["lease"] = lease
    return body


def claim_body(
    holder: str, ttl: float, status: str | Iterable[str], stale_after: float
) -> dict[str, Any]:
    """The body of ``POST /claims``; ``ttl`` and ``stale_after`` in seconds."""
    return {
        **lease_body(holder, ttl, None),
        "status": [status] if isinstance(status, str) else list(status),
        "staleAfterMs": round(stale_after * 1000),
    }


def lease_of(response: httpx.Response) -> Lease:
    """The lease object of a lease's answer."""
    body = _json(response)
    try:
        return Lease.model_validate(body)
    except ValueError:
        raise UnexpectedResponse("The store's answer is not a lease.", status=200) from None


def claimed_of(response: httpx.Response) -> ClaimedRun | None:
    """A claim's answer: None for 204, else the run, its version (the ETag) and the lease."""
    if response.status_code == 204:
        return None
    body = _json(response)
    etag = response.headers.get("etag", "").strip('"')
    try:
        return ClaimedRun(
            run=RunSnapshot.model_validate(body["run"]),
            lease=Lease.model_validate(body["lease"]),
            version=int(etag),
        )
    except (KeyError, TypeError, ValueError):
        raise UnexpectedResponse(
            "The store's answer to a claim is not a run and a lease with an ETag.", status=200
        ) from None


def deleted_count(response: httpx.Response) -> int:
    """The ``{"deleted": n}`` of a bulk delete's answer."""
    body = _json(response)
    deleted = body.get("deleted") if isinstance(body, dict) else None
    if type(deleted) is not int:
        raise UnexpectedResponse("The store's answer to a bulk delete lacks deleted.", status=200)
    return deleted


def list_params(
    status: str | Iterable[str] | None,
    started_after: int | None,
    started_before: int | None,
    page_size: int,
) -> list[tuple[str, str | int]]:
    params: list[tuple[str, str | int]] = [("limit", page_size)]
    statuses = [status] if isinstance(status, str) else list(status or ())
    params += [("status", value) for value in statuses]
    if started_after is not None:
        params.append(("startedAfter", started_after))
    if started_before is not None:
        params.append(("startedBefore", started_before))
    return params


def page_of(response: httpx.Response) -> tuple[list[RunSummary], str | None]:
    """The summaries of one ``GET /runs`` page and the cursor of the next (None on the last)."""
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise UnexpectedResponse("The store's run list has no runs array.", status=200)
    cursor = body.get("nextCursor")
    return [RunSummary.model_validate(run) for run in body["runs"]], (
        cursor if isinstance(cursor, str) else None
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that may succeed if tried again: why it failed, and what that implies."""

    description: str
    retry_after: float | None = None
    # The request may have been applied although no success came back.
    uncertain: bool = False
    response: httpx.Response | None = None
    exception: Exception | None = None

    @classmethod
    def of_exception(cls, exc: Exception) -> Failure:
        return cls(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            uncertain=not isinstance(exc, _NOT_SENT),
            exception=exc,
        )

    @classmethod
    def of_response(cls, response: httpx.Response) -> Failure:
        return cls(
            f"{response.status_code} {response.reason_phrase}",
            retry_after=parse_retry_after(response.headers),
            uncertain=response.status_code in _UNCERTAIN_STATUSES,
            response=response,
        )

    def give_up(self, schedule: RetrySchedule, method: str, url: str) -> RunStoreError:
        """The error to raise once no further attempt is allowed."""
        attempts = schedule.attempts
        detail = (
            f"{method} {url} failed {attempts} time{'s' if attempts != 1 else ''} in "
            f"{schedule.elapsed:.1f} s; last: {self.description}"
        )
        if self.response is None:
            return StoreUnavailable(detail, status=None, attempts=attempts)
        problem: Mapping[str, Any] = _problem(self.response)
        error = error_for_problem(self.response.status_code, problem)
        return StoreUnavailable(
            f"{detail} ({error.detail})",
            status=self.response.status_code,
            problem=problem,
            attempts=attempts,
        )
