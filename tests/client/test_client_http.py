"""The HTTP clients over real sockets: connection reuse, failures and retries, proxies and
credentials as httpx applies them, and a real server going away. Each case runs on
RunStoreClient and on AsyncRunStoreClient. Small raw-socket servers play the store where a
test needs it to misbehave."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support import ServerProcess, make_snapshot

from runstore.client import (
    AsyncRunStoreClient,
    BodyTooLarge,
    RunStoreClient,
    StoreUnavailable,
    UnexpectedResponse,
)

MODES = ["sync", "async"]


# ---------------------------------------------------------------- a raw HTTP server


class Peer:
    """One accepted connection, as the server side of a test sees it."""

    def __init__(self, conn: socket.socket, stopping: threading.Event) -> None:
        self.conn = conn
        self.buffer = b""
        self.stopping = stopping

    def _fill(self) -> bool:
        data = self.conn.recv(65536)
        self.buffer += data
        return bool(data)

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._fill():
                raise EOFError
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        return taken

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        """Method, target, headers (lower-case names) and body of the next request; None if
        the client closed the connection instead."""
        try:
            request_line = self._line()
        except EOFError:
            return None
        headers: dict[str, str] = {}
        while line := self._line():
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size))
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            body = b"".join(parts)
        else:
            body = self._take(int(headers.get("content-length", "0")))
        method, target, version = request_line.decode().split(" ")
        assert version == "HTTP/1.1"
        return method, target, headers, body

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()


def answer(status: int = 200, body: bytes = b"ok", *headers: str, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawServer:
    """A TCP server on a free loopback port; ``handle(peer, n)`` serves its n-th connection
    (from 1) in a thread of its own. Counts the connections it accepted."""

    def __init__(self, handle: Callable[[Peer, int], None]) -> None:
        self.handle = handle
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._peers: list[Peer] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            peer = Peer(conn, self._stopping)
            with self._lock:
                self.accepted += 1
                index = self.accepted
                self._peers.append(peer)
            thread = threading.Thread(target=self._serve, args=(peer, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, peer: Peer, index: int) -> None:
        try:
            self.handle(peer, index)
        except (OSError, EOFError):
            pass  # the client went away, or the test stopped the server
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            peer.conn.close()

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(5)
        self.listener.close()
        for peer in self._peers:
            with contextlib.suppress(OSError):
                peer.conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        assert not self.errors, self.errors


@contextlib.contextmanager
def raw_server(handle: Callable[[Peer, int], None]) -> Iterator[RawServer]:
    server = RawServer(handle)
    try:
        yield server
    finally:
        server.stop()


def keep_alive(respond: Callable[[tuple[str, str, dict[str, str], bytes]], bytes]) -> Any:
    """A handler answering every request on its connection with ``respond(request)``."""

    def handle(peer: Peer, index: int) -> None:
        while (request := peer.request()) is not None:
            peer.send(respond(request))

    return handle


def echo(request: tuple[str, str, dict[str, str], bytes]) -> bytes:
    return answer(200, request[3])


Request = tuple[str, str, dict[str, str], bytes]
NOT_FOUND = answer(
    404,
    json.dumps({"type": "not-found", "title": "Not Found", "status": 404}).encode(),
    "Content-Type: application/problem+json",
)


def not_found(request: Request) -> bytes:
    return NOT_FOUND


# ---------------------------------------------------------------- either client, called blocking


class Caller:
    """The client of ``mode``, called blocking: the async client's calls run on a loop of its
    own, so one test body serves both clients."""

    def __init__(self, mode: str, url: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        self.runner = asyncio.Runner() if mode == "async" else None
        kind = AsyncRunStoreClient if mode == "async" else RunStoreClient
        self.client: Any = kind(url, **kwargs)

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        return result if self.runner is None else self.runner.run(result)

    def close(self) -> None:
        self("close")
        if self.runner is not None:
            self.runner.close()


@contextlib.contextmanager
def caller(mode: str, url: str, **kwargs: Any) -> Iterator[Caller]:
    client = Caller(mode, url, **kwargs)
    try:
        yield client
    finally:
        client.close()


# ---------------------------------------------------------------- connections


@pytest.mark.parametrize("mode", MODES)
def test_keep_alive_reuses_one_connection(mode: str) -> None:
    with raw_server(keep_alive(not_found)) as server, caller(mode, server.url) as call:
        for n in range(5):
            assert call("get_run", f"run-{n}") is None
        assert server.accepted == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("close", ["fin", "rst"])
def test_a_connection_the_server_closed_while_idle_is_not_used(mode: str, close: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            peer.send(NOT_FOUND)
            if close == "rst":
                peer.reset()

    with raw_server(handle) as server, caller(mode, server.url) as call:
        assert call("get_run", "run-1") is None
        time.sleep(0.1)  # the close reaches the client
        assert call("get_run", "run-1") is None  # without a retry: retries=0
        assert server.accepted == 2


@pytest.mark.parametrize("mode", MODES)
def test_calls_from_many_threads_or_tasks_share_the_pool(mode: str) -> None:
    def worker(call: Caller, n: int) -> None:
        for i in range(25):
            assert call("get_run", f"run-{n}-{i}") is None

    with raw_server(keep_alive(not_found)) as server, caller(mode, server.url) as call:
        if mode == "sync":
            threads = [threading.Thread(target=worker, args=(call, n)) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:

            async def task(n: int) -> None:
                for i in range(25):
                    assert await call.client.get_run(f"run-{n}-{i}") is None

            async def tasks() -> None:
                await asyncio.gather(*(task(n) for n in range(8)))

            assert call.runner is not None
            call.runner.run(tasks())
        assert 1 <= server.accepted <= 8
        before = server.accepted
        worker(call, 99)
        assert server.accepted == before


@pytest.mark.parametrize("mode", MODES)
def test_close_closes_the_connections_and_is_idempotent(mode: str) -> None:
    closed = threading.Event()

    def handle(peer: Peer, index: int) -> None:
        keep_alive(not_found)(peer, index)
        closed.set()

    with raw_server(handle) as server:
        call = Caller(mode, server.url)
        assert call("get_run", "run-1") is None
        call("close")
        assert closed.wait(5)
        call("close")
        with pytest.raises(RuntimeError, match="closed"):
            call("get_run", "run-1")
        call.close()


# ---------------------------------------------------------------- failures and retries


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_never_answers_is_unavailable_after_the_timeout(mode: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        peer.request()
        peer.conn.recv(1)  # until the client gives up and closes

    with raw_server(handle) as server, caller(mode, server.url, timeout=0.3) as call:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call("get_run", "run-1")
        assert time.monotonic() - started < 2.0
        assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


@pytest.mark.parametrize("mode", MODES)
def test_a_connection_closed_unanswered_is_retried_only_by_the_policy(mode: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        peer.request()  # and close without a word

    with raw_server(handle) as server, caller(mode, server.url) as call:
        with pytest.raises(StoreUnavailable) as caught:
            call("get_run", "run-1")
        assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
        assert server.accepted == 1  # retries=0: no attempt hidden in the transport


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", ["closed", "reset"])
def test_an_answer_cut_off_midway_is_retried(mode: str, cut: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        if index > 1:
            keep_alive(not_found)(peer, index)
        elif peer.request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            if cut == "reset":
                time.sleep(0.1)
                peer.reset()

    with raw_server(handle) as server, caller(mode, server.url, retries=2) as call:
        assert call("get_run", "run-1") is None
        assert server.accepted == 2


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_sent_before_the_body_was_read(mode: str) -> None:
    problem = {"type": "body-too-large", "title": "Payload Too Large", "status": 413}

    def handle(peer: Peer, index: int) -> None:
        peer._line()
        peer.send(
            answer(
                413,
                json.dumps(problem).encode(),
                "Content-Type: application/problem+json",
                "Connection: close",
            )
        )
        # Then it reads the body and throws it away. (Resetting the connection instead is a
        # ReadError to httpx's async transport, which may lose the answer with the unread body.)
        while peer.conn.recv(1 << 20):
            pass

    snapshot = make_snapshot("big-1", input="x" * (8 * 1024 * 1024))
    with (
        raw_server(handle) as server,
        caller(mode, server.url) as call,
        pytest.raises(BodyTooLarge),
    ):
        call("put_run", snapshot)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("method", "args"), [("watch", ("run-1",)), ("events", ())])
def test_an_event_stream_answered_with_another_success_is_an_error_not_a_reconnect(
    mode: str, method: str, args: tuple[str, ...]
) -> None:
    # A 204 (from a proxy, say) is no stream and no failure to retry: connecting again would
    # get it again, for ever.
    requests: list[Request] = []

    def no_content(request: Request) -> bytes:
        requests.append(request)
        return answer(204, b"")

    with raw_server(keep_alive(no_content)) as server:
        if mode == "sync":
            with (
                RunStoreClient(server.url, retries=0) as client,
                pytest.raises(UnexpectedResponse, match="204"),
            ):
                next(iter(getattr(client, method)(*args)))
        else:

            async def first_event() -> None:
                async with AsyncRunStoreClient(server.url, retries=0) as client:
                    async for _ in getattr(client, method)(*args):
                        return

            with pytest.raises(UnexpectedResponse, match="204"):
                asyncio.run(first_event())
    assert len(requests) == 1


# ---------------------------------------------------------------- httpx's rules: URL, environment


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("environment", "proxied"),
    [
        ({}, False),
        ({"HTTP_PROXY": "{proxy}"}, True),
        ({"all_proxy": "{proxy}"}, True),
        ({"HTTPS_PROXY": "{proxy}"}, False),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "localhost, 127.0.0.1"}, False),
        ({"HTTP_PROXY": "{proxy}", "NO_PROXY": "*"}, False),
    ],
)
def test_a_proxy_from_the_environment_is_used(
    monkeypatch: pytest.MonkeyPatch, mode: str, environment: dict[str, str], proxied: bool
) -> None:
    targets: dict[str, list[str]] = {"origin": [], "proxy": []}

    def recording(name: str) -> Callable[[Peer, int], None]:
        def respond(request: Request) -> bytes:
            targets[name].append(request[1])
            return NOT_FOUND

        return keep_alive(respond)

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    with raw_server(recording("origin")) as origin, raw_server(recording("proxy")) as proxy:
        for name, value in environment.items():
            monkeypatch.setenv(name, value.format(proxy=proxy.url))
        with caller(mode, origin.url) as call:
            assert call("get_run", "run-1") is None
    if proxied:
        assert targets == {"origin": [], "proxy": [f"{origin.url}/runs/run-1"]}
    else:
        assert targets == {"origin": ["/runs/run-1"], "proxy": []}


@pytest.mark.parametrize("mode", MODES)
def test_credentials_in_the_url_are_sent_as_basic_auth(mode: str) -> None:
    seen: list[str | None] = []

    def respond(request: Request) -> bytes:
        seen.append(request[2].get("authorization"))
        return NOT_FOUND

    with raw_server(keep_alive(respond)) as server:
        url = server.url.replace("http://", "http://user:secret@")
        with caller(mode, url) as call:
            assert call("get_run", "run-1") is None
    assert seen == ["Basic " + base64.b64encode(b"user:secret").decode()]


# ---------------------------------------------------------------- against the real server


@pytest.mark.server
@pytest.mark.parametrize("mode", MODES)
def test_a_stopped_server_is_unavailable_not_a_crash(server: ServerProcess, mode: str) -> None:
    with caller(mode, server.url, retries=1) as call:
        call("put_run", make_snapshot("gone-1"))
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            call("get_run", "gone-1")
        assert isinstance(caught.value.__cause__, httpx.ConnectError)
        assert caught.value.__cause__.request.url == f"{server.url}/runs/gone-1"
        assert caught.value.__cause__.request.method == "GET"


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_the_servers_keep_alive_timeout_is_invisible(server: ServerProcess, mode: str) -> None:
    """uvicorn closes a connection idle for 5 s; the client's pool keeps it longer, and without
    retries the next request still succeeds. Also: ``transport=`` takes httpx's own transport."""
    limits = httpx.Limits(keepalive_expiry=60.0)
    transport: Any = (
        httpx.HTTPTransport(limits=limits)
        if mode == "sync"
        else httpx.AsyncHTTPTransport(limits=limits)
    )
    with caller(mode, server.url, transport=transport) as call:
        call("put_run", make_snapshot("idle-1"))
        time.sleep(5.5)
        assert call("get_run", "idle-1") is not None
