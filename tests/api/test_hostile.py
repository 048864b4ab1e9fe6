"""Hostile and broken requests, table-driven, sent as raw bytes to a real server.

Each row is one bad request with the status docs/api.md gives it; after each, every stored run
is read back and must be exactly as before (a row that changed them fails alone: the seeds are
restored before the next row). The table runs on SQLite and on PostgreSQL. Raw sockets, not
httpx, so that nothing normalises the request on the way (paths with ``..`` and ``%2F``, false
``Content-Length``, chunked and slow bodies, huge headers). Requests that are not valid HTTP/1.1
at all are refused by the HTTP server before the application sees them: a 400 and a closed
connection (marked ``PLAIN`` below: the status and the close are what is checked); everything
else is problem+json. Nothing is a 500,
nothing stops the server.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from support import BACKENDS, ServerProcess, assert_problem, make_snapshot, store_location

pytestmark = pytest.mark.server

MAX_BODY = 1024 * 1024
BODY_TIMEOUT = 1.0
PLAIN = "plain"  # the slug of a refusal by the HTTP server itself (not problem+json)

VICTIM = make_snapshot(
    "victim",
    3,
    history=[{"role": "user", "content": "hi"}],
    plan={"steps": ["search", "answer"]},
    usage={"inputTokens": 30, "big": 123456789012345678901234567890},
)
FINISHED = make_snapshot("finished", 2, status="completed", completedAt=1_700_000_500_000)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def as_response(self) -> httpx.Response:
        return httpx.Response(self.status, headers=self.headers, content=self.body)


def _parse_answer(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), raw[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Answer(int(lines[0].split(" ")[1]), headers, rest[:length])


def exchange(
    port: int, head: bytes, body_parts: Sequence[bytes] = (), pause: float = 0.0
) -> Answer:
    """Send a request as given (body in parts, ``pause`` s apart) and read the first answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        try:
            connection.sendall(head)
            for part in body_parts:
                time.sleep(pause)
                connection.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and stopped reading; its answer is still there
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
                if _complete(received):
                    break
        except ConnectionResetError:
            pass
    assert received, "no answer at all"
    return _parse_answer(received)


def _complete(received: bytes) -> bool:
    head, separator, rest = received.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return False


