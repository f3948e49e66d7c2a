"""A lean HTTP/1.1 client for the webhook transport: connection pool, protocol, response parser.

Who calls it: ``connectors.webhook.transport.WebhookTransport``, once per POST. The transport
decides *where* a request may go (the SSRF guard) and hands this module a ``resolve`` callback
that returns checked numeric addresses; this module only connects to those (with
``AI_NUMERICHOST``, so nothing is looked up again), speaks HTTP/1.1 and answers with a
``Response`` or raises. Why not aiohttp: the connector is CPU-bound with one event per POST,
and aiohttp's client costs ~3-4x the CPU of a plain ``asyncio.Protocol`` per request.

The request path, per POST: wait for a turn (FIFO per origin, then FIFO for the process; not
part of the timeout), take the most recently used idle connection of the origin or open one,
write head and body in one write, parse the answer as it arrives (RFC 9112, bounded), then
keep the connection for the next request or close it. Only connect + send + answer count
against ``timeout``. If a *reused* connection fails before any byte of the answer arrived (the
server closed the idle keep-alive connection at that moment), the request is sent once more on
a fresh connection: at-least-once delivery, receivers drop duplicates by ``webhook-id``.

The bytes on the wire (request encoding, the response parser, the errors) are in
``connectors.webhook.http1_wire``; this module holds the connections and the pool.

Exceptions::

    HttpError                 no usable answer; ``reason`` is the whole message
     ├── ConnectFailed        no connection: no address, refused, unreachable
     ├── TlsFailed            handshake, certificate or TLS alert
     ├── RequestTimeout       no (complete) answer within the time budget
     ├── ConnectionClosed     closed or reset before the answer was complete
     └── MalformedResponse    the answer breaks RFC 9112 or our bounds
    InvalidRequest (ValueError)  a header would inject (CR, LF, NUL) or is the client's own
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass

from connectors.webhook.http1_wire import (
    MAX_BODY,
    MAX_HEAD,
    ConnectFailed,
    ConnectionClosed,
    HttpError,
    InvalidRequest,
    MalformedResponse,
    RequestTimeout,
    Resolve,
    Response,
    ResponseParser,
    TlsFailed,
    encode_request,
    request_prefix,
)

__all__ = [
    "ConnectFailed",
    "ConnectionClosed",
    "ConnectionPool",
    "HostPool",
    "HttpError",
    "InvalidRequest",
    "MAX_BODY",
    "MAX_HEAD",
    "MalformedResponse",
    "Origin",
    "RequestTimeout",
    "Resolve",
    "Response",
    "ResponseParser",
    "TlsFailed",
    "encode_request",
    "request_prefix",
]


# --- connections --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go: a pool per origin. ``tls`` is None for plain http."""

    scheme: str
    host: str  # ASCII: IDNA-encoded name or IP literal (no brackets)
    port: int
    tls: ssl.SSLContext | None


