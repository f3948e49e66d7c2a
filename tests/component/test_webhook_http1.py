"""The webhook transport's own HTTP/1.1 client against raw asyncio servers that misbehave.

Every server listens on 127.0.0.1 (one on 127.0.0.2, also loopback); names go through fake
resolvers that map them to loopback addresses. The servers speak HTTP by hand, so each test
controls the exact bytes of the answer: chunked bodies, interim answers, oversized heads,
connections closed at awkward moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
from aiohttp.abc import AbstractResolver, ResolveResult

from connectors.webhook.config import WebhookSettings
from connectors.webhook.http1 import (
    MAX_BODY,
    ConnectionPool,
    MalformedResponse,
    Origin,
    Response,
    ResponseParser,
    encode_request,
    request_prefix,
)
from connectors.webhook.netguard import DestinationRefused
from connectors.webhook.transport import DeliveryFailed, WebhookTransport
from tests.webhook_support import HOST, LoopbackResolver, server_tls

pytestmark = pytest.mark.component

LOOPBACK = WebhookSettings.model_validate({"allowed_networks": ["127.0.0.0/8"], "allow_http": True})
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
HEADERS = {"Content-Type": "application/json", "webhook-id": "evt_1"}


# --- a raw HTTP server ----------------------------------------------------------------------


@dataclass
class Request:
    connection: int  # 1-based number of the connection it came on
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        m = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)\r\n", self.head, re.IGNORECASE)
        return None if m is None else m[1].decode()


Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@dataclass
class RawServer:
    """A TCP (or TLS) server on ``host``; ``handler`` runs once per connection."""

    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0
    tls: ssl.SSLContext | None = None
    connections: int = 0
    peers: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}/in"

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        self.peers.append(writer.get_extra_info("peername")[0])
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            await self.handler(self, reader, writer, self.connections)
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()

    async def read_request(self, reader: asyncio.StreamReader, number: int) -> Request | None:
        """The next request on this connection, or None when the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        m = re.search(rb"\r\ncontent-length: (\d+)\r\n", head, re.IGNORECASE)
        body = await reader.readexactly(int(m[1])) if m else b""
        request = Request(number, head, body)
        self.requests.append(request)
        return request


def answering(*answers: bytes, then: bytes = NO_CONTENT) -> Handler:
    """Answer each request on a connection in turn (shared across connections), then ``then``."""
    queue = list(answers)

    async def handle(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read_request(reader, n) is not None:
            writer.write(queue.pop(0) if queue else then)
            await writer.drain()

    return handle


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    started: list[RawServer] = []

    async def start(handler: Handler, **kwargs: Any) -> RawServer:
        server = await RawServer(handler, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def transport_for() -> AsyncIterator[Callable[..., WebhookTransport]]:
    made: list[WebhookTransport] = []

    def make(
        resolver: AbstractResolver | None = None,
        settings: WebhookSettings = LOOPBACK,
        **update: Any,
    ) -> WebhookTransport:
        transport = WebhookTransport(
            settings.model_copy(update=update), inner_resolver=resolver or LoopbackResolver()
        )
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()
        assert transport.open_connections == 0


async def post(transport: WebhookTransport, url: str, **headers: str) -> Any:
    return await transport.post(url, b'{"n":1}', {**HEADERS, **headers}, None)


# --- what a request looks like --------------------------------------------------------------


async def test_the_request_is_plain_http11_with_host_length_and_user_agent(
    serve: Any, transport_for: Any
) -> None:
    server = await serve(answering())
    transport = transport_for()
    await transport.post(f"{server.url}?k=v%20w", b"[1,2]", {"X-Key": "abc"}, None)
    await transport.post(server.url, b"{}", {"User-Agent": "theirs/1"}, None)
    first, second = server.requests
    lines = first.head.split(b"\r\n")
    assert lines[0] == b"POST /in?k=v%20w HTTP/1.1"
    assert first.header("Host") == f"{HOST}:{server.port}"
    assert first.header("Content-Length") == "5"
    assert first.header("X-Key") == "abc"
    assert re.fullmatch(r"siem-export/\S+", first.header("User-Agent") or "")
    assert first.header("Expect") is None
    assert first.body == b"[1,2]"
    assert second.header("User-Agent") == "theirs/1"
    assert second.head.lower().count(b"user-agent") == 1


def test_the_host_header_leaves_out_default_ports_and_brackets_ipv6() -> None:
    assert request_prefix("a.example", 443, 443, "/") == (b"POST / HTTP/1.1\r\nHost: a.example\r\n")
    assert request_prefix("::1", 8443, 443, "/x?y") == b"POST /x?y HTTP/1.1\r\nHost: [::1]:8443\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "v\r\nInjected: 1"},
        {"X-A": "v\nInjected: 1"},
        {"X-A": "v\rx"},
        {"X-A": "v\0"},
        {"X-A: b\r\nX-B": "v"},
        {"X A": "v"},
        {"Content-Length": "0"},
        {"Host": "elsewhere.example"},
    ],
)
async def test_header_injection_is_refused_before_anything_is_sent(
    serve: Any, transport_for: Any, headers: dict[str, str]
) -> None:
    server = await serve(answering())
    transport = transport_for()
    with pytest.raises(DestinationRefused) as info:
        await transport.post(server.url, b"{}", {**HEADERS, **headers}, None)
    assert "header" in info.value.reason
    assert "Injected" not in info.value.reason  # values are secrets: never echoed
    assert server.connections == 0
    assert transport.open_connections == 0


