"""HTTP/1.1 without I/O: the bytes of a request, and a parser for the bytes of its response.

Both transports (:mod:`._sync`, :mod:`._async`) send what :func:`encode_request` makes and feed
what they receive to a :class:`ResponseParser` until it says the response is complete, so the
framing rules live here once. Malformed input raises the ``httpx`` exceptions httpx's own
transport (h11) would: :class:`httpx.RemoteProtocolError` for what the server got wrong,
:class:`httpx.LocalProtocolError` for a request that cannot be written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

import httpx

__all__ = [
    "MAX_HEAD_SIZE",
    "ResponseParser",
    "encode_request",
    "origin_of",
]

# Sent in one write up to this size; a larger body is written after the head, not copied.
COALESCE_LIMIT: Final = 256 * 1024
# As h11's limit on an incomplete event: a head (or chunk-size line) longer is an error.
MAX_HEAD_SIZE: Final = 64 * 1024
NO_BODY_STATUSES: Final = frozenset({204, 304})

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE: Final = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?")
_HEADER_LINE: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")
_HEAD_END: Final = re.compile(rb"\n\r?\n")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?")
# Header names already checked: requests repeat the same few, so each is matched once.
_valid_names: set[bytes] = set()


def origin_of(url: httpx.URL) -> tuple[str, int]:
    """The (host, port) a request to ``url`` connects to."""
    return url.raw_host.decode("ascii"), url.port or 80


def _check_name(name: bytes) -> None:
    if name not in _valid_names:
        if not _TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(f"Illegal header name {name!r}")
        if len(_valid_names) < 1024:
            _valid_names.add(name)


def encode_request(request: httpx.Request, body: bytes) -> tuple[bytes, bytes]:
    """The head and the framed body of ``request``, whose content is ``body``.

    The headers are sent as httpx made them. A body httpx marked ``Transfer-Encoding: chunked``
    (its content was an iterator) has been read whole, and goes as one chunk; a body with
    neither header gets a ``Content-Length``. When the head and body are small they come back
    joined in the first item, so the request is one write and one TCP segment.
    """
    return encode_head(
        request.method.encode("ascii"),
        request.url.raw_path,
        request.headers.raw,
        body,
        host=request.url.netloc,
    )


def encode_head(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    *,
    host: bytes,
) -> tuple[bytes, bytes]:
    """:func:`encode_request` of a request given as its parts (``host`` if no header names it)."""
    _check_name(method)
    lines = [method + b" " + target + b" HTTP/1.1"]
    chunked = has_length = has_host = False
    for name, value in headers:
        _check_name(name)
        lower = name.lower()
        if lower == b"transfer-encoding":
            chunked = value.strip().lower() == b"chunked"
        elif lower == b"content-length":
            has_length = True
        elif lower == b"host":
            has_host = True
        lines.append(name + b": " + value)
    if not has_host:
        lines.insert(1, b"Host: " + host)
    if chunked:
        body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    elif body and not has_length:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"\r\n")
    head = b"\r\n".join(lines)
    # A CR, LF or NUL in the target or a header value would let it end the line early.
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines) or b"\0" in head:
        raise httpx.LocalProtocolError("Illegal character in the request target or a header")
    if b" " in target or not target:
        raise httpx.LocalProtocolError(f"Illegal request target {target!r}")
    if len(body) <= COALESCE_LIMIT:
        return head + body, b""
    return head, body


def _content_length(values: list[bytes]) -> int:
    lengths = {value.strip() for joined in values for value in joined.split(b",")}
    if len(lengths) != 1:
        raise httpx.RemoteProtocolError("Conflicting Content-Length headers")
    length = lengths.pop()
    if not length.isdigit() or len(length) > 18:
        raise httpx.RemoteProtocolError(f"Invalid Content-Length {length!r}")
    return int(length)


# What the parser waits for next.
_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """One response, fed the bytes of the connection as they arrive.

    :meth:`feed` returns True once the response is complete; ``b""`` means the server closed
    the connection. Then ``status``, ``reason``, ``http_version``, ``headers`` and
    :meth:`body` describe it, and ``reusable`` says whether the connection may carry another
    request (HTTP/1.1, no ``Connection: close``, a framed body and nothing after it).
    ``received`` counts the bytes fed, so that a transport can tell a connection the server
    closed before answering (nothing received) from one that broke mid-answer.
    """

    __slots__ = (
        "_buffer",
        "_chunks",
        "_remaining",
        "_state",
        "headers",
        "http_version",
        "reason",
        "received",
        "reusable",
        "skip_body",
        "status",
    )

    def __init__(self, *, skip_body: bool = False) -> None:
        # True for the answer to HEAD: its framing headers describe a body that is not sent.
        self.skip_body = skip_body
        self.received = 0
        self.status = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.reusable = False
        self._state = _HEAD
        self._buffer = b""
        self._chunks: list[bytes] = []
        self._remaining = 0

    def body(self) -> bytes:
        return self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)

    def feed(self, data: bytes) -> bool:
        """Take what the connection received (``b""``: it closed); True once complete."""
        if not data:
            return self._closed()
        self.received += len(data)
        state = self._state
        if state == _LENGTH:
            return self._take_length(data)
        if state == _UNTIL_CLOSE:
            self._chunks.append(data)
            return False
        if state == _DONE:
            # Bytes after a complete response: the connection can carry no other.
            self.reusable = False
            return True
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        if state == _HEAD:
            return self._head(buffer)
        return self._chunked(buffer)

    def _closed(self) -> bool:
        self.reusable = False
        if self._state == _UNTIL_CLOSE or self._state == _DONE:
            self._state = _DONE
            return True
        if self._state == _HEAD:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        raise httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body"
        )

    def _head(self, buffer: bytes) -> bool:
        while True:
            end = _HEAD_END.search(buffer)
            if end is None:
                if len(buffer) > MAX_HEAD_SIZE:
                    raise httpx.RemoteProtocolError("The response head is too long")
                self._buffer = buffer
                return False
            head, buffer = buffer[: end.start()], buffer[end.end() :]
            if self._parse_head(head):
                return self._start_body(buffer)
            # An interim (1xx) response: the real one follows.

    def _parse_head(self, head: bytes) -> bool:
        """Read a status line and headers; False for an interim (1xx) response."""
        lines = head.split(b"\n")
        status_line = lines[0].rstrip(b"\r")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise httpx.RemoteProtocolError(f"Invalid status line {status_line[:100]!r}")
        self.status = int(match.group(2))
        if 100 <= self.status < 200 and self.status != 101:
            return False
        self.http_version = b"HTTP/" + match.group(1)
        self.reason = match.group(3) or b""
        headers = self.headers
        for line in lines[1:]:
            header = _HEADER_LINE.fullmatch(line.rstrip(b"\r"))
            if header is None:
                raise httpx.RemoteProtocolError(f"Invalid header line {line[:100]!r}")
            headers.append((header.group(1), header.group(2)))
        return True

    def _start_body(self, rest: bytes) -> bool:
        length: list[bytes] = []
        transfer: list[bytes] = []
        connection: list[bytes] = []
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length":
                length.append(value)
            elif lower == b"transfer-encoding":
                transfer.append(value)
            elif lower == b"connection":
                connection.append(value)
        closes = any(
            token.strip().lower() == b"close" for value in connection for token in value.split(b",")
        )
        self.reusable = self.http_version == b"HTTP/1.1" and not closes and self.status != 101
        if self.skip_body or self.status in NO_BODY_STATUSES or self.status == 101:
            return self._finish(rest)
        if transfer:
            if b",".join(transfer).strip().lower() != b"chunked":
                raise httpx.RemoteProtocolError(f"Unsupported Transfer-Encoding {transfer!r}")
            self._state = _CHUNK_LINE
            return self._chunked(rest) if rest else False
        if length:
            self._remaining = _content_length(length)
            self._state = _LENGTH
            if not self._remaining:
                return self._finish(rest)
            return self._take_length(rest) if rest else False
        # Neither: the body is everything until the server closes the connection.
        self.reusable = False
        self._state = _UNTIL_CLOSE
        if rest:
            self._chunks.append(rest)
        return False

    def _take_length(self, data: bytes) -> bool:
        remaining = self._remaining
        if len(data) < remaining:
            self._chunks.append(data)
            self._remaining = remaining - len(data)
            return False
        self._chunks.append(data[:remaining] if len(data) > remaining else data)
        return self._finish(data[remaining:])

    def _finish(self, rest: bytes) -> bool:
        self._state = _DONE
        if rest:
            self.reusable = False
        return True

    def _chunked(self, buffer: bytes) -> bool:
        state = self._state
        position = 0
        size = len(buffer)
        while True:
            if state == _CHUNK_DATA:
                take = min(self._remaining, size - position)
                if take:
                    self._chunks.append(buffer[position : position + take])
                    position += take
                    self._remaining -= take
                if self._remaining:
                    break
                state = _CHUNK_END
            line_end = buffer.find(b"\n", position)
            if line_end < 0:
                if size - position > MAX_HEAD_SIZE:
                    raise httpx.RemoteProtocolError("A chunk-size line or trailer is too long")
                break
            line = buffer[position:line_end]
            position = line_end + 1
            if state == _CHUNK_END:
                if line not in (b"", b"\r"):
                    raise httpx.RemoteProtocolError("A chunk does not end with CRLF")
                state = _CHUNK_LINE
            elif state == _CHUNK_LINE:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise httpx.RemoteProtocolError(f"Invalid chunk size line {line[:100]!r}")
                self._remaining = int(match.group(1), 16)
                state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif line in (b"", b"\r"):  # _TRAILERS: an empty line ends the message
                self._state = _DONE
                return self._finish(buffer[position:])
        self._state = state
        self._buffer = buffer[position:]
        return False