def _lost_error(exc: BaseException | None, answered: bool) -> HttpError:
    if isinstance(exc, ssl.SSLError):
        return TlsFailed(f"TLS failure: {_text(exc)}")
    if exc is not None:
        reason = f"connection failed: {_text(exc)}"
    elif answered:
        reason = "connection failed: the server closed the connection in the middle of its answer"
    else:
        reason = "connection failed: the server closed the connection without answering"
    return ConnectionClosed(reason, answered=answered)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: at most one request at a time (no pipelining)."""

    __slots__ = (
        "host",
        "transport",
        "parser",
        "waiter",
        "answered",
        "reused",
        "counted",
        "closed",
        "idle_since",
        "lost",
    )

    def __init__(self, host: HostPool) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.waiter: asyncio.Future[Response] | None = None
        self.answered = False  # a byte of the current answer arrived
        self.reused = False  # it completed an exchange before
        self.counted = False  # it holds a place in the pool's counts
        self.closed = False
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] | None = None  # only while the pool closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - stream sockets only
        self.transport = transport
        self.host.pool.alive.add(self)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            self.abort()  # unsolicited bytes: this connection's framing cannot be trusted
            return
        self.answered = True
        try:
            response = self.parser.feed(data)
        except MalformedResponse as exc:
            self._fail(exc)
            self.abort()
            return
        if response is not None:
            self._answer(response)

    def eof_received(self) -> bool:
        if self.waiter is not None:
            response = self.parser.feed_eof()
            if response is not None:
                self._answer(response)
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None:
            response = self.parser.feed_eof() if exc is None else None
            if response is not None:
                self._answer(response)
            else:
                self._fail(_lost_error(exc, self.answered))
        self.host.forget(self)
        self.host.pool.alive.discard(self)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def send(self, payload: bytes, waiter: asyncio.Future[Response]) -> None:
        self.waiter = waiter
        self.answered = False
        self.parser.reset()
        if self.closed or self.transport is None or self.transport.is_closing():
            self._fail(_lost_error(None, False))
        else:
            self.transport.write(payload)

    def time_out(self, seconds: float) -> None:
        self._fail(RequestTimeout(f"no answer within {seconds:g} s (timeout)"))
        self.abort()

    def reusable(self) -> bool:
        transport = self.transport
        return (
            not self.closed
            and transport is not None
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
        )

    def close(self) -> None:
        """Orderly close (TLS close_notify); the pool stops counting it at once."""
        self.host.forget(self)
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        self.host.forget(self)
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def _answer(self, response: Response) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, error: HttpError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class HostPool:
    """The connections of one origin: its turns (FIFO) and its idle keep-alive connections."""

    def __init__(self, origin: Origin, limit: int, pool: ConnectionPool) -> None:
        self.origin = origin
        self.turns = asyncio.Semaphore(limit)
        self.limit = limit
        self.idle: deque[_Connection] = deque()  # oldest first
        self.open = 0  # connections counted against the limits, connecting ones included
        self.pool = pool

    def take_idle(self) -> _Connection | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.reusable():
                return conn
            conn.abort()
        return None

    def put_idle(self, conn: _Connection) -> None:
        conn.idle_since = self.pool.loop.time()
        self.idle.append(conn)
        self.pool.idle_added(self)

    def forget(self, conn: _Connection) -> None:
        """Stop counting ``conn`` (closing, closed or lost); idempotent."""
        if conn.counted:
            conn.counted = False
            self.open -= 1
            self.pool.open -= 1
            if conn in self.idle:
                self.idle.remove(conn)


class _Stale(Exception):
    """A reused connection failed before any byte of the answer: send once more, fresh."""


class ConnectionPool:
    """Keep-alive connections per origin, bounded per origin and for the process.

    Create it inside the running event loop; ``close`` it in the same loop.
    """

    def __init__(
        self,
        resolve: Resolve,
        *,
        max_connections: int,
        max_connections_per_host: int,
        timeout: float,
        connect_timeout: float,
        idle_timeout: float = 15.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.open = 0  # counted connections: connecting, busy or idle
        self.alive: set[_Connection] = set()  # every connection not yet lost, closing included
        self._resolve = resolve
        self._max = max_connections
        self._per_host = max_connections_per_host
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._turns = asyncio.Semaphore(max_connections)
        self._hosts: dict[Origin, HostPool] = {}
        self._with_idle: set[HostPool] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def host(self, origin: Origin) -> HostPool:
        pool = self._hosts.get(origin)
        if pool is None:
            pool = self._hosts[origin] = HostPool(origin, self._per_host, self)
        return pool

    async def request(self, host: HostPool, payload: bytes) -> Response:
        """Send ``payload`` (a whole request) to ``host``'s origin; its answer or an HttpError."""
        if self._closed:
            raise ConnectFailed("connection failed: the HTTP client is closed")
        async with host.turns, self._turns:
            deadline = self.loop.time() + self._timeout
            conn = host.take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, payload, deadline)
                except _Stale:
                    pass
            conn = await self._dial(host, deadline)
            return await self._exchange(conn, payload, deadline)

    async def _exchange(self, conn: _Connection, payload: bytes, deadline: float) -> Response:
        waiter: asyncio.Future[Response] = self.loop.create_future()
        conn.send(payload, waiter)
        timer = self.loop.call_at(deadline, conn.time_out, self._timeout)
        try:
            response = await waiter
        except ConnectionClosed as exc:
            conn.abort()
            if conn.reused and not exc.answered:
                raise _Stale from exc
            raise
        except BaseException:
            conn.abort()  # timeout, malformed answer, TLS failure, cancelled: never reuse
            raise
        finally:
            timer.cancel()
        if response.keep_alive and conn.reusable() and not self._closed:
            conn.reused = True
            conn.host.put_idle(conn)
        else:
            conn.close()
        return response

    async def _dial(self, host: HostPool, deadline: float) -> _Connection:
        self._make_room(host)
        host.open += 1
        self.open += 1
        try:
            conn = await self._connect(host, deadline)
        except BaseException:
            host.open -= 1
            self.open -= 1
            raise
        conn.counted = True
        return conn

    async def _connect(self, host: HostPool, deadline: float) -> _Connection:
        origin = host.origin
        remaining = deadline - self.loop.time()
        budget = min(self._connect_timeout, remaining)
        try:
            async with asyncio.timeout(budget):
                try:
                    addresses = await self._resolve(origin.host, origin.port)
                except OSError as exc:
                    raise ConnectFailed(
                        f"connection failed: cannot resolve {origin.host}: {_text(exc)}"
                    ) from exc
                failures: list[str] = []
                for family, address in addresses:
                    try:
                        _, conn = await self.loop.create_connection(
                            lambda: _Connection(host),
                            address,
                            origin.port,
                            family=family,
                            flags=socket.AI_NUMERICHOST,
                            ssl=origin.tls,
                            server_hostname=origin.host if origin.tls is not None else None,
                        )
                    except ssl.SSLError as exc:
                        raise TlsFailed(f"TLS failure: {_text(exc)}") from exc
                    except OSError as exc:
                        failures.append(f"{address}: {_text(exc)}")
                        continue
                    if conn.closed:
                        failures.append(f"{address}: closed at once")
                        continue
                    return conn
        except TimeoutError as exc:
            if budget < self._connect_timeout:
                raise RequestTimeout(f"no answer within {self._timeout:g} s (timeout)") from exc
            raise RequestTimeout(
                f"no connection within {self._connect_timeout:g} s (connect timeout)"
            ) from exc
        raise ConnectFailed(
            f"connection failed: cannot connect to {origin.host}:{origin.port}: "
            + ("; ".join(failures) or "no address")
        )

    def _make_room(self, host: HostPool) -> None:
        """Close idle connections so a new one stays within both limits."""
        while host.open >= host.limit and host.idle:
            host.idle[0].close()
        while self.open >= self._max:
            oldest: HostPool | None = None
            for other in self._with_idle:
                if other.idle and (
                    oldest is None or other.idle[0].idle_since < oldest.idle[0].idle_since
                ):
                    oldest = other
            if oldest is None:
                return  # every connection is busy: the turns bound that, so it cannot last
            oldest.idle[0].close()

    def idle_added(self, host: HostPool) -> None:
        self._with_idle.add(host)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._idle_timeout / 4, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        expired = self.loop.time() - self._idle_timeout
        for host in list(self._with_idle):
            while host.idle and host.idle[0].idle_since <= expired:
                host.idle[0].close()
            if not host.idle:
                self._with_idle.discard(host)
        if self._with_idle and not self._closed:
            self._sweeper = self.loop.call_later(self._idle_timeout / 4, self._sweep)

    async def close(self, grace: float = 2.0) -> None:
        """Close every connection (TLS close_notify, then abort what lingers past ``grace``)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._with_idle.clear()
        conns = list(self.alive)
        waits: list[asyncio.Future[None]] = []
        for conn in conns:
            conn.lost = self.loop.create_future()
            waits.append(conn.lost)
            conn.close()
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            if pending:
                for conn in conns:
                    if not conn.closed and conn.transport is not None:
                        conn.transport.abort()
                await asyncio.wait(pending, timeout=grace)


def _text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