# --- answers and body framing ---------------------------------------------------------------


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n"
)
WITH_LENGTH = b"HTTP/1.1 202 Accepted\r\nContent-Length: 11\r\n\r\nhello world"


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        (CHUNKED, 200, "OK"),
        (WITH_LENGTH, 202, "Accepted"),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, ""),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, "No Content"),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            + WITH_LENGTH,
            202,
            "Accepted",
        ),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", 304, "Not Modified"),
    ],
    ids=["chunked-trailers", "content-length", "empty-reason", "100-continue", "103", "304"],
)
async def test_delimited_answers_keep_the_connection(
    serve: Any, transport_for: Any, answer: bytes, status: int, reason: str
) -> None:
    server = await serve(answering(answer, answer, answer))
    transport = transport_for()
    for _ in range(3):
        got = await post(transport, server.url)
        assert (got.status, got.reason, got.location) == (status, reason, False)
    assert len(server.requests) == 3
    assert server.connections == 1


CLOSES = [
    b"HTTP/1.1 200 OK\r\n\r\nread until the server closes",  # no Content-Length, no chunked
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok+extra bytes",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
]


@pytest.mark.parametrize(
    "answer", CLOSES, ids=["until-close", "http10", "connection-close", "extra", "te-and-cl"]
)
async def test_answers_that_cannot_keep_the_connection(
    serve: Any, transport_for: Any, answer: bytes
) -> None:
    async def once(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader, n)
        writer.write(answer)
        await writer.drain()
        if b"until the server closes" not in answer:
            await server.release.wait()  # keeps it open: the client must close it

    server = await serve(once)
    transport = transport_for()
    assert (await post(transport, server.url)).status == 200
    assert (await post(transport, server.url)).status == 200
    assert server.connections == 2
    assert len(server.requests) == 2


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
async def test_a_body_over_64_kib_is_answered_and_its_connection_closed(
    serve: Any, transport_for: Any, framing: str
) -> None:
    big = b"x" * (MAX_BODY * 3)
    if framing == "content-length":
        answer = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    elif framing == "chunked":
        chunk = b"%x\r\n%s\r\n" % (len(big) // 3, big[: len(big) // 3])
        answer = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
        answer += b"0\r\n\r\n"
    else:
        answer = b"HTTP/1.1 500 Oops\r\n\r\n" + big

    async def endless(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader, n)
        writer.write(answer)
        await writer.drain()
        await server.release.wait()  # never closes: reading to the end would hang

    server = await serve(endless)
    transport = transport_for(timeout_seconds=3.0)
    began = time.monotonic()
    first = await post(transport, server.url)
    second = await post(transport, server.url)
    assert time.monotonic() - began < 2
    assert (first.status, first.reason, second.status) == (500, "Oops", 500)
    assert server.connections == 2


async def test_redirects_and_retry_after_are_answers(serve: Any, transport_for: Any) -> None:
    server = await serve(
        answering(
            b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 429 Too Many\r\nRetry-After:  12 \r\nContent-Length: 0\r\n\r\n",
        )
    )
    transport = transport_for()
    moved = await post(transport, server.url)
    assert (moved.status, moved.location, moved.retry_after) == (302, True, None)
    busy = await post(transport, server.url)
    assert (busy.status, busy.reason, busy.retry_after) == (429, "Too Many", 12)
    assert len(server.requests) == 2  # the redirect was not followed


# --- malformed answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
        (b"ICY 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "head larger than 64 KiB"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "bad header field"),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", "bad header field"),
        (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "bad header field"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX", "not followed by"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101"),
    ],
)
async def test_malformed_answers_are_no_answer(
    serve: Any, transport_for: Any, answer: bytes, detail: str
) -> None:
    async def once(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader, n)
        writer.write(answer)
        await writer.drain()
        await server.release.wait()

    server = await serve(once)
    transport = transport_for()
    with pytest.raises(DeliveryFailed) as info:
        await post(transport, server.url)
    assert info.value.reason.startswith("malformed response: ")
    assert detail in info.value.reason
    assert len(server.requests) == 1  # never retried
    await asyncio.sleep(0.01)
    assert transport.open_connections == 0


