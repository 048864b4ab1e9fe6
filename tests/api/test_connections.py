"""Connection-level limits of ``runstore serve`` (service/connections.py), against a real
uvicorn: head size (431), head deadline (408), connection cap (503), Host (400)."""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ServerProcess, make_snapshot

pytestmark = pytest.mark.server

HEAD_LIMIT = 8 * 1024


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    db = tmp_path_factory.mktemp("connections") / "runs.db"
    env = {
        "RUNSTORE_MAX_HEAD_BYTES": str(HEAD_LIMIT),
        "RUNSTORE_HEAD_TIMEOUT": "1",
        "RUNSTORE_MAX_CONNECTIONS": "20",
    }
    with ServerProcess(db, env=env) as server:
        yield server


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def answer(sock: socket.socket, data: bytes = b"") -> bytes:
    """Everything the server sends until it closes the connection, after sending ``data``
    (a send the server cut short by answering is not an error)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    sock.close()
    return received


def status_and_problem(received: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower()
    assert b"connection: close" in head.lower()
    return status, json.loads(body)


def request(path: str = "/healthz", *, headers: bytes = b"Host: runstore\r\n") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\n" + headers + b"Connection: close\r\n\r\n"


def test_a_head_just_under_the_limit_is_served(guarded: ServerProcess) -> None:
    filler = HEAD_LIMIT - len(request(headers=b"Host: runstore\r\nX-Fill: \r\n")) - 1
    head = request(headers=b"Host: runstore\r\nX-Fill: " + b"a" * filler + b"\r\n")
    assert len(head) < HEAD_LIMIT
    assert answer(connect(guarded), head).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("size", [HEAD_LIMIT + 1, 100 * 1024 * 1024])
def test_a_head_over_the_limit_is_431_while_others_are_served(
    guarded: ServerProcess, size: int
) -> None:
    # Sent from a thread, as fast as the server takes it; the server answers as soon as the
    # head passes the limit, and serves another client meanwhile.
    sock = connect(guarded)
    head = b"GET /healthz HTTP/1.1\r\nHost: runstore\r\nX-Big: "
    received: list[bytes | BaseException] = []

    def send() -> None:
        try:
            received.append(answer(sock, head + b"a" * (size - len(head))))
        except BaseException as exc:  # reported below, not lost in the thread
            received.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    with guarded.client() as http:
        assert http.get("/healthz").status_code == 200
    sender.join(timeout=60)
    assert received, "the big head's client got no answer within 60 s"
    assert isinstance(received[0], bytes), f"the big head's client failed: {received[0]!r}"
    status, problem = status_and_problem(received[0])
    assert status == 431
    assert problem["type"] == "urn:runstore:problem:head-too-large"
    assert str(HEAD_LIMIT) in str(problem["detail"])


def test_a_client_still_sending_after_its_431_reads_it(guarded: ServerProcess) -> None:
    # A client that goes on sending its head well past the 431 (as a slow uploader of a large
    # head does) reads the answer once it stops: the server reads and drops its input until it
    # falls quiet, rather than closing on unread input, whose reset would destroy the answer.
    sock = connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: runstore\r\nX-Big: " + b"a" * HEAD_LIMIT)
    sending_until = time.monotonic() + 3.0
    while time.monotonic() < sending_until:
        time.sleep(0.3)
        sock.sendall(b"a" * 1024)
    status, problem = status_and_problem(answer(sock))
    assert status == 431
    assert problem["type"] == "urn:runstore:problem:head-too-large"


def test_a_request_line_over_the_limit_is_431(guarded: ServerProcess) -> None:
    received = answer(connect(guarded), b"GET /" + b"a" * (2 * HEAD_LIMIT) + b" HTTP/1.1\r\n")
    assert status_and_problem(received)[0] == 431


def test_a_large_body_is_no_head_and_is_stored(guarded: ServerProcess) -> None:
    # Head and a body many times the head limit, sent in one write: only the head counts.
    body = json.dumps(make_snapshot("big", steps=5000)).encode()
    assert len(body) > 10 * HEAD_LIMIT
    head = (
        b"PUT /runs/big HTTP/1.1\r\nHost: runstore\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert answer(connect(guarded), head + body).startswith(b"HTTP/1.1 201 ")


def test_pipelined_requests_each_get_their_own_head_allowance(guarded: ServerProcess) -> None:
    fill = b"X-Fill: " + b"a" * (HEAD_LIMIT // 2) + b"\r\n"
    one = b"GET /healthz HTTP/1.1\r\nHost: runstore\r\n" + fill + b"\r\n"
    received = answer(connect(guarded), one * 3 + request())
    assert received.count(b"HTTP/1.1 200 ") == 4


def test_a_head_that_does_not_arrive_in_time_is_408(guarded: ServerProcess) -> None:
    received = answer(connect(guarded), b"GET /healthz HTTP/1.1\r\nHost: runs")
    status, problem = status_and_problem(received)
    assert status == 408
    assert problem["type"] == "urn:runstore:problem:request-timeout"


def test_a_silent_connection_is_closed(guarded: ServerProcess) -> None:
    assert answer(connect(guarded)) == b""


def test_a_slow_second_request_on_a_kept_alive_connection_is_408(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: runstore\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 ")
    status, _ = status_and_problem(answer(sock, b"GET /healthz HTTP/1.1\r\n"))
    assert status == 408


def test_each_head_on_a_kept_alive_connection_has_its_own_deadline(
    guarded: ServerProcess,
) -> None:
    # A connection's one head timer, armed while an earlier head arrived, neither cuts a later
    # head short nor ends the connection while it waits between requests.
    whole = b"GET /healthz HTTP/1.1\r\nHost: runstore\r\n\r\n"

    def health() -> bytes:
        received = b""
        while not received.endswith(b'{"status":"ok"}') and (chunk := sock.recv(65536)):
            received += chunk
        return received

    with connect(guarded) as sock:
        sock.sendall(whole)
        assert health().startswith(b"HTTP/1.1 200 ")
        time.sleep(0.6)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.5)  # past the first head's deadline (1 s), within this one's
        sock.sendall(b"Host: runstore\r\n\r\n")
        assert health().startswith(b"HTTP/1.1 200 ")
        time.sleep(1.5)  # idle between requests for longer than a head may take
        sock.sendall(whole)
        assert health().startswith(b"HTTP/1.1 200 ")


def test_http11_without_host_is_400_and_http10_is_served(guarded: ServerProcess) -> None:
    status, problem = status_and_problem(answer(connect(guarded), request(headers=b"")))
    assert status == 400
    assert "Host" in str(problem["detail"])
    assert answer(connect(guarded), b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_connections_past_the_cap_are_503_and_the_others_keep_working(
    guarded: ServerProcess,
) -> None:
    held = [connect(guarded) for _ in range(20)]
    try:
        # The 21st: refused at once, with Retry-After.
        refused = answer(connect(guarded))
        status, problem = status_and_problem(refused)
        assert status == 503
        assert b"retry-after: 1" in refused.lower()
        assert problem["type"] == "urn:runstore:problem:server-busy"
        # A held connection is still served.
        held[0].sendall(request())
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


def test_invalid_http_is_a_problem_400(guarded: ServerProcess, tmp_path: Path) -> None:
    status, problem = status_and_problem(answer(connect(guarded), b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400
    assert problem["type"] == "urn:runstore:problem:bad-request"


class _Cycle:
    """Stands for uvicorn's RequestResponseCycle: it holds the request's scope."""

    def __init__(self) -> None:
        self.scope: dict[str, object] = {}
        self.response_started = True


def test_the_direct_body_writer_leaves_its_request_to_reference_counting() -> None:
    # The scope holds the writer and the request's cycle holds the scope: a strong reference
    # from the writer back to the cycle would leave every GET's cycle and scope to the cyclic
    # garbage collector, whose pauses showed in GET latency.
    from runstore.service.connections import DirectBody
    from runstore.service.feeds import DIRECT_WRITER

    gc.disable()
    try:
        cycle = _Cycle()
        writer = DirectBody(cycle)  # type: ignore[arg-type]
        cycle.scope["extensions"] = {DIRECT_WRITER: writer}
        freed = weakref.ref(cycle)
        del cycle
        assert freed() is None, "the request's cycle outlived its last reference"
        assert writer.write(b"0\r\n\r\n") is False
    finally:
        gc.enable()
