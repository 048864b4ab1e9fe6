"""The clients' lean HTTP/1.1 transports: against tiny raw-socket servers for the protocol's
edge cases and failures, against a real server for keep-alive as uvicorn does it, and the rule
that picks them over httpx's transport. Each protocol test runs on the blocking transport and
on the async one."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from support import ServerProcess, make_snapshot

from runstore.client import AsyncRunStoreClient, RunStoreClient, StoreUnavailable
from runstore.client._http import RawRequests
from runstore.client._transports import (
    Answer,
    AsyncHttp11Transport,
    Http11Transport,
    lean_transport_serves,
)
from runstore.client._transports import _async as async_transport
from runstore.client._transports import _sync as sync_transport
from runstore.client._transports._http11 import ResponseParser

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


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x;ext=1\r\n%b\r\n" % (len(part), part) for part in parts) + (
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )


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


# ---------------------------------------------------------------- one client for both modes


class Http:
    """An httpx client over the blocking or the async lean transport, called blocking."""

    def __init__(self, mode: str, timeout: float = 5.0, **transport: Any) -> None:
        self.mode = mode
        self.runner: asyncio.Runner | None = None
        self.transport: Http11Transport | AsyncHttp11Transport
        if mode == "sync":
            self.transport = Http11Transport(**transport)
            self.client: Any = httpx.Client(transport=self.transport, timeout=timeout)
        else:
            self.runner = asyncio.Runner()
            self.transport = AsyncHttp11Transport(**transport)
            self.client = httpx.AsyncClient(transport=self.transport, timeout=timeout)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.runner is None:
            response: httpx.Response = self.client.request(method, url, **kwargs)
            return response
        return self.runner.run(self.client.request(method, url, **kwargs))

    def close(self) -> None:
        if self.runner is None:
            self.client.close()
        else:
            self.runner.run(self.client.aclose())
            self.runner.close()


@pytest.fixture(params=MODES)
def http(request: pytest.FixtureRequest) -> Iterator[Http]:
    client = Http(request.param)
    yield client
    client.close()


def fresh(mode: str, **kwargs: Any) -> contextlib.closing[Http]:
    return contextlib.closing(Http(mode, **kwargs))


# ---------------------------------------------------------------- framing


def test_keep_alive_reuses_one_connection(http: Http) -> None:
    with raw_server(keep_alive(echo)) as server:
        for n in range(5):
            response = http.request("POST", f"{server.url}/echo", content=b"x" * n)
            assert (response.status_code, response.content) == (200, b"x" * n)
        assert response.reason_phrase == "Whatever"
        assert response.http_version == "HTTP/1.1"
        assert server.accepted == 1


def test_a_chunked_answer_arriving_in_pieces(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        while peer.request() is not None:
            whole = answer(200, chunked(b"hello ", b"chunked ", b"world"), length=False)
            whole = whole.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
            for at in range(0, len(whole), 7):  # the parser must resume anywhere
                peer.send(whole[at : at + 7])
                time.sleep(0.001)

    with raw_server(handle) as server:
        for _ in range(2):
            response = http.request("GET", f"{server.url}/chunked")
            assert response.content == b"hello chunked world"
            assert response.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in response.headers
        assert server.accepted == 1


def test_connection_close_and_a_body_until_close_are_not_reused(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            if index % 2:
                peer.send(answer(200, b"closing", "Connection: close"))
            else:
                peer.send(answer(200, b"until the end", length=False))

    with raw_server(handle) as server:
        bodies = [http.request("GET", f"{server.url}/").content for _ in range(4)]
        assert bodies == [b"closing", b"until the end"] * 2
        assert server.accepted == 4


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_answers_without_a_body(http: Http, method: str, status: int) -> None:
    def handle(peer: Peer, index: int) -> None:
        while (request := peer.request()) is not None:
            if request[1] == "/empty":
                # HEAD's Content-Length describes the body a GET would get.
                peer.send(f"HTTP/1.1 {status} X\r\nContent-Length: 1234\r\n\r\n".encode())
            else:
                peer.send(answer(200, b"next"))

    with raw_server(handle) as server:
        response = http.request(method, f"{server.url}/empty")
        assert (response.status_code, response.content) == (status, b"")
        assert http.request("GET", f"{server.url}/next").content == b"next"
        assert server.accepted == 1


def test_an_interim_answer_is_skipped(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        while peer.request() is not None:
            peer.send(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(201, b"made"))

    with raw_server(handle) as server:
        response = http.request("PUT", f"{server.url}/", content=b"{}")
        assert (response.status_code, response.content) == (201, b"made")


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 8 * 1024 * 1024 + 17])
def test_large_bodies_both_ways(http: Http, size: int) -> None:
    def respond(request: tuple[str, str, dict[str, str], bytes]) -> bytes:
        if request[1] == "/chunked":
            body = request[3]
            pieces = [body[at : at + 1_000_000] for at in range(0, len(body), 1_000_000)]
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            return head + chunked(*pieces)
        return echo(request)

    payload = bytes(range(256)) * (size // 256) + b"end"
    with raw_server(keep_alive(respond)) as server:
        assert http.request("PUT", f"{server.url}/echo", content=payload).content == payload
        assert http.request("PUT", f"{server.url}/chunked", content=payload).content == payload
        assert server.accepted == 1


def test_streamed_request_content_is_sent_chunked(http: Http) -> None:
    seen: list[dict[str, str]] = []

    def respond(request: tuple[str, str, dict[str, str], bytes]) -> bytes:
        seen.append(request[2])
        return echo(request)

    with raw_server(keep_alive(respond)) as server:
        if http.mode == "sync":
            content: Any = iter([b"one ", b"two ", b"three"])
        else:

            async def parts() -> AsyncIterator[bytes]:
                for part in (b"one ", b"two ", b"three"):
                    yield part

            content = parts()
        response = http.request("POST", f"{server.url}/", content=content)
        assert response.content == b"one two three"
        assert seen[0]["transfer-encoding"] == "chunked"


def test_a_header_that_would_end_its_line_is_refused(http: Http) -> None:
    with raw_server(keep_alive(echo)) as server, pytest.raises(httpx.LocalProtocolError):
        http.request("GET", f"{server.url}/", headers={"x-evil": "a\r\nx-injected: 1"})


@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 200 OK\r\n\r\n"],
    ids=["no-reason", "empty-until-close"],
)
def test_odd_but_valid_answers(http: Http, reply: bytes) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            peer.send(reply)

    with raw_server(handle) as server:
        response = http.request("GET", f"{server.url}/")
        assert response.status_code == 200
        assert response.content == reply.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
)
def test_malformed_answers_are_remote_protocol_errors(http: Http, reply: bytes) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            peer.send(reply)
            time.sleep(0.2)

    with raw_server(handle) as server, pytest.raises(httpx.RemoteProtocolError):
        http.request("GET", f"{server.url}/")


# ---------------------------------------------------------------- failures


def test_a_refused_connection_is_a_connect_error(http: Http) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        http.request("GET", f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_never_answers_is_a_read_timeout(mode: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        peer.request()
        peer.conn.recv(1)  # until the client gives up and closes

    with raw_server(handle) as server, fresh(mode, timeout=0.3) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            http.request("GET", f"{server.url}/")
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("mode", MODES)
def test_a_server_that_never_reads_is_a_write_timeout(mode: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        peer.stopping.wait(30)  # reads nothing: the kernel buffers fill up

    with raw_server(handle) as server, fresh(mode, timeout=0.5) as http:
        started = time.monotonic()
        with pytest.raises(httpx.WriteTimeout):
            http.request("PUT", f"{server.url}/", content=b"x" * (256 * 1024 * 1024))
        assert time.monotonic() - started < 5.0


def test_a_server_closing_mid_answer_is_a_remote_protocol_error(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")

    with raw_server(handle) as server, pytest.raises(httpx.RemoteProtocolError):
        http.request("GET", f"{server.url}/")


def test_a_server_resetting_mid_answer_is_a_read_error(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            time.sleep(0.1)
            peer.reset()

    with raw_server(handle) as server, pytest.raises(httpx.ReadError):
        http.request("GET", f"{server.url}/")


def test_a_fresh_connection_closed_unanswered_is_not_retried(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        peer.request()  # and close without a word

    with raw_server(handle) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            http.request("GET", f"{server.url}/")
        assert server.accepted == 1


def test_an_early_answer_to_a_body_the_server_will_not_read(http: Http) -> None:
    def handle(peer: Peer, index: int) -> None:
        peer._line()
        peer.send(answer(413, b"too large", "Connection: close"))
        time.sleep(0.2)
        peer.reset()

    with raw_server(handle) as server:
        response = http.request("PUT", f"{server.url}/", content=b"x" * (64 * 1024 * 1024))
        assert (response.status_code, response.content) == (413, b"too large")


# ---------------------------------------------------------------- stale keep-alive connections


@pytest.mark.parametrize("close", ["fin", "rst"])
def test_a_connection_the_server_closed_while_idle_is_not_used(http: Http, close: str) -> None:
    def handle(peer: Peer, index: int) -> None:
        if peer.request() is not None:
            peer.send(answer(200, f"connection {index}".encode()))
            if close == "rst":
                peer.reset()

    with raw_server(handle) as server:
        assert http.request("GET", f"{server.url}/").content == b"connection 1"
        time.sleep(0.1)  # the close reaches the client
        assert http.request("GET", f"{server.url}/").content == b"connection 2"
        assert server.accepted == 2


@pytest.mark.parametrize("how", ["closed-unanswered", "reset-unread"])
def test_a_request_racing_the_servers_idle_close_goes_again_once(
    http: Http, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server closes a kept-alive connection as the request arrives (after the client's
    check that it is still open): the request goes again, once, on a new connection."""
    monkeypatch.setattr(sync_transport._Connection, "readable", lambda self: False)
    monkeypatch.setattr(async_transport._Connection, "stale", lambda self: False)

    def handle(peer: Peer, index: int) -> None:
        if peer.request() is None:
            return
        peer.send(answer(200, f"connection {index}".encode()))
        if how == "reset-unread":
            time.sleep(0.1)
            peer.reset()
        else:
            peer.request()  # closes without answering

    with raw_server(handle) as server:
        assert http.request("GET", f"{server.url}/").content == b"connection 1"
        time.sleep(0.2)
        assert http.request("PUT", f"{server.url}/", content=b"{}").content == b"connection 2"
        assert server.accepted == 2


