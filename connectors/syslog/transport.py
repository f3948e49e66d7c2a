"""Connections to one syslog collector: UDP, TCP, TLS (RFC 5425) and RELP.

Who calls it: the syslog sink (``connectors.syslog.sink``), which keeps one :class:`Link` per
collector (destination) and shares it between the tenants that send there. A link takes a
tenant's batch of already framed messages and answers when they count as delivered:

* **UDP** (:class:`UdpLink`): when the datagrams were handed to the kernel. Nothing comes
  back from a syslog receiver over UDP, so this is lossy by nature (a full receive buffer, a
  lost fragment or a collector restart loses datagrams silently); use TLS or RELP for audit.
* **TCP and TLS** (:class:`StreamLink`): syslog over a stream has no acknowledgements either,
  and bytes written to a socket are not yet delivered: when a collector restarts, what was
  still in its kernel's receive buffer (or in flight) is discarded. So a batch is confirmed in
  three steps: (1) written and flushed to the kernel, (2) taken by the collector's TCP stack
  (our socket's send queue, user space and kernel, observed empty after the write), and
  (3) the connection stayed up for ``confirm_seconds`` after that. A collector that goes away
  closes or resets the connection within that time; everything not confirmed then fails and
  is sent again (from Kafka, by the engine) after reconnecting: duplicates possible, no loss.
  What remains is a collector that took the bytes into its TCP buffer and then hung for
  longer than ``confirm_seconds`` before dying without reading them: only RELP closes that.
* **RELP** (:class:`RelpLink`): the collector answers each message once it has taken
  responsibility for it (rsyslog's imrelp answers after its queue or action has it); a batch
  is confirmed when every message of it was answered ``200``.

A link that fails (write error, timeout, connection closed by the collector) is *lost*: every
batch not yet confirmed fails with a retriable ``SinkError`` naming the collector and the
reason, and the sink opens a new link on the next batch. Connecting is bounded by
``connect_timeout_seconds``, each write by ``write_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import ssl
import struct
import termios
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from connectors.syslog.config import SyslogDestination, SyslogSettings
from connectors.syslog.relp import RelpClient, RelpError
from streams.errors import SinkError

_log = logging.getLogger(__name__)

_WRITE_HIGH_WATER = 256 * 1024
"""Bytes buffered in user space before a write waits for the socket (per connection)."""

_UDP_HIGH_WATER = 1024 * 1024
"""Bytes of datagrams asyncio may hold when the kernel's send buffer is full."""


class Link(Protocol):
    """One open connection (or UDP socket) to a collector."""

    endpoint: str
    last_used: float

    @property
    def lost(self) -> str | None:
        """Why the link failed, or None while it is usable."""
        ...

    def busy(self) -> bool:
        """Whether batches await confirmation (an idle link may be closed)."""
        ...

    async def send(self, frames: Sequence[bytes]) -> asyncio.Future[None] | None:
        """Send framed messages; None when delivered now, else a future for confirmation.

        Raises ``SinkError`` (retriable) when the messages could not be sent; the link is then
        lost. The future fails with ``SinkError`` when the link is lost before confirming.
        """
        ...

    async def close(self) -> None:
        """Close gracefully (bounded); batches still unconfirmed fail."""
        ...


