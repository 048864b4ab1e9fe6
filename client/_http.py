"""What the sync and the async HTTP clients share: headers, reading answers, failed attempts.

Nothing here does I/O, so :mod:`._client` and :mod:`._async_client` differ only in how they send
and how they wait.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from ._retry import RetrySchedule, parse_retry_after
from ._transports import Answer, encode_head, origin_of
from ._wire import StoredSnapshot, Write
from .models import RunSummary, WriteAck
from .problems import RunStoreError, StoreUnavailable, UnexpectedResponse, error_for_problem

__all__ = [
    "DEFAULT_TIMEOUT",
    "Failure",
    "RawRequests",
    "RequestFactory",
    "Response",
    "UrlCache",
    "ack_of",
    "base_headers",
    "check",
    "deleted_count",
    "list_params",
    "page_of",
    "stored_snapshot",
    "write_headers",
    "write_request",
]

DEFAULT_TIMEOUT: Final = 10.0
USER_AGENT: Final = "runstore-client/0.1"
JSON_HEADERS: Final = {"content-type": "application/json"}
# The request may have reached the store and been applied before this failure.
_UNCERTAIN_STATUSES: Final = frozenset({502, 504})
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# What the clients read answers from: httpx's response, or the lean transport's Answer.
Response = httpx.Response | Answer


def base_headers(token: str | None) -> dict[str, str]:
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


def write_headers(if_match: int | None = None, *, if_none_match: bool = False) -> dict[str, str]:
    headers = dict(JSON_HEADERS)
    if if_match is not None:
        headers["if-match"] = f'"{if_match}"'
    if if_none_match:
        headers["if-none-match"] = "*"
    return headers


def _problem(response: Response) -> dict[str, Any]:
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


def check(response: Response) -> None:
    """Raise the typed error for an answer that is not a success."""
    if response.status_code >= 400:
        raise error_for_problem(response.status_code, _problem(response))


def _json(response: Response) -> Any:
    check(response)
    try:
        return json.loads(response.content)
    except ValueError:
        raise UnexpectedResponse(
            f"The store answered {response.status_code} with a body that is not JSON.",
            status=response.status_code,
        ) from None


def ack_of(response: Response) -> WriteAck:
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


def stored_snapshot(response: Response) -> StoredSnapshot | None:
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


def deleted_count(response: Response) -> int:
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


def page_of(response: Response) -> tuple[list[RunSummary], str | None]:
    """The summaries of one ``GET /runs`` page and the cursor of the next (None on the last)."""
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise UnexpectedResponse("The store's run list has no runs array.", status=200)
    cursor = body.get("nextCursor")
    return [RunSummary.model_validate(run) for run in body["runs"]], (
        cursor if isinstance(cursor, str) else None
    )


def write_request(write: Write) -> tuple[str, bytes, dict[str, str]]:
    """Method, body and headers of a ledger's write."""
    return write.method, write.body(), write_headers(write.if_match)


class UrlCache:
    """Absolute URLs by path under one base URL.

    httpx parses a relative URL and merges it with the base on every request, which costs more
    than the rest of building a step's request; a run's URL is the same at every step.
    """

    def __init__(self, base_url: httpx.URL, capacity: int = 4096) -> None:
        self._base = str(base_url).rstrip("/")
        self._urls: dict[str, httpx.URL] = {}
        self._capacity = capacity

    def __getitem__(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= self._capacity:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(self._base + path)
        return url


class RequestFactory:
    """The clients' requests, built as their httpx client would build them, at a fraction of
    the cost.

    ``httpx.Client.request`` merges URL, headers, cookies and timeout into every request, then
    runs auth, redirect, cookie and logging steps around the transport: on the lean transport
    that is more CPU than the exchange itself. The clients need none of it when they know their
    transport (see ``_client.RunStoreClient``): their URLs are under one base, their headers are
    the httpx client's defaults with their own, and they follow no redirects and keep no cookies.
    """

    def __init__(self, http: httpx.Client | httpx.AsyncClient) -> None:
        self.urls = UrlCache(http.base_url)
        self._headers = dict(http.headers)
        self._timeout = http.timeout.as_dict()

    def build(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
    ) -> httpx.Request:
        return httpx.Request(
            method,
            self.urls[path],
            params=params,
            content=content,
            headers={**self._headers, **headers} if headers else self._headers,
            extensions={"timeout": self._timeout},
        )


class RawRequests:
    """The clients' requests as the bytes their own transport sends (see
    ``Http11Transport.exchange``): no ``httpx.Request`` is built, and the answer comes back as
    an :class:`Answer`. For requests with no query parameters under a plain ``http://`` base URL
    with no credentials; the headers are the client's own (no ``Accept-Encoding``: the answers
    come back as they are, and an Answer does not decode content).
    """

    def __init__(self, base_url: httpx.URL, headers: Mapping[str, str], timeout: httpx.Timeout):
        self.origin = origin_of(base_url)
        self.timeouts = timeout.as_dict()
        self._host = base_url.netloc
        self._prefix = base_url.raw_path.rstrip(b"/")
        self._headers = [(name.encode(), value.encode()) for name, value in headers.items()]

    def payload(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[bytes, bytes]:
        all_headers = self._headers
        if headers:
            all_headers = all_headers + [
                (name.encode(), value.encode()) for name, value in headers.items()
            ]
        if content is not None:
            all_headers = [*all_headers, (b"Content-Length", b"%d" % len(content))]
        return encode_head(
            method.encode("ascii"),
            self._prefix + path.encode("ascii"),
            all_headers,
            content or b"",
            host=self._host,
        )


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that may succeed if tried again: why it failed, and what that implies."""

    description: str
    retry_after: float | None = None
    # The request may have been applied although no success came back.
    uncertain: bool = False
    response: Response | None = None
    exception: Exception | None = None

    @classmethod
    def of_exception(cls, exc: Exception) -> Failure:
        return cls(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            uncertain=not isinstance(exc, _NOT_SENT),
            exception=exc,
        )

    @classmethod
    def of_response(cls, response: Response) -> Failure:
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
