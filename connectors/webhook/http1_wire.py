"""The wire format of the webhook's HTTP/1.1 client: request encoding and a bounded, incremental
response parser (RFC 9112), and the errors both raise.

Who calls it: ``connectors.webhook.http1`` (the connections and the pool). Nothing here does
I/O: ``encode_request`` builds the bytes of one POST and refuses a header that would inject
(CR, LF, NUL) or that the client sets itself; ``ResponseParser`` is fed what arrives and says
when an answer is complete, whether the connection may be kept, and refuses anything outside
RFC 9112 or the bounds below.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

__all__ = [
    "ConnectFailed",
    "ConnectionClosed",
    "HttpError",
    "InvalidRequest",
    "MAX_BODY",
    "MAX_HEAD",
    "MalformedResponse",
    "RequestTimeout",
    "Resolve",
    "Response",
    "ResponseParser",
    "TlsFailed",
    "encode_request",
    "request_prefix",
]

MAX_HEAD = 65_536  # status line and header fields of one answer (interim answers included)
MAX_BODY = 65_536  # body bytes drained to keep a connection; past that it is closed
_MAX_CHUNK_LINE = 4_096

Resolve = Callable[[str, int], Awaitable[Sequence[tuple[socket.AddressFamily, str]]]]

try:
    _VERSION = version("siem-export")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    _VERSION = "0"
_USER_AGENT = f"User-Agent: siem-export/{_VERSION}\r\n"


class HttpError(Exception):
    """The request got no usable answer; ``reason`` says why (no URL path, query or secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectFailed(HttpError):
    pass


class TlsFailed(HttpError):
    pass


class RequestTimeout(HttpError):
    pass


class ConnectionClosed(HttpError):
    """``answered`` is whether any byte of the answer had arrived (then it is never retried)."""

    def __init__(self, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered


class MalformedResponse(HttpError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"malformed response: {detail}")


class InvalidRequest(ValueError):
    """A request header that would break the request's framing; nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- request ------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"/[\x21-\x7e]*")
# Headers this client writes or whose semantics it owns; a caller may not set them.
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"}
)
_names: dict[str, bool] = {}  # header name -> is User-Agent; only names that passed


def request_prefix(host: str, port: int, default_port: int, target: str) -> bytes:
    """The fixed start of every POST to one URL: request line and Host (computed once per URL).

    ``host`` is ASCII (IDNA-encoded names, IPv6 literals without brackets).
    """
    if not _TARGET.fullmatch(target):
        raise InvalidRequest("the URL's path or query has characters a request cannot carry")
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority = f"{authority}:{port}"
    return f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")


def _check_name(name: str) -> bool:
    if not _TOKEN.fullmatch(name):
        raise InvalidRequest(f"request header name {name[:40]!r} is not an HTTP token")
    lower = name.lower()
    if lower in _OWN_HEADERS:
        raise InvalidRequest(f"request header {name!r} is set by the HTTP client")
    if len(_names) < 4096:
        _names[name] = lower == "user-agent"
    return lower == "user-agent"


def encode_request(prefix: bytes, headers: Mapping[str, str], body: bytes) -> bytes:
    """The whole request (head and body) as one buffer; InvalidRequest if a header would inject.

    Values are checked on the joined text (one scan per forbidden character, not per header):
    each line must hold exactly one CR and one LF, its own terminator, and no NUL.
    """
    lines: list[str] = []
    user_agent = False
    for name, value in headers.items():
        is_agent = _names.get(name)
        if is_agent is None:
            is_agent = _check_name(name)
        user_agent = user_agent or is_agent
        lines.append(f"{name}: {value}\r\n")
    text = "".join(lines)
    count = len(lines)
    if text.count("\n") != count or text.count("\r") != count or "\0" in text:
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\0" in value:
                raise InvalidRequest(
                    f"request header {name!r} has a CR, LF or NUL in its value; not sent"
                )
    if not user_agent:
        text += _USER_AGENT
    return b"".join(
        (prefix, b"Content-Length: %d\r\n" % len(body), text.encode("utf-8"), b"\r\n", body)
    )


# --- response -----------------------------------------------------------------------------


@dataclass(slots=True)
class Response:
    """An answer as far as the webhook connector cares; the body is drained, not kept."""

    status: int
    reason: str
    retry_after: str | None
    location: bool
    keep_alive: bool


_STATUS = re.compile(rb"HTTP/1\.(\d) ([1-5]\d\d)(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\r\n")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)\r\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")

_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """Incremental parser of one connection's answers (RFC 9112), strict and bounded.

    ``feed`` returns the Response once the answer is complete (or once MAX_BODY of its body has
    been drained: then ``keep_alive`` is False), raises MalformedResponse, or returns None for
    more. Interim 1xx answers are skipped; 101 is an error (no upgrade was asked for).
    """

    __slots__ = ("_buf", "_scan", "_state", "_remaining", "_drained", "_budget", "_response")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.reset()

    def reset(self) -> None:
        self._buf.clear()
        self._scan = 0
        self._state = _HEAD
        self._remaining = 0
        self._drained = 0
        self._budget = MAX_HEAD
        self._response: Response | None = None

    @property
    def until_close(self) -> bool:
        """The body runs until the server closes the connection."""
        return self._state == _UNTIL_CLOSE

    def feed_eof(self) -> Response | None:
        """The server closed: the answer if its body was delimited by the close."""
        if self._state == _UNTIL_CLOSE and self._response is not None:
            self._state = _DONE
            return self._response
        return None

    def feed(self, data: bytes) -> Response | None:
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        pos, response = self._parse(buf)
        if response is not None:
            if pos < len(buf):
                response.keep_alive = False  # bytes beyond the answer: framing is off
            self._buf.clear()
        elif buf is self._buf:
            del self._buf[:pos]
        elif pos < len(buf):
            self._buf += buf[pos:]
        return response

    def _parse(self, buf: bytes | bytearray) -> tuple[int, Response | None]:
        pos, end = 0, len(buf)
        while True:
            state = self._state
            if state == _HEAD:
                stop = buf.find(b"\r\n\r\n", max(pos, self._scan))
                if stop < 0:
                    if end - pos > self._budget:
                        raise MalformedResponse(f"head larger than {MAX_HEAD // 1024} KiB")
                    self._scan = max(0, end - pos - 3)  # relative to the bytes kept
                    return pos, None
                self._budget -= stop + 4 - pos
                if self._budget < 0:
                    raise MalformedResponse(f"head larger than {MAX_HEAD // 1024} KiB")
                self._scan = 0
                self._head(buf, pos, stop + 2)
                pos = stop + 4
            elif state in (_LENGTH, _CHUNK_DATA, _UNTIL_CLOSE):
                take = end - pos if state == _UNTIL_CLOSE else min(self._remaining, end - pos)
                pos += take
                self._drained += take
                if self._drained > MAX_BODY:
                    return end, self._finish(keep_alive=False)
                if state == _UNTIL_CLOSE:
                    return pos, None
                self._remaining -= take
                if self._remaining:
                    return pos, None
                self._state = _CHUNK_END if state == _CHUNK_DATA else _DONE
            elif state == _CHUNK_LINE:
                stop = buf.find(b"\r\n", pos, pos + _MAX_CHUNK_LINE)
                if stop < 0:
                    if end - pos >= _MAX_CHUNK_LINE:
                        raise MalformedResponse("chunk size line too long")
                    return pos, None
                m = _CHUNK_SIZE.fullmatch(buf, pos, stop + 2)
                if m is None:
                    raise MalformedResponse("bad chunk size line")
                pos = stop + 2
                self._remaining = int(m[1], 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_END:
                if end - pos < 2:
                    if end > pos and buf[pos] != 13:
                        raise MalformedResponse("chunk data not followed by CRLF")
                    return pos, None
                if buf[pos] != 13 or buf[pos + 1] != 10:
                    raise MalformedResponse("chunk data not followed by CRLF")
                pos += 2
                self._state = _CHUNK_LINE
            elif state == _TRAILERS:
                stop = buf.find(b"\r\n", pos)
                if stop < 0 or stop + 2 - pos > self._budget:
                    if end - pos > self._budget:
                        raise MalformedResponse(f"trailers larger than {MAX_HEAD // 1024} KiB")
                    return pos, None
                if stop == pos:
                    pos += 2
                    self._state = _DONE
                else:
                    if _FIELD.fullmatch(buf, pos, stop + 2) is None:
                        raise MalformedResponse("bad trailer field")
                    self._budget -= stop + 2 - pos
                    pos = stop + 2
            if self._state == _DONE:
                return pos, self._finish(keep_alive=None)

    def _finish(self, keep_alive: bool | None) -> Response:
        response = self._response
        assert response is not None  # noqa: S101 - a state invariant
        if keep_alive is not None:
            response.keep_alive = keep_alive
        self._state = _DONE
        return response

    def _head(self, buf: bytes | bytearray, start: int, stop: int) -> None:
        """Parse one head (``buf[start:stop]``, ending in CRLF) and choose the body framing."""
        m = _STATUS.match(buf, start, stop)
        if m is None:
            raise MalformedResponse("bad status line")
        status = int(m[2])
        if 100 <= status < 200:
            if status == 101:
                raise MalformedResponse("101 Switching Protocols, but no upgrade was asked for")
            pos = m.end()
            while pos < stop:  # an interim answer: checked, then skipped
                field = _FIELD.match(buf, pos, stop)
                if field is None:
                    raise MalformedResponse("bad header field")
                pos = field.end()
            return
        http10 = m[1] == b"0"
        keep_alive = not http10
        lengths: list[bytes] = []
        codings: list[bytes] = []
        retry_after: str | None = None
        location = False
        pos = m.end()
        while pos < stop:
            field = _FIELD.match(buf, pos, stop)
            if field is None:
                raise MalformedResponse("bad header field")
            pos = field.end()
            name = field[1].lower()
            if name == b"content-length":
                lengths += field[2].split(b",")
            elif name == b"transfer-encoding":
                codings += field[2].lower().split(b",")
            elif name == b"connection":
                if b"close" in (t.strip() for t in field[2].lower().split(b",")):
                    keep_alive = False
            elif name == b"retry-after":
                if retry_after is None:
                    retry_after = field[2].decode("latin-1").strip()
            elif name == b"location":
                location = True
        reason = (m[3] or b"").decode("latin-1").strip()
        self._response = Response(status, reason, retry_after, location, keep_alive)
        self._frame(status, http10, lengths, codings)

    def _frame(self, status: int, http10: bool, lengths: list[bytes], codings: list[bytes]) -> None:
        """RFC 9112 §6.3: how the body of this answer ends."""
        response = self._response
        assert response is not None  # noqa: S101 - set by _head
        length: int | None = None
        if lengths:
            values = {v.strip() for v in lengths}
            if len(values) != 1:
                raise MalformedResponse("conflicting Content-Length values")
            (value,) = values
            if not value.isdigit() or len(value) > 18:
                raise MalformedResponse("invalid Content-Length")
            length = int(value)
        if status in (204, 304):
            if codings or length:
                response.keep_alive = False  # a body may follow that we will not read
            self._state = _DONE
            return
        if codings:
            if http10:
                raise MalformedResponse("Transfer-Encoding in an HTTP/1.0 response")
            codings = [c.strip() for c in codings]
            if b"" in codings or codings.count(b"chunked") > 1:
                raise MalformedResponse("invalid Transfer-Encoding")
            if lengths:
                response.keep_alive = False  # both framings: a smuggling pattern, never reuse
            if codings[-1] == b"chunked":
                self._state = _CHUNK_LINE
                self._budget = MAX_HEAD  # for trailers
            else:
                response.keep_alive = False
                self._state = _UNTIL_CLOSE
            return
        if length is None:
            response.keep_alive = False
            self._state = _UNTIL_CLOSE
        elif length > MAX_BODY:
            response.keep_alive = False  # answer now, do not read on
            self._state = _DONE
        else:
            self._remaining = length
            self._state = _LENGTH if length else _DONE