async def open_link(
    dest: SyslogDestination, settings: SyslogSettings, tls: ssl.SSLContext | None
) -> Link:
    """Connect to ``dest``; ``SinkError`` (retriable) naming the collector if that fails."""
    endpoint = dest.endpoint()
    host, port = dest.host, dest.effective_port
    timeout = settings.connect_timeout_seconds
    server_name = (dest.server_name or dest.host) if tls is not None else None
    try:
        if dest.transport == "udp":
            return await asyncio.wait_for(UdpLink.open(endpoint, host, port), timeout)
        if dest.transport in ("relp", "relp_tls"):
            client = await RelpClient.open(
                host,
                port,
                ssl=tls,
                server_hostname=server_name,
                connect_timeout=timeout,
                window=settings.relp_window,
            )
            return RelpLink(endpoint, client, settings.write_timeout_seconds)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=tls,
                server_hostname=server_name,
                ssl_handshake_timeout=timeout if tls is not None else None,
            ),
            timeout,
        )
    except RelpError as exc:
        raise SinkError(str(exc), retriable=True) from None
    except TimeoutError:
        raise SinkError(f"{endpoint}: no connection within {timeout:g} s", retriable=True) from None
    except ssl.SSLCertVerificationError as exc:
        raise SinkError(
            f"{endpoint}: TLS certificate verification failed: {exc.verify_message}",
            retriable=True,
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(f"{endpoint}: cannot connect: {_describe(exc)}", retriable=True) from None
    return StreamLink(endpoint, reader, writer, settings)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _failed_future(future: asyncio.Future[None], error: SinkError) -> None:
    if not future.done():
        future.set_exception(error)
        # Whoever holds the future learns of the failure through it; nobody else must be
        # warned that the exception was "never retrieved".
        future.exception()


# --- UDP -------------------------------------------------------------------------------------


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: str | None = None

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier datagram (port unreachable: nobody listens).
        self.error = _describe(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = _describe(exc)


class UdpLink:
    """Datagrams to one collector (one message per datagram, RFC 5426)."""

    def __init__(
        self, endpoint: str, transport: asyncio.DatagramTransport, protocol: _UdpProtocol
    ) -> None:
        self.endpoint = endpoint
        self.last_used = time.monotonic()
        self._transport = transport
        self._protocol = protocol
        self._lost: str | None = None

    @classmethod
    async def open(cls, endpoint: str, host: str, port: int) -> UdpLink:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _UdpProtocol, remote_addr=(host, port)
        )
        return cls(endpoint, transport, protocol)

    @property
    def lost(self) -> str | None:
        return self._lost

    def busy(self) -> bool:
        return False

    async def send(self, frames: Sequence[bytes]) -> asyncio.Future[None] | None:
        self.last_used = time.monotonic()
        if self._protocol.error is not None:
            # The collector's host said nobody listens: report it once, then start afresh.
            self._lost = f"{self.endpoint}: {self._protocol.error}"
            self._transport.abort()
            raise SinkError(self._lost, retriable=True)
        sendto = self._transport.sendto
        try:
            for frame in frames:
                sendto(frame)
                if self._buffered() > _UDP_HIGH_WATER:
                    await self._wait_buffer()
        except OSError as exc:
            self._lost = f"{self.endpoint}: cannot send: {_describe(exc)}"
            self._transport.abort()
            raise SinkError(self._lost, retriable=True) from None
        if self._protocol.error is not None:
            # sendto does not raise: the kernel refused a datagram of this batch (nobody
            # listens) and asyncio reported it to the protocol. Not acknowledged.
            self._lost = f"{self.endpoint}: {self._protocol.error}"
            self._transport.abort()
            raise SinkError(self._lost, retriable=True)
        return None

    def _buffered(self) -> int:
        # Selector datagram transports have get_write_buffer_size; the ABC does not declare it.
        size: int = getattr(self._transport, "get_write_buffer_size", lambda: 0)()
        return size

    async def _wait_buffer(self) -> None:
        # The kernel's send buffer is full; asyncio holds the rest. Wait until it drained
        # rather than let user-space memory grow without bound.
        while self._buffered() > _UDP_HIGH_WATER // 2:
            if self._transport.is_closing():
                raise OSError("socket closed")
            await asyncio.sleep(0.001)

    async def close(self) -> None:
        self._transport.close()


# --- TCP and TLS -----------------------------------------------------------------------------


def unsent_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes written to ``writer`` that the peer's TCP stack has not acknowledged yet.

    The sum of what asyncio buffers in user space (for TLS both the TLS layer and the socket
    transport under it) and the socket's kernel send queue (``SIOCOUTQ``: bytes not yet sent
    plus bytes sent but not acknowledged by the peer). ``OSError`` or ``ValueError`` when the
    socket is closed: nothing can be confirmed on it any more.
    """
    transport = writer.transport
    total: int = transport.get_write_buffer_size()
    # An SSL transport sits on a socket transport with its own buffer (no public accessor).
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if isinstance(inner, asyncio.WriteTransport):
        total += inner.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        raise ConnectionError("the connection is closed")
    # ValueError: the socket was closed under us (its descriptor is -1).
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    queued: int = struct.unpack("i", raw)[0]
    return total + queued


class StreamLink:
    """A TCP or TLS connection carrying framed messages; confirms as the module says."""

    def __init__(
        self,
        endpoint: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: SyslogSettings,
    ) -> None:
        self.endpoint = endpoint
        self.last_used = time.monotonic()
        self._reader = reader
        self._writer = writer
        self._write_timeout = settings.write_timeout_seconds
        self._confirm_after = settings.confirm_seconds
        self._lost: str | None = None
        self._closing = False
        self._bytes_written = 0  # bytes handed to the transport so far
        # (end, future): a batch unconfirmed, `end` = _bytes_written after its last byte.
        self._pending: deque[tuple[int, asyncio.Future[None]]] = deque()
        # (when, position): at `when`, the peer had acknowledged the first `position` bytes.
        self._checkpoints: deque[tuple[float, int]] = deque()
        self._wake = asyncio.Event()
        writer.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        sock = writer.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._watch = asyncio.create_task(self._watch_peer(), name=f"syslog-watch {endpoint}")
        self._confirmer = asyncio.create_task(self._confirm(), name=f"syslog-confirm {endpoint}")

    @property
    def lost(self) -> str | None:
        return self._lost

    def busy(self) -> bool:
        return bool(self._pending)

    async def send(self, frames: Sequence[bytes]) -> asyncio.Future[None] | None:
        if self._lost is not None:
            raise SinkError(self._lost, retriable=True)
        self.last_used = time.monotonic()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._writer.transport.is_closing():
            # asyncio closed it after a failed write; the watcher has not seen it yet.
            self._fail("the connection was closed")
            raise SinkError(self._lost or self.endpoint, retriable=True)
        try:
            self._writer.writelines(frames)
            self._bytes_written += sum(map(len, frames))
            self._pending.append((self._bytes_written, future))
            await asyncio.wait_for(self._writer.drain(), self._write_timeout)
        except TimeoutError:
            self._fail(f"the collector took no data for {self._write_timeout:g} s")
        except (OSError, RuntimeError) as exc:
            self._fail(f"write failed: {_describe(exc)}")
        if self._lost is not None:
            raise SinkError(self._lost, retriable=True)
        self._wake.set()
        return future

    def _fail(self, reason: str) -> None:
        """The connection is gone: fail every unconfirmed batch and drop the socket."""
        if self._lost is not None:
            return
        self._lost = f"{self.endpoint}: {reason}"
        error = SinkError(f"{self._lost} (unconfirmed messages are sent again)", retriable=True)
        while self._pending:
            _failed_future(self._pending.popleft()[1], error)
        self._checkpoints.clear()
        self._writer.transport.abort()
        self._wake.set()
        if not self._closing:
            _log.warning(
                "Syslog connection lost.", extra={"endpoint": self.endpoint, "why": reason}
            )

    async def _watch_peer(self) -> None:
        """A syslog collector never talks back: any end of the stream is the connection lost."""
        try:
            while await self._reader.read(65536):
                pass  # unexpected bytes from the collector are ignored
            reason = "the collector closed the connection"
        except (OSError, ssl.SSLError) as exc:
            reason = f"connection error: {_describe(exc)}"
        self._fail(reason)

    async def _confirm(self) -> None:
        """Confirm batches that the peer's TCP stack took ``confirm_seconds`` ago or more.

        Every tick notes how far the peer has acknowledged (bytes written minus bytes still
        unsent); a batch whose last byte lies within a note at least ``confirm_seconds`` old
        is confirmed. For TLS the unsent count is in ciphertext bytes, a little more than the
        plaintext they carry, so the estimate errs on the late side, never the early one.
        """
        tick = max(0.02, min(0.25, self._confirm_after / 4))
        while self._lost is None:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            try:
                acked = self._bytes_written - unsent_bytes(self._writer)
            except (OSError, ValueError) as exc:
                self._fail(f"connection error: {_describe(exc)}")
                return
            if not self._checkpoints or self._checkpoints[-1][1] < acked:
                self._checkpoints.append((now, acked))
            confirmed = -1
            while self._checkpoints and now - self._checkpoints[0][0] >= self._confirm_after:
                confirmed = self._checkpoints.popleft()[1]
            while self._pending and self._pending[0][0] <= confirmed:
                future = self._pending.popleft()[1]
                if not future.done():
                    future.set_result(None)
            if self._pending:
                await asyncio.sleep(tick)

    async def close(self) -> None:
        self._closing = True
        if self._lost is None:
            self._lost = f"{self.endpoint}: closed"
            error = SinkError(f"{self.endpoint}: connection closed before confirmation")
            while self._pending:
                _failed_future(self._pending.popleft()[1], error)
            self._writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(self._writer.wait_closed(), 5.0)
            self._writer.transport.abort()
        self._wake.set()
        for task in (self._watch, self._confirmer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- RELP ------------------------------------------------------------------------------------


class RelpLink:
    """A RELP session: a batch is confirmed when the collector answered each message."""

    def __init__(self, endpoint: str, client: RelpClient, write_timeout: float) -> None:
        self.endpoint = endpoint
        self.last_used = time.monotonic()
        self._client = client
        self._write_timeout = write_timeout

    @property
    def lost(self) -> str | None:
        return self._client.lost

    def busy(self) -> bool:
        return self._client.unacknowledged() > 0

    async def send(self, frames: Sequence[bytes]) -> asyncio.Future[None] | None:
        self.last_used = time.monotonic()
        answers: list[asyncio.Future[None]] = []
        try:
            async with asyncio.timeout(self._write_timeout):
                for message in frames:
                    answers.append(await self._client.send(message))
                await self._client.drain()
        except TimeoutError:
            self._client.abort()
            reason = f"{self.endpoint}: the collector took no data for {self._write_timeout:g} s"
            raise SinkError(reason, retriable=True) from None
        except RelpError as exc:
            raise SinkError(str(exc), retriable=True) from None
        return _all_of(answers)

    async def close(self) -> None:
        await self._client.close()


def _all_of(answers: list[asyncio.Future[None]]) -> asyncio.Future[None]:
    """One future for a batch: done when every answer is 200, failed at the first failure."""
    batch: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(answers)

    def one_done(answer: asyncio.Future[None]) -> None:
        nonlocal left
        if batch.done():
            if not answer.cancelled():
                answer.exception()  # retrieved: the batch already failed
            return
        error = SinkError("RELP answer cancelled") if answer.cancelled() else answer.exception()
        if error is not None:
            reason = str(error) if isinstance(error, RelpError | SinkError) else repr(error)
            _failed_future(batch, SinkError(reason, retriable=True))
            return
        left -= 1
        if left == 0:
            batch.set_result(None)

    if not answers:
        batch.set_result(None)
    for answer in answers:
        answer.add_done_callback(one_done)
    return batch