def test_a_stale_retry_that_fails_again_raises(http: Http, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_transport._Connection, "readable", lambda self: False)
    monkeypatch.setattr(async_transport._Connection, "stale", lambda self: False)

    def handle(peer: Peer, index: int) -> None:
        if index == 1 and peer.request() is not None:
            peer.send(answer(200, b"first"))
        peer.request()  # every later request is dropped unanswered

    with raw_server(handle) as server:
        assert http.request("GET", f"{server.url}/").content == b"first"
        with pytest.raises(httpx.RemoteProtocolError):
            http.request("GET", f"{server.url}/")
        assert server.accepted == 2  # one retry, no more


@pytest.mark.parametrize("mode", MODES)
def test_idle_connections_expire(mode: str) -> None:
    with raw_server(keep_alive(echo)) as server:
        limits = httpx.Limits(keepalive_expiry=0.1)
        with fresh(mode, limits=limits) as http:
            http.request("GET", f"{server.url}/")
            time.sleep(0.3)
            http.request("GET", f"{server.url}/")
        assert server.accepted == 2


# ---------------------------------------------------------------- the pool


def test_threads_share_the_pool() -> None:
    with raw_server(keep_alive(echo)) as server, Http11Transport() as transport:
        client = httpx.Client(transport=transport)
        failures: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(25):
                    body = f"{n}:{i}".encode()
                    assert client.post(f"{server.url}/", content=body).content == body
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
        assert 1 <= server.accepted <= 8
        before = server.accepted
        for _ in range(5):
            client.get(f"{server.url}/")
        assert server.accepted == before