@pytest.mark.parametrize(
    "answer", [CHUNKED, WITH_LENGTH, b"HTTP/1.1 100 Continue\r\n\r\n" + NO_CONTENT]
)
def test_the_parser_takes_an_answer_one_byte_at_a_time(answer: bytes) -> None:
    parser = ResponseParser()
    results = [parser.feed(answer[i : i + 1]) for i in range(len(answer))]
    assert results[:-1] == [None] * (len(answer) - 1)
    final = results[-1]
    assert isinstance(final, Response)
    assert final.keep_alive


def test_the_parser_bounds_a_head_that_never_ends() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(MalformedResponse, match="head larger"):
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"z" * 1000 + b"\r\n")


# --- connections ----------------------------------------------------------------------------


async def test_one_connection_carries_every_request_when_the_limit_is_one(
    serve: Any, transport_for: Any
) -> None:
    server = await serve(answering())
    transport = transport_for(max_connections_per_host=1)
    answers = await asyncio.gather(*(post(transport, server.url) for _ in range(30)))
    assert [a.status for a in answers] == [204] * 30
    assert len(server.requests) == 30
    assert server.connections == 1
    assert transport.open_connections == 1


async def test_turns_are_fifo_and_the_wait_is_not_part_of_the_timeout(
    serve: Any, transport_for: Any
) -> None:
    async def slow(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        while await server.read_request(reader, n) is not None:
            await asyncio.sleep(0.1)
            writer.write(NO_CONTENT)

    server = await serve(slow)
    transport = transport_for(max_connections_per_host=1, timeout_seconds=0.5)

    async def lane(name: str, count: int) -> None:
        for number in range(count):
            await post(transport, server.url, **{"X-Seq": f"{name}{number}"})

    # "a" re-sends at once each time; "b".."f" queued behind its first request must not be
    # overtaken by it. Ten requests of 0.1 s through one connection: the last waits ~0.9 s for
    # its turn, longer than the 0.5 s timeout, and still succeeds.
    first = asyncio.create_task(lane("a", 5))
    await asyncio.sleep(0.02)
    others = []
    for name in "bcdef":
        others.append(asyncio.create_task(lane(name, 1)))
        await asyncio.sleep(0)
    await asyncio.gather(first, *others)
    order = [r.header("X-Seq") for r in server.requests]
    assert order == ["a0", "b0", "c0", "d0", "e0", "f0", "a1", "a2", "a3", "a4"]


async def test_an_idle_connection_closed_by_the_server_is_dropped_at_once(
    serve: Any, transport_for: Any
) -> None:
    async def one_then_close(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader, n)
        writer.write(NO_CONTENT)
        await writer.drain()
        await asyncio.sleep(0.05)  # an idle timeout on the server's side

    server = await serve(one_then_close)
    transport = transport_for()
    assert (await post(transport, server.url)).status == 204
    assert transport.open_connections == 1
    for _ in range(100):
        if transport.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert transport.open_connections == 0
    assert (await post(transport, server.url)).status == 204
    assert (server.connections, len(server.requests)) == (2, 2)  # no retry was needed


async def test_a_keep_alive_race_is_retried_once_on_a_fresh_connection(
    serve: Any, transport_for: Any
) -> None:
    async def closes_on_the_second_request(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        number = 0
        while await server.read_request(reader, n) is not None:
            number += 1
            if n == 1 and number == 2:
                return  # closed "at the same moment" the client reused the connection
            writer.write(NO_CONTENT)
            await writer.drain()

    server = await serve(closes_on_the_second_request)
    transport = transport_for()
    assert (await post(transport, server.url, **{"X-Seq": "1"})).status == 204
    assert (await post(transport, server.url, **{"X-Seq": "2"})).status == 204
    assert [(r.connection, r.header("X-Seq")) for r in server.requests] == [
        (1, "1"),
        (1, "2"),
        (2, "2"),  # the same request again: at-least-once
    ]


async def test_a_connection_closed_mid_answer_is_no_answer_and_not_retried(
    serve: Any, transport_for: Any
) -> None:
    async def breaks_off(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        number = 0
        while await server.read_request(reader, n) is not None:
            number += 1
            if number == 2:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
                await writer.drain()
                return
            writer.write(NO_CONTENT)
            await writer.drain()

    server = await serve(breaks_off)
    transport = transport_for()
    assert (await post(transport, server.url)).status == 204
    with pytest.raises(DeliveryFailed) as info:
        await post(transport, server.url)  # on the reused connection
    assert "in the middle of its answer" in info.value.reason
    assert len(server.requests) == 2
    assert server.connections == 1


async def test_a_fresh_connection_closed_without_answer_is_not_retried(
    serve: Any, transport_for: Any
) -> None:
    async def hangs_up(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader, n)

    server = await serve(hangs_up)
    transport = transport_for()
    with pytest.raises(DeliveryFailed) as info:
        await post(transport, server.url)
    assert "closed the connection without answering" in info.value.reason
    assert len(server.requests) == 1


async def test_no_answer_times_out_within_the_timeout(serve: Any, transport_for: Any) -> None:
    async def silent(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await server.read_request(reader, n)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # a start, then nothing
        await server.release.wait()

    server = await serve(silent)
    transport = transport_for(timeout_seconds=0.3)
    began = time.monotonic()
    with pytest.raises(DeliveryFailed) as info:
        await post(transport, server.url)
    assert 0.25 < time.monotonic() - began < 1.0
    assert info.value.reason == "no answer within 0.3 s (timeout)"
    assert len(server.requests) == 1
    await asyncio.sleep(0.01)
    assert transport.open_connections == 0  # a timed-out connection is closed


async def test_connection_refused(transport_for: Any) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    transport = transport_for()
    with pytest.raises(DeliveryFailed) as info:
        await post(transport, f"http://{HOST}:{port}/in")
    assert info.value.reason.startswith("connection failed: ")
    assert transport.open_connections == 0


async def test_idle_connections_are_closed_after_the_idle_timeout(serve: Any) -> None:
    server = await serve(answering())
    loop_origin = Origin("http", "127.0.0.1", server.port, None)

    async def resolve(host: str, port: int) -> Sequence[tuple[socket.AddressFamily, str]]:
        return [(socket.AF_INET, host)]

    pool = ConnectionPool(
        resolve,
        max_connections=4,
        max_connections_per_host=4,
        timeout=2,
        connect_timeout=1,
        idle_timeout=0.2,
    )
    try:
        host = pool.host(loop_origin)
        prefix = request_prefix("127.0.0.1", server.port, 80, "/in")
        await asyncio.gather(*(pool.request(host, encode_request(prefix, {}, b"")) for _ in "ab"))
        assert pool.open == 2
        await asyncio.sleep(0.5)
        assert pool.open == 0
    finally:
        await pool.close()


async def test_the_process_limit_closes_idle_connections_of_other_hosts(serve: Any) -> None:
    servers = [await serve(answering()) for _ in range(3)]

    async def resolve(host: str, port: int) -> Sequence[tuple[socket.AddressFamily, str]]:
        return [(socket.AF_INET, host)]

    pool = ConnectionPool(
        resolve, max_connections=2, max_connections_per_host=2, timeout=2, connect_timeout=1
    )
    try:
        for server in servers:
            host = pool.host(Origin("http", "127.0.0.1", server.port, None))
            prefix = request_prefix("127.0.0.1", server.port, 80, "/in")
            assert (await pool.request(host, encode_request(prefix, {}, b"x"))).status == 204
            assert pool.open <= 2
    finally:
        await pool.close()
    assert pool.open == 0


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_tls_with_sni_and_verification(
    serve: Any, transport_for: Any, ca: trustme.CA
) -> None:
    server = await serve(answering(), tls=server_tls(ca))
    transport = transport_for()
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    for _ in range(3):
        assert (await transport.post(server.url, b"{}", HEADERS, client_tls)).status == 204
    assert server.connections == 1


async def test_tls_hostname_mismatch_is_a_tls_failure(
    serve: Any, transport_for: Any, ca: trustme.CA
) -> None:
    other = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.test").configure_cert(other)
    server = await serve(answering(), tls=other)
    transport = transport_for()
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    with pytest.raises(DeliveryFailed) as info:
        await transport.post(server.url, b"{}", HEADERS, client_tls)
    assert info.value.reason.startswith("TLS failure: ")
    assert "certificate verify failed" in info.value.reason
    assert server.requests == []


# --- the SSRF guard -------------------------------------------------------------------------


@dataclass
class FixedResolver(AbstractResolver):
    """Resolves every name to ``addresses``, in that order; records the names asked."""

    addresses: list[str]
    names: list[str] = field(default_factory=list)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.names.append(host)
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_resolving_to_a_refused_address_is_refused_before_connecting(
    serve: Any, transport_for: Any
) -> None:
    server = await serve(answering())
    resolver = FixedResolver(["127.0.0.1"])
    transport = transport_for(resolver, allowed_networks=())
    with pytest.raises(DestinationRefused) as info:
        await post(transport, server.url)
    assert info.value.reason.startswith(f"{HOST} resolves to 127.0.0.1, a loopback address")
    assert resolver.names == [HOST]
    assert server.connections == 0
    with pytest.raises(DestinationRefused):  # a refusal is never cached as an answer
        await post(transport, server.url)
    assert resolver.names == [HOST, HOST]


async def test_an_ip_literal_is_refused_without_resolving(serve: Any, transport_for: Any) -> None:
    server = await serve(answering())
    resolver = FixedResolver(["127.0.0.1"])
    transport = transport_for(resolver, allowed_networks=())
    with pytest.raises(DestinationRefused) as info:
        await post(transport, f"http://127.0.0.1:{server.port}/in")
    assert "127.0.0.1 is a loopback address" in info.value.reason
    assert (resolver.names, server.connections) == ([], 0)


async def test_the_connection_goes_to_exactly_the_checked_address(
    serve: Any, transport_for: Any
) -> None:
    allowed = await serve(answering(), host="127.0.0.2")
    # A decoy on the refused address, same port: it must never see a connection.
    decoy = await serve(answering(), host="127.0.0.1", port=allowed.port)
    resolver = FixedResolver(["127.0.0.1", "127.0.0.2"])
    transport = transport_for(
        resolver,
        settings=WebhookSettings.model_validate(
            {"allowed_networks": ["127.0.0.2/32"], "allow_http": True}
        ),
    )
    for _ in range(3):
        assert (await post(transport, allowed.url)).status == 204
    assert allowed.connections == 1
    assert decoy.connections == 0
    assert resolver.names == [HOST]  # resolved once: answers are cached (checked ones only)


async def test_addresses_are_tried_in_order_when_one_does_not_connect(
    serve: Any, transport_for: Any
) -> None:
    server = await serve(answering(), host="127.0.0.3")
    resolver = FixedResolver(["127.0.0.2", "127.0.0.3"])  # nothing listens on .2
    transport = transport_for(resolver)
    assert (await post(transport, f"http://{HOST}:{server.port}/in")).status == 204
    assert server.connections == 1