@dataclass
class Request:
    """A raw HTTP/1.1 request; ``content_length`` None computes it, False leaves it out."""

    method: str
    target: bytes | str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    content_length: int | bool | None = None
    parts: int = 1
    pause: float = 0.0

    def head(self) -> bytes:
        target = self.target.encode() if isinstance(self.target, str) else self.target
        lines = [self.method.encode() + b" " + target + b" HTTP/1.1", b"Host: runstore"]
        if self.body is not None and self.content_type is not None:
            lines.append(f"Content-Type: {self.content_type}".encode())
        if self.content_length is None and self.body is not None:
            lines.append(f"Content-Length: {len(self.body)}".encode())
        elif self.content_length is not False and self.content_length is not None:
            lines.append(f"Content-Length: {int(self.content_length)}".encode())
        lines += [f"{name}: {value}".encode("latin-1") for name, value in self.headers.items()]
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def body_parts(self) -> list[bytes]:
        if not self.body:
            return []
        size = -(-len(self.body) // self.parts)
        return [self.body[i : i + size] for i in range(0, len(self.body), size)]


def chunked(body: bytes, chunk: int = 64 * 1024) -> bytes:
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def snapshot_with(**fields: Any) -> bytes:
    return dumps({**make_snapshot("victim", 3), **fields})


def deeply_nested(levels: int) -> bytes:
    return b'{"runId": "victim", "trace": [' + b"[" * levels + b"]" * levels + b"]}"


PADDING = b" " * (MAX_BODY + 10)
TOO_LARGE = snapshot_with(input="x" * (MAX_BODY + 10))
VALID = snapshot_with()
# As many tags as fit in the head limit (64 KiB) with room to spare.
ETAGS = ", ".join(f'"{n}"' for n in range(100, 6_000))


@dataclass(frozen=True)
class Case:
    name: str
    request: Request
    status: int
    slug: str

    def __str__(self) -> str:
        return self.name


def body_cases() -> Iterator[Case]:
    """Bodies that must be refused, for PUT and for PATCH alike."""
    bodies: list[tuple[str, bytes, int, str]] = [
        ("empty-body", b"", 400, "malformed-json"),
        ("malformed-json", b'{"runId": "victim",', 400, "malformed-json"),
        ("truncated-json", VALID[: len(VALID) // 2], 400, "malformed-json"),
        ("trailing-garbage", VALID + b" }", 400, "malformed-json"),
        ("invalid-utf8", VALID.replace(b"Paris", b"Par\xff\xfeis"), 400, "malformed-json"),
        ("utf16-body", VALID.decode().encode("utf-16"), 400, "malformed-json"),
        ("nan", VALID.replace(b'"revisions": 0', b'"revisions": NaN'), 400, "malformed-json"),
        (
            "nan-in-usage",
            snapshot_with(usage={}).replace(b"{}", b'{"x": NaN}'),
            400,
            "malformed-json",
        ),
        (
            "infinity",
            VALID.replace(b'"revisions": 0', b'"revisions": Infinity'),
            400,
            "malformed-json",
        ),
        (
            "minus-infinity",
            snapshot_with(usage={}).replace(b"{}", b'{"x": -Infinity}'),
            400,
            "malformed-json",
        ),
        (
            "double-overflow",
            snapshot_with(usage={}).replace(b"{}", b'{"x": 1e400}'),
            400,
            "malformed-json",
        ),
        (
            "integer-of-5000-digits",
            snapshot_with(usage={}).replace(b"{}", b'{"x": ' + b"9" * 5000 + b"}"),
            400,
            "malformed-json",
        ),
        ("nesting-100000-arrays", deeply_nested(100_000), 400, "nesting-too-deep"),
        # Once a 500: a RecursionError in the encoder after the parser took it (issue 14).
        ("nesting-980-arrays", deeply_nested(980), 400, "nesting-too-deep"),
        (
            "nesting-100000-objects",
            b'{"runId": "victim", "plan": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}",
            400,
            "nesting-too-deep",
        ),
        (
            "number-too-small-for-a-double",
            VALID.replace(b'"revisions": 0', b'"revisions": 0, "x": 1e-400'),
            400,
            "malformed-json",
        ),
        (
            "duplicate-keys",
            b'{"runId": "victim", "runId": "victim", ' + VALID[1:],
            400,
            "malformed-json",
        ),
        (
            "duplicate-nested-keys",
            snapshot_with(usage={}).replace(b"{}", b'{"a": 1, "a": 2}'),
            400,
            "malformed-json",
        ),
        ("body-run-id-differs", snapshot_with(runId="other"), 400, "run-id-mismatch"),
        ("array-body", b"[]", 422, "invalid-fields"),
        ("null-body", b"null", 422, "invalid-fields"),
        ("string-body", b'"victim"', 422, "invalid-fields"),
        ("string-for-integer", snapshot_with(stepIndex="5"), 422, "invalid-fields"),
        ("float-for-integer", snapshot_with(stepIndex=5.0), 422, "invalid-fields"),
        ("bool-for-integer", snapshot_with(iterations=True), 422, "invalid-fields"),
        ("negative-count", snapshot_with(revisions=-1), 422, "invalid-fields"),
        ("integer-beyond-64-bits", snapshot_with(stepIndex=2**64), 422, "invalid-fields"),
        ("object-for-trace", snapshot_with(trace={"0": {}}), 422, "invalid-fields"),
        ("string-for-usage", snapshot_with(usage="lots"), 422, "invalid-fields"),
        ("bad-status", snapshot_with(status="Running Now"), 422, "invalid-fields"),
        ("reserved-field", snapshot_with(traceLength=3), 422, "invalid-fields"),
    ]
    for method in ("PUT", "PATCH"):
        for name, body, status, slug in bodies:
            yield Case(f"{method}-{name}", Request(method, "/runs/victim", body), status, slug)


def put_cases() -> Iterator[Case]:
    missing = json.loads(VALID)
    del missing["status"]
    yield Case("PUT-empty-object", Request("PUT", "/runs/victim", b"{}"), 422, "invalid-fields")
    yield Case(
        "PUT-missing-field", Request("PUT", "/runs/victim", dumps(missing)), 422, "invalid-fields"
    )
    yield Case(
        "PUT-trace-null",
        Request("PUT", "/runs/victim", snapshot_with(trace=None)),
        422,
        "invalid-fields",
    )
    yield Case(
        "PUT-would-unfinish",
        Request("PUT", "/runs/finished", dumps(make_snapshot("finished", 2))),
        409,
        "stale-write",
    )
    yield Case(
        "PUT-shorter-trace",
        Request("PUT", "/runs/victim", dumps(make_snapshot("victim", 1))),
        409,
        "stale-write",
    )


def patch_cases() -> Iterator[Case]:
    def patch(body: dict[str, Any], run_id: str = "victim") -> Request:
        return Request("PATCH", f"/runs/{run_id}", dumps(body))

    yield Case("PATCH-trace-without-from", patch({"trace": [{}]}), 422, "invalid-fields")
    yield Case("PATCH-from-without-trace", patch({"traceFrom": 1}), 422, "invalid-fields")
    yield Case("PATCH-from-negative", patch({"trace": [], "traceFrom": -1}), 422, "invalid-fields")
    yield Case("PATCH-from-string", patch({"trace": [], "traceFrom": "1"}), 422, "invalid-fields")
    yield Case("PATCH-trace-gap", patch({"trace": [{}], "traceFrom": 9}), 409, "trace-gap")
    yield Case("PATCH-history-gap", patch({"history": [{}], "historyFrom": 9}), 409, "trace-gap")
    yield Case("PATCH-shorten-trace", patch({"trace": [], "traceFrom": 1}), 409, "stale-write")
    yield Case("PATCH-unfinish", patch({"completedAt": None}, "finished"), 409, "stale-write")
    yield Case("PATCH-null-required", patch({"status": None}), 422, "invalid-fields")
    yield Case("PATCH-null-run-id", patch({"runId": None}), 422, "invalid-fields")
    yield Case(
        "PATCH-null-trace-from", patch({"trace": [], "traceFrom": None}), 422, "invalid-fields"
    )
    yield Case(
        "PATCH-null-history-from",
        patch({"history": [], "historyFrom": None}),
        422,
        "invalid-fields",
    )
    yield Case("PATCH-absent-run", patch({"status": "failed"}, "absent"), 404, "not-found")


def size_and_timing_cases() -> Iterator[Case]:
    over = Request("PUT", "/runs/victim", TOO_LARGE)
    yield Case("over-limit-true-length", over, 413, "body-too-large")
    # Says less than it sends: only what it declared is read (a truncated body), never more.
    understated = Request("PUT", "/runs/victim", TOO_LARGE, content_length=len(VALID) // 2)
    yield Case("over-limit-understated-length", understated, 400, "malformed-json")
    overstated = Request("PUT", "/runs/victim", TOO_LARGE, content_length=2 * MAX_BODY)
    yield Case("over-limit-overstated-length", overstated, 413, "body-too-large")
    no_length = Request(
        "PUT",
        "/runs/victim",
        chunked(TOO_LARGE),
        headers={"Transfer-Encoding": "chunked"},
        content_length=False,
    )
    yield Case("over-limit-chunked", no_length, 413, "body-too-large")
    padded = Request(
        "PUT",
        "/runs/victim",
        chunked(VALID + PADDING),
        headers={"Transfer-Encoding": "chunked"},
        content_length=False,
    )
    yield Case("over-limit-chunked-whitespace", padded, 413, "body-too-large")
    slow = Request("PUT", "/runs/victim", VALID, parts=3, pause=BODY_TIMEOUT * 0.8)
    yield Case("slow-body", slow, 408, "request-timeout")
    stalled = Request("PUT", "/runs/victim", VALID, content_length=len(VALID) + 10)
    yield Case("body-shorter-than-its-length", stalled, 408, "request-timeout")


def media_type_cases() -> Iterator[Case]:
    for name, content_type in [
        ("no-content-type", None),
        ("text-plain", "text/plain"),
        ("form", "application/x-www-form-urlencoded"),
        ("xml", "application/xml"),
        ("multipart", "multipart/form-data; boundary=x"),
        ("json-in-latin1", "application/json; charset=latin-1"),
        ("json-prefix-trick", "application/jsonx"),
    ]:
        request = Request("PUT", "/runs/victim", VALID, content_type=content_type)
        yield Case(f"content-type-{name}", request, 415, "unsupported-media-type")


def run_id_cases() -> Iterator[Case]:
    body = dumps(make_snapshot("x"))
    for name, target, status, slug in [
        ("slash", "/runs/a/b", 404, "not-found"),
        ("encoded-slash", "/runs/a%2Fb", 404, "not-found"),
        ("encoded-slash-dotdot", "/runs/..%2Fvictim", 404, "not-found"),
        ("dotdot-segment", "/runs/../runs/victim", 404, "not-found"),
        ("dotdot", "/runs/..", 422, "invalid-fields"),
        ("dot", "/runs/.", 422, "invalid-fields"),
        ("encoded-space", "/runs/a%20b", 422, "invalid-fields"),
        ("encoded-non-ascii", "/runs/caf%C3%A9", 422, "invalid-fields"),
        ("encoded-invalid-utf8", "/runs/a%FF", 422, "invalid-fields"),
        ("encoded-nul", "/runs/a%00b", 422, "invalid-fields"),
        ("leading-dash", "/runs/-a", 422, "invalid-fields"),
        ("201-characters", "/runs/" + "a" * 201, 422, "invalid-fields"),
        ("60000-characters", "/runs/" + "a" * 60_000, 422, "invalid-fields"),
        ("100000-characters", "/runs/" + "a" * 100_000, 431, "head-too-large"),
        ("empty", "/runs/", 404, "not-found"),
        ("raw-space", "/runs/a b", 400, PLAIN),
        ("raw-non-ascii", "/runs/café".encode(), 400, PLAIN),
    ]:
        for method in ("GET", "PUT", "DELETE"):
            request = Request(method, target, body if method == "PUT" else None)
            yield Case(f"run-id-{name}-{method}", request, status, slug)


def header_cases() -> Iterator[Case]:
    patch_body = dumps({"status": "failed"})

    def conditional(method: str, header: str, value: str) -> Request:
        body = patch_body if method == "PATCH" else None
        return Request(method, "/runs/victim", body, headers={header: value})

    for name, value, status, slug in [
        ("unquoted", "1", 400, "bad-request"),
        ("half-quoted", '"1', 400, "bad-request"),
        ("empty", "", 400, "bad-request"),
        ("garbage", "%%%", 400, "bad-request"),
        ("weak-tag", 'W/"1"', 412, "precondition-failed"),
        ("not-a-version", '"abc"', 412, "precondition-failed"),
        ("huge-version", '"' + "9" * 400 + '"', 412, "precondition-failed"),
        ("negative-version", '"-1"', 412, "precondition-failed"),
        ("6000-tags", ETAGS, 412, "precondition-failed"),
    ]:
        for method in ("PATCH", "DELETE"):
            yield Case(
                f"if-match-{name}-{method}", conditional(method, "If-Match", value), status, slug
            )
    yield Case(
        "if-none-match-tag-on-put",
        Request("PUT", "/runs/victim", VALID, headers={"If-None-Match": '"1"'}),
        400,
        "bad-request",
    )
    yield Case(
        "if-none-match-star-on-existing",
        Request("PUT", "/runs/victim", VALID, headers={"If-None-Match": "*"}),
        412,
        "precondition-failed",
    )
    yield Case(
        "if-none-match-garbage-on-get",
        Request("GET", "/runs/victim", headers={"If-None-Match": "garbage"}),
        400,
        "bad-request",
    )
    for name, value in [
        ("letters", "abc"),
        ("negative", "-5"),
        ("plus", "+5"),
        ("two-values", "5, 6"),
        ("huge", "9" * 40),
    ]:
        request = Request(
            "PUT", "/runs/victim", VALID, content_length=False, headers={"Content-Length": value}
        )
        yield Case(f"content-length-{name}", request, 400, PLAIN)
    smuggled = Request(
        "PUT",
        "/runs/victim",
        chunked(VALID),
        headers={"Transfer-Encoding": "chunked", "Content-Length": "5"},
        content_length=False,
    )
    yield Case("content-length-with-chunked", smuggled, 400, PLAIN)
    bad_chunks = Request(
        "PUT",
        "/runs/victim",
        b"zz\r\n" + VALID + b"\r\n0\r\n\r\n",
        headers={"Transfer-Encoding": "chunked"},
        content_length=False,
    )
    yield Case("chunk-size-not-hex", bad_chunks, 400, PLAIN)
    yield Case(
        "header-without-colon",
        Request("GET", "/runs/victim", headers={"NoColonHere x": ""}),
        400,
        PLAIN,
    )
    yield Case(
        "header-with-newline-in-name",
        Request("GET", "/runs/victim", headers={"X-A\nB": "c"}),
        400,
        PLAIN,
    )


def query_cases() -> Iterator[Case]:
    cursor = base64.urlsafe_b64encode(b'[1, "x", 3]').decode().rstrip("=")
    forged = base64.urlsafe_b64encode(b'["1", "victim"]').decode().rstrip("=")
    deep = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode().rstrip("=")
    for name, query in [
        ("cursor-garbage", "cursor=garbage!"),
        ("cursor-wrong-shape", f"cursor={cursor}"),
        ("cursor-string-time", f"cursor={forged}"),
        ("cursor-deep-json", f"cursor={deep[:1000]}"),
        ("cursor-too-long", "cursor=" + "A" * 5000),
        ("cursor-empty", "cursor="),
        ("limit-zero", "limit=0"),
        ("limit-huge", "limit=1001"),
        ("limit-text", "limit=ten"),
        ("limit-float", "limit=1.5"),
        ("limit-beyond-64-bits", "limit=" + "9" * 30),
        ("started-after-negative", "startedAfter=-1"),
        ("started-before-float", "startedBefore=1e3"),
        ("started-after-beyond-64-bits", f"startedAfter={2**64}"),
        ("status-bad", "status=Running%20Now"),
        ("status-empty", "status="),
    ]:
        yield Case(f"list-{name}", Request("GET", f"/runs?{query}"), 422, "invalid-fields")
    yield Case("bulk-delete-without-bounds", Request("DELETE", "/runs"), 422, "invalid-fields")
    yield Case(
        "bulk-delete-bad-bound",
        Request("DELETE", "/runs?completedBefore=soon"),
        422,
        "invalid-fields",
    )


def method_cases() -> Iterator[Case]:
    for method, target in [
        ("POST", "/runs/victim"),
        ("POST", "/runs"),
        ("PUT", "/runs"),
        ("PATCH", "/runs"),
        ("OPTIONS", "/runs/victim"),
        ("TRACE", "/runs/victim"),
        ("DELETE", "/healthz"),
    ]:
        yield Case(f"method-{method}-{target}", Request(method, target), 405, "method-not-allowed")
    yield Case("method-garbage", Request("FOO BAR", "/runs/victim"), 400, PLAIN)
    yield Case("unknown-path", Request("GET", "/admin/../../etc/passwd"), 404, "not-found")


CASES = [
    *body_cases(),
    *put_cases(),
    *patch_cases(),
    *size_and_timing_cases(),
    *media_type_cases(),
    *run_id_cases(),
    *header_cases(),
    *query_cases(),
    *method_cases(),
]


def stored_state(http: httpx.Client) -> dict[str, tuple[str, Any]]:
    """Every stored run: its ETag and its snapshot."""
    listing = http.get("/runs", params={"limit": 1000}).json()
    state = {}
    for summary in listing["runs"]:
        run = http.get(f"/runs/{summary['runId']}")
        state[summary["runId"]] = (run.headers["etag"], run.json())
    return state


SEEDS = (VICTIM, FINISHED)


def seed(http: httpx.Client) -> None:
    """Store exactly the seeded runs, each at version 1, whatever was stored before."""
    for run_id in stored_state(http):
        assert http.delete(f"/runs/{run_id}").status_code == 204
    for snapshot in SEEDS:
        assert http.put(f"/runs/{snapshot['runId']}", json=snapshot).status_code == 201


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server for the whole table (on each backend), seeded with VICTIM and FINISHED."""
    store = store_location(request, tmp_path_factory.mktemp("hostile"))
    env = {"RUNSTORE_MAX_BODY_BYTES": str(MAX_BODY), "RUNSTORE_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    with store.server(env=env) as process, process.client() as http:
        seed(http)
        yield process
    output = "".join(process.output)
    assert "Traceback" not in output
    assert "unexpected error" not in output


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client for the checks (kept open: a new client per row costs more than the row)."""
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def seeded_state(http: httpx.Client) -> dict[str, tuple[str, Any]]:
    state = stored_state(http)
    assert set(state) == {"victim", "finished"}
    return state


@dataclass
class Row:
    """One row's view of the shared server: its check, and the clean-up if the row failed."""

    server: ServerProcess
    http: httpx.Client
    seeded_state: dict[str, tuple[str, Any]]
    passed: bool = False

    def assert_unchanged(self) -> None:
        """The server is up and stores exactly the seeds."""
        assert self.server.process is not None
        assert self.server.process.poll() is None, "the request stopped the server"
        assert stored_state(self.http) == self.seeded_state
        self.passed = True

    def restore(self) -> None:
        """Undo what a failed row may have done, so that it fails alone."""
        assert self.server.process is not None
        if self.server.process.poll() is not None:
            self.server.restart()
        if stored_state(self.http) != self.seeded_state:
            seed(self.http)
            assert stored_state(self.http) == self.seeded_state, "the seeds could not be restored"


@pytest.fixture
def row(
    server: ServerProcess, http: httpx.Client, seeded_state: dict[str, tuple[str, Any]]
) -> Iterator[Row]:
    checked = Row(server, http, seeded_state)
    yield checked
    if not checked.passed:
        checked.restore()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_bad_request_is_refused_and_changes_nothing(
    server: ServerProcess, row: Row, case: Case
) -> None:
    request = case.request
    answer = exchange(server.port, request.head(), request.body_parts(), request.pause)
    if case.slug == PLAIN:
        assert answer.status == case.status, answer
        assert answer.headers.get("connection") == "close"
    elif request.method == "HEAD":
        assert answer.status == case.status
    else:
        assert_problem(answer.as_response(), case.status, case.slug)
    row.assert_unchanged()


@pytest.mark.parametrize(
    ("name", "headers", "status"),
    [
        ("one-header-of-60-kib", {"X-Padding": "a" * 60 * 1024}, 200),
        ("2000-headers", {f"X-Header-{n}": "v" for n in range(2_000)}, 200),
        ("one-header-of-1-mib", {"X-Padding": "a" * 1024 * 1024}, 431),
        ("10000-headers", {f"X-Header-{n}": "v" for n in range(10_000)}, 431),
        ("if-none-match-of-6000-tags", {"If-None-Match": ETAGS + ', "1"'}, 304),
        ("authorization-of-1-mib-without-auth", {"Authorization": "Bearer " + "t" * 2**20}, 431),
    ],
)
def test_headers_are_read_and_ignored_up_to_the_head_limit(
    server: ServerProcess,
    row: Row,
    name: str,
    headers: dict[str, str],
    status: int,
) -> None:
    # Under RUNSTORE_MAX_HEAD_BYTES (64 KiB) a request is answered as the same request without
    # the noise would be; over it, 431 (docs/api.md, Limits). The server goes on either way.
    answer = exchange(server.port, Request("GET", "/runs/victim", headers=headers).head())
    if status < 400:
        assert answer.status == status
        if status == 200:
            assert json.loads(answer.body) == VICTIM
    else:
        assert_problem(answer.as_response(), status, "head-too-large")
    row.assert_unchanged()


def test_the_server_is_still_whole_after_the_table(
    server: ServerProcess, http: httpx.Client, seeded_state: dict[str, tuple[str, Any]]
) -> None:
    assert server.process is not None
    assert server.process.poll() is None
    assert http.get("/readyz").status_code == 200
    assert stored_state(http) == seeded_state