def test_tasks_share_the_pool() -> None:
    async def main(url: str) -> None:
        async with httpx.AsyncClient(transport=AsyncHttp11Transport()) as client:

            async def worker(n: int) -> None:
                for i in range(25):
                    body = f"{n}:{i}".encode()
                    assert (await client.post(url, content=body)).content == body

            await asyncio.gather(*(worker(n) for n in range(8)))

    with raw_server(keep_alive(echo)) as server:
        asyncio.run(main(f"{server.url}/"))
        assert 1 <= server.accepted <= 8


@pytest.mark.parametrize("mode", MODES)
def test_the_pool_is_bounded_and_waits_for_a_free_connection(mode: str) -> None:
    release = threading.Event()

    def slow(request: tuple[str, str, dict[str, str], bytes]) -> bytes:
        if request[1] == "/slow":
            release.wait(10)
        return echo(request)

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with raw_server(keep_alive(slow)) as server:
        with fresh(mode, limits=limits, timeout=httpx.Timeout(5.0, pool=0.2)) as http:
            if mode == "sync":
                holder = threading.Thread(target=http.request, args=("GET", f"{server.url}/slow"))
                holder.start()
                time.sleep(0.2)
                with pytest.raises(httpx.PoolTimeout):
                    http.request("GET", f"{server.url}/")
                release.set()
                holder.join()
            else:

                async def both() -> None:
                    held = asyncio.ensure_future(http.client.get(f"{server.url}/slow"))
                    await asyncio.sleep(0.2)
                    with pytest.raises(httpx.PoolTimeout):
                        await http.client.get(f"{server.url}/")
                    release.set()
                    await held

                assert http.runner is not None
                http.runner.run(both())
            assert http.request("GET", f"{server.url}/").status_code == 200
        assert server.accepted == 1


@pytest.mark.parametrize("mode", MODES)
def test_close_closes_the_idle_connections_and_is_idempotent(mode: str) -> None:
    closed = threading.Event()

    def handle(peer: Peer, index: int) -> None:
        keep_alive(echo)(peer, index)
        closed.set()

    with raw_server(handle) as server:
        http = Http(mode)
        http.request("GET", f"{server.url}/")
        http.close()
        assert closed.wait(5)
        if mode == "sync":
            assert isinstance(http.transport, Http11Transport)
            http.transport.close()
            with pytest.raises(RuntimeError):
                http.transport.handle_request(httpx.Request("GET", f"{server.url}/"))
        else:
            assert isinstance(http.transport, AsyncHttp11Transport)
            asyncio.run(http.transport.aclose())


def test_another_async_library_gets_httpx_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(async_transport, "_in_asyncio", lambda: False)

    async def main(url: str) -> bytes:
        transport = AsyncHttp11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            content = (await client.post(url, content=b"via httpcore")).content
            assert transport._fallback is not None
            return content

    with raw_server(keep_alive(echo)) as server:
        assert asyncio.run(main(f"{server.url}/")) == b"via httpcore"


# ---------------------------------------------------------------- which transport the clients use


@pytest.mark.parametrize(
    ("url", "environment", "lean"),
    [
        ("http://127.0.0.1:8000", {}, True),
        ("https://store.example", {}, False),
        ("http://store.example", {"HTTP_PROXY": "http://127.0.0.1:3128"}, False),
        ("http://store.example", {"all_proxy": "http://127.0.0.1:3128"}, False),
        ("http://store.example", {"HTTPS_PROXY": "http://127.0.0.1:3128"}, True),
        (
            "http://store.example",
            {"HTTP_PROXY": "http://127.0.0.1:3128", "NO_PROXY": "localhost, store.example"},
            True,
        ),
        ("http://store.example", {"HTTP_PROXY": "http://127.0.0.1:3128", "NO_PROXY": "*"}, True),
        # httpx matches suffixes itself; the lean transport leaves that to it.
        ("http://a.store.example", {"HTTP_PROXY": "http://p:1", "NO_PROXY": "store.ex"}, False),
    ],
)
def test_the_lean_transport_serves_plain_http_without_a_proxy(
    monkeypatch: pytest.MonkeyPatch, url: str, environment: dict[str, str], lean: bool
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert lean_transport_serves(httpx.URL(url)) is lean
    with RunStoreClient(url) as client:
        assert isinstance(client._transport, Http11Transport) is lean
        assert (client._transport is None) is not lean
    client_async = AsyncRunStoreClient(url)
    assert isinstance(client_async._transport, AsyncHttp11Transport) is lean
    asyncio.run(client_async.close())


def test_credentials_in_the_url_go_through_httpx() -> None:
    with RunStoreClient("http://user:secret@127.0.0.1:8000") as client:
        assert client._transport is None


# ---------------------------------------------------------------- against the real server


@pytest.mark.server
def test_the_clients_use_the_lean_transport_against_the_server(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = httpx.Request.__init__

    def counting_init(self: httpx.Request, method: str, url: Any, **kwargs: Any) -> None:
        built.append(f"{method} {url}")
        original(self, method, url, **kwargs)

    monkeypatch.setattr(httpx.Request, "__init__", counting_init)
    with RunStoreClient(server.url, retries=0) as client:
        assert isinstance(client._transport, Http11Transport)
        hooks = client.persistence()
        snapshot = make_snapshot("lean-1")
        hooks.on_run_start(snapshot)
        for step in range(1, 30):
            snapshot["trace"].append({"step": step, "output": "x" * 2000})
            hooks.on_step_complete(snapshot)
        stored = client.get_run("lean-1")
        assert stored is not None
        assert len(stored.trace) == 29
        assert len(client._transport._idle) == 1
        # Every request went to the transport as bytes: no httpx.Request was built.
        assert built == []
        assert [summary.run_id for summary in client.list_runs()] == ["lean-1"]
        assert len(built) == 1  # a query string goes through httpx's URL handling

    async def main() -> None:
        async with AsyncRunStoreClient(server.url, retries=0) as client:
            assert isinstance(client._transport, AsyncHttp11Transport)
            stored = await client.get_run("lean-1")
            assert stored is not None
            await client.delete_run("lean-1")
            assert await client.get_run("lean-1") is None

    asyncio.run(main())


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("check", [True, False], ids=["checked", "racing"])
def test_the_servers_keep_alive_timeout_is_invisible(
    server: ServerProcess, mode: str, check: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn closes a connection idle for 5 s; without retries the next request succeeds,
    whether the client notices the close before sending (checked) or not (racing)."""
    if not check:
        monkeypatch.setattr(sync_transport._Connection, "readable", lambda self: False)
        monkeypatch.setattr(async_transport._Connection, "stale", lambda self: False)
    limits = httpx.Limits(keepalive_expiry=60.0)
    snapshot = make_snapshot("idle-1")
    if mode == "sync":
        transport = Http11Transport(limits=limits)
        with RunStoreClient(server.url, retries=0, transport=transport) as client:
            client.put_run(snapshot)
            time.sleep(5.5)
            assert client.get_run("idle-1") is not None
    else:

        async def main() -> None:
            transport = AsyncHttp11Transport(limits=limits)
            async with AsyncRunStoreClient(server.url, retries=0, transport=transport) as client:
                await client.put_run(snapshot)
                await asyncio.sleep(5.5)
                assert await client.get_run("idle-1") is not None

        asyncio.run(main())


@pytest.mark.server
def test_a_stopped_server_is_unavailable_not_a_crash(server: ServerProcess) -> None:
    with RunStoreClient(server.url, retries=1) as client:
        client.put_run(make_snapshot("gone-1"))
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            client.get_run("gone-1")
        assert isinstance(caught.value.__cause__, httpx.ConnectError)
        # The sync client sends bytes and builds no httpx.Request, except for an error like this.
        assert caught.value.__cause__.request.url == f"{server.url}/runs/gone-1"
        assert caught.value.__cause__.request.method == "GET"


# ---------------------------------------------------------------- the sync client's bytes


def test_an_answer_reads_like_an_httpx_response() -> None:
    parser = ResponseParser()
    reply = answer(404, b'{"x": 1}', 'ETag: "7"', "X-Many: a", "x-many: b")
    assert parser.feed(reply)
    read = Answer(parser)
    reference = httpx.Response(404, headers=parser.headers, content=parser.body())
    assert read.status_code == reference.status_code == 404
    assert read.reason_phrase == "Whatever"  # as sent, as make_response reports it too
    assert read.content == reference.content == b'{"x": 1}'
    for name in ("etag", "ETag", "x-many", "content-length", "missing"):
        assert read.headers.get(name) == reference.headers.get(name)


def test_raw_requests_are_what_httpx_would_send() -> None:
    base = httpx.URL("http://127.0.0.1:8123/store/")
    raw = RawRequests(base, {"user-agent": "t", "accept": "application/json"}, httpx.Timeout(3.0))
    assert raw.origin == ("127.0.0.1", 8123)
    assert raw.timeouts == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}
    head, rest = raw.payload(
        "PATCH", "/runs/r-1", content=b"{}", headers={"content-type": "application/json"}
    )
    assert rest == b""
    assert head == (
        b"PATCH /store/runs/r-1 HTTP/1.1\r\nHost: 127.0.0.1:8123\r\nuser-agent: t\r\n"
        b"accept: application/json\r\ncontent-type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    head, _ = raw.payload("GET", "/runs/r-1")
    assert head.startswith(b"GET /store/runs/r-1 HTTP/1.1\r\n")
    assert b"Content-Length" not in head
    with pytest.raises(httpx.LocalProtocolError):
        raw.payload("GET", "/runs/r-1", headers={"if-match": '"1"\r\nx-evil: 1'})
