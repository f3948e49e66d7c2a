"""The client side of RELP, rsyslog's Reliable Event Logging Protocol, for asyncio.

Who calls it: the syslog connector's RELP transport, one :class:`RelpClient` per connection
(plain TCP or TLS). The client numbers, sends and matches answers; deciding what to do with a
failed message (re-open, re-send, dead-letter) is the caller's business.

The wire (librelp's ``doc/relp.md`` and its frame reader): every unit, in both directions, is a
frame ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``.

* ``TXNR``, 1 to 9 digits: the client numbers its commands 1, 2, 3, … and after 999 999 999
  starts again at 1. 0 belongs to hints, which the server sends unasked and which get no answer.
* ``COMMAND``, 1 to 32 letters. ``DATALEN``, 1 to 9 digits: the number of octets in ``DATA``.
  With ``DATALEN`` 0 there is neither the ``SP`` nor ``DATA``: ``3 rsp 0`` then ``LF``.
* ``DATA`` is opaque octets (a syslog message may hold LFs and any other byte), so the reader
  takes exactly ``DATALEN`` octets and then insists on the ``LF`` trailer; anything else is a
  framing error, after which the stream cannot be trusted and the session ends.

A session, as this client runs it:

1. ``1 open`` with the offers ``relp_version=0``, ``relp_software=NAME``, ``commands=syslog``.
   The server answers ``1 rsp`` with ``200 OK``, LF, and the offers it accepts. Anything but a
   200 that offers ``relp_version`` and lists ``syslog`` in ``commands`` refuses the session.
2. One ``syslog`` command per message; the server answers each with ``rsp`` and ``200 OK``
   once it has taken the message (rsyslog's imrelp: once it is in the ruleset's queue, so with
   a ``Direct`` queue once the actions ran), or another code and a text when it refuses that
   message (the session goes on).
3. ``close`` (no data); the server answers ``rsp`` (rsyslog: no data at all), sends the hint
   ``0 serverclose 0`` and closes the connection.

The server may also send ``serverclose`` unasked: it is going away (rsyslog on shutdown).

Guarantees:

* A future from :meth:`RelpClient.send` resolves only on the server's ``200`` for exactly that
  transaction: the server has taken that message.
* A failed future (:class:`RelpError`) does *not* mean "not delivered": the server may have
  taken the message and its answer died with the connection (asyncio drops what it has not
  read yet once a write fails). Re-sending what failed, in order, on a new session gives
  at-least-once delivery, with at most ``window`` duplicates per lost session.
* Every future ends: resolved, or failed when its answer is a refusal, when the session is lost,
  and at the latest when :meth:`~RelpClient.close` or :meth:`~RelpClient.abort` returns. A
  failure nobody retrieves is not reported as "never retrieved".
* Commands leave in the order of the ``send`` calls that made them (calls from one task are in
  order; calls from several tasks in whatever order the window lets them through).
* At most ``window`` messages are unanswered; ``send`` waits for room, it never drops.
* A lost session stays lost: no reconnect and no re-send behind the caller's back (librelp
  does both; here the caller decides, and knows which messages need it).
* TLS is whatever the given :class:`ssl.SSLContext` enforces (verification, client
  certificate); nothing here loosens it.

Errors::

    RelpError        a session could not be opened, failed, or a message was refused;
                     str() names host:port; ``retriable`` says whether trying again may help
    RelpFrameError   (ValueError) the bytes are not RELP frames: the parser's own error
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module

from connectors.syslog.relp_frames import (
    MAX_ANSWER_DATA,
    MAX_DATALEN,
    MAX_TXNR,
    MAX_WINDOW,
    STATUS_OK,
    RelpFrame,
    RelpFrameError,
    RelpFrameParser,
    encode_frame,
    next_txnr,
    parse_rsp,
)

__all__ = [
    "MAX_ANSWER_DATA",
    "MAX_DATALEN",
    "MAX_TXNR",
    "MAX_WINDOW",
    "RelpClient",
    "RelpError",
    "RelpFrame",
    "RelpFrameError",
    "RelpFrameParser",
    "encode_frame",
    "next_txnr",
    "parse_rsp",
]

_READ_SIZE = 64 * 1024
_TLS_HINT = " (over TLS: perhaps the server refused our client certificate)"


class RelpError(Exception):
    """A RELP session failed; str() is a clear reason naming host:port (no secrets)."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


def _consume(future: asyncio.Future[None]) -> None:
    """Done-callback: a failure nobody looks at is expected here, not "never retrieved"."""
    if not future.cancelled():
        future.exception()


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _offers(body: bytes) -> dict[str, list[str]]:
    """The offers of an open answer (``name=value,value`` per line) by name."""
    found: dict[str, list[str]] = {}
    for line in body.split(b"\n"):
        name, has_value, value = line.decode("utf-8", "replace").partition("=")
        if name:
            found[name] = value.split(",") if has_value else []
    return found


class RelpClient:
    """One RELP session to one server. Make it with :meth:`open`; see the module docstring."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        where: str,
        window: int,
        parser: RelpFrameParser,
    ) -> None:
        """Internal: :meth:`open` builds a client around an opened session."""
        self._reader = reader
        self._writer = writer
        self._where = where
        self._window = window
        self._parser = parser
        self._next = 2  # 1 was the open command
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._changed = asyncio.Event()  # an answer arrived or the session ended
        self._lost: str | None = None
        self._closing = False  # close() or abort() began: no new messages
        self._close_txnr: int | None = None  # once set, serverclose and EOF are expected
        self._close_answer: asyncio.Future[None] | None = None
        self._close_started = False
        self._close_finished = asyncio.Event()
        self._finished = False
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        window: int = 128,
        software: str = "siem-export",
    ) -> RelpClient:
        """Connect (TLS if ``ssl``), open the session and start reading answers.

        ``connect_timeout`` bounds everything: TCP, TLS handshake and the answer to open.
        Raises :class:`RelpError` (socket closed) when any of it fails.
        """
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"RELP window {window} outside 1..{MAX_WINDOW}")
        if not software or not software.isprintable() or len(software) > 255:
            raise ValueError(f"RELP software name {software!r}: 1-255 printable characters")
        if server_hostname is not None and ssl is None:
            raise ValueError("server_hostname needs an ssl context")
        where = _where(host, port)
        offer = b"relp_version=0\nrelp_software=%s\ncommands=syslog" % software.encode()
        parser = RelpFrameParser()
        writer: asyncio.StreamWriter | None = None
        stage = "connect"
        try:
            try:
                async with asyncio.timeout(connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=ssl, server_hostname=server_hostname
                    )
                    stage = "open"
                    writer.write(encode_frame(1, "open", offer))
                    frames = await _read_open_answer(reader, parser, where, ssl is not None)
                _check_open_answer(frames[0], where)
            except RelpError:
                raise
            except Exception as exc:
                raise _open_failure(exc, where, stage, connect_timeout, ssl is not None) from exc
        except BaseException:
            if writer is not None:
                writer.transport.abort()
            raise
        client = cls(reader, writer, where=where, window=window, parser=parser)
        client._dispatch(frames[1:])  # whatever came along with the answer
        if client._lost is not None:
            client.abort()
            raise RelpError(f"RELP {where}: session lost right after open: {client._lost}")
        client._reader_task = asyncio.create_task(
            client._read_answers(), name=f"relp-reader {where}"
        )
        return client

    @property
    def lost(self) -> str | None:
        """Why the session ended unexpectedly (server went away, bad frame...), else None."""
        return self._lost

    def unacknowledged(self) -> int:
        """How many sent messages have no answer yet."""
        return len(self._pending)

    async def send(self, message: bytes) -> asyncio.Future[None]:
        """Send one message; the future resolves on the server's 200 for it.

        Waits while ``window`` messages are unanswered. Writes without draining (call
        :meth:`drain` per batch). Raises :class:`RelpError` at once when the session is lost
        or closed; the future fails with :class:`RelpError` on a refusal or a lost session.
        """
        self._check_usable()
        if len(message) > MAX_DATALEN:
            raise ValueError(f"RELP message of {len(message)} octets exceeds {MAX_DATALEN}")
        # A transport that is closing has lost its connection and the reader is about to
        # say why: waiting for that beats writing into the void.
        while len(self._pending) >= self._window or self._writer.transport.is_closing():
            self._changed.clear()
            await self._changed.wait()
            self._check_usable()
        txnr = self._take_txnr()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        self._pending[txnr] = future
        self._writer.write(encode_frame(txnr, "syslog", message))
        return future

    async def drain(self) -> None:
        """Wait until the written frames are handed to the OS (flow control)."""
        self._check_usable()
        try:
            await self._writer.drain()
        except OSError as exc:  # ssl.SSLError and ConnectionError included
            self._lose(f"connection failed: {exc}")
            raise RelpError(f"RELP session to {self._where} lost: {self._lost}") from exc

    async def close(self, timeout: float = 5.0) -> None:
        """End the session politely; unanswered futures fail. Idempotent.

        1. Refuse new messages.
        2. Wait for the answers still outstanding.
        3. Send ``close`` and wait for its answer (rsyslog then sends ``serverclose``).
        4. Fail what is still unanswered, stop the reader, close the socket.

        Steps 2 and 3 take at most ``timeout`` seconds together; whatever has no answer by then
        is failed. After :meth:`abort` or a lost session only step 4 is left.
        """
        if self._close_started:
            await self._close_finished.wait()
            return
        self._close_started = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            # Step 1.
            graceful = not self._closing and self._lost is None
            self._closing = True
            self._changed.set()
            if graceful:
                with contextlib.suppress(TimeoutError, OSError):
                    async with asyncio.timeout_at(deadline):
                        await self._say_goodbye(loop)
            # Step 4.
            self._finish(f"RELP session to {self._where} closed before the server answered")
            await self._stop_reader()
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 1.0)):
                    await self._writer.wait_closed()
            except TimeoutError:
                self._writer.transport.abort()  # a TLS goodbye that never completes
            except OSError:
                pass  # how the connection ended is of no interest any more
        finally:
            self._finish(f"RELP session to {self._where} closed before the server answered")
            self._close_finished.set()

    def abort(self) -> None:
        """Close the socket now; unanswered futures fail. The reader task is cancelled."""
        self._closing = True
        self._finish(f"RELP session to {self._where} aborted before the server answered")
        self._writer.transport.abort()

    # -- internals --------------------------------------------------------------------------

    async def _say_goodbye(self, loop: asyncio.AbstractEventLoop) -> None:
        """Steps 2 and 3 of :meth:`close`."""
        # Step 2.
        while self._pending and self._lost is None:
            self._changed.clear()
            await self._changed.wait()
        if self._lost is not None:
            return
        # Step 3.
        self._close_answer = loop.create_future()
        self._close_txnr = self._take_txnr()
        self._writer.write(encode_frame(self._close_txnr, "close"))
        await self._writer.drain()
        await self._close_answer

    def _check_usable(self) -> None:
        if self._lost is not None:
            raise RelpError(f"RELP session to {self._where} lost: {self._lost}")
        if self._closing:
            raise RelpError(f"RELP session to {self._where} is closed", retriable=False)

    def _take_txnr(self) -> int:
        txnr = self._next
        self._next = next_txnr(txnr)
        return txnr

    def _fail_pending(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(RelpError(message))
        if self._close_answer is not None and not self._close_answer.done():
            self._close_answer.set_result(None)
        self._changed.set()

    def _finish(self, message: str) -> None:
        """Fail everything unanswered, close the socket, cancel the reader (once)."""
        if self._finished:
            return
        self._finished = True
        self._fail_pending(message)
        self._writer.close()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _lose(self, reason: str) -> None:
        """The session ended without our asking: record why and fail what is unanswered."""
        if self._lost is not None or self._finished:
            return
        self._lost = reason
        self._fail_pending(
            f"RELP session to {self._where} lost before the server answered: {reason}"
        )
        self._writer.transport.abort()
        task = self._reader_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _ended(self, reason: str) -> None:
        """The connection ended: expected once our close is out, a loss before."""
        if self._close_txnr is None:
            self._lose(reason)
        else:
            self._fail_pending(f"RELP session to {self._where} closed before the server answered")

    def _dispatch(self, frames: list[RelpFrame]) -> None:
        for frame in frames:
            if self._lost is not None or self._finished:
                return
            if frame.command == "rsp":
                self._answer(frame)
            elif frame.txnr == 0 and frame.command == "serverclose":
                self._ended("the server closed the session (serverclose)")
            elif frame.txnr != 0:
                self._lose(f"unexpected command {frame.command!r} with txnr {frame.txnr}")
            # any other hint (txnr 0) is advisory by definition: ignored

    def _answer(self, frame: RelpFrame) -> None:
        if frame.txnr == self._close_txnr:
            if self._close_answer is not None and not self._close_answer.done():
                self._close_answer.set_result(None)  # any answer will do; rsyslog's is empty
            return
        future = self._pending.get(frame.txnr)
        if future is None:
            self._lose(f"answer for unknown txnr {frame.txnr}")
            return
        try:
            status, text, _ = parse_rsp(frame.data)
        except RelpFrameError as exc:
            self._lose(f"malformed answer for txnr {frame.txnr}: {exc}")
            return
        del self._pending[frame.txnr]
        self._changed.set()
        if future.done():  # the caller cancelled it
            return
        if status == STATUS_OK:
            future.set_result(None)
        else:
            future.set_exception(
                RelpError(f"RELP {self._where} refused message txnr {frame.txnr}: {status} {text}")
            )

    async def _read_answers(self) -> None:
        try:
            while True:
                chunk = await self._reader.read(_READ_SIZE)
                if not chunk:
                    self._ended("the server closed the connection")
                    return
                try:
                    frames = self._parser.feed(chunk)
                except RelpFrameError as exc:
                    self._dispatch(exc.frames)
                    self._lose(f"malformed frame from the server: {exc}")
                    return
                self._dispatch(frames)
                if self._lost is not None or self._finished:
                    return
        except OSError as exc:  # resets, TLS alerts
            self._ended(f"connection failed: {exc}")
        except Exception as exc:  # a bug here must not leave futures hanging forever
            self._lose(f"internal error in the RELP reader: {exc!r}")

    async def _stop_reader(self) -> None:
        task = self._reader_task
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _read_open_answer(
    reader: asyncio.StreamReader, parser: RelpFrameParser, where: str, tls: bool
) -> list[RelpFrame]:
    """The frames up to and including the first one (the answer to open)."""
    while True:
        chunk = await reader.read(_READ_SIZE)
        if not chunk:
            raise RelpError(
                f"RELP {where}: the server closed the connection before answering open"
                + _TLS_HINT * tls
            )
        frames = parser.feed(chunk)
        if frames:
            return frames


def _check_open_answer(frame: RelpFrame, where: str) -> None:
    if frame.txnr == 0 and frame.command == "serverclose":
        raise RelpError(f"RELP {where}: the server closed the session instead of answering open")
    if (frame.txnr, frame.command) != (1, "rsp"):
        raise RelpError(f"RELP {where}: expected the answer to open, got {frame.command!r}")
    try:
        status, text, body = parse_rsp(frame.data)
    except RelpFrameError as exc:
        raise RelpError(f"RELP {where}: malformed answer to open: {exc}") from exc
    if status != STATUS_OK:
        raise RelpError(f"RELP {where}: the server refused the session: {status} {text}")
    offers = _offers(body)
    if "relp_version" not in offers:
        raise RelpError(f"RELP {where}: the answer to open lacks the relp_version offer")
    if "syslog" not in offers.get("commands", []):
        offered = ",".join(offers.get("commands", [])) or "none"
        raise RelpError(
            f"RELP {where}: the server does not offer the syslog command (commands: {offered})",
            retriable=False,
        )


def _open_failure(exc: Exception, where: str, stage: str, timeout: float, tls: bool) -> RelpError:
    """The boundary where socket, TLS and parser errors become one :class:`RelpError`."""
    if isinstance(exc, TimeoutError):
        what = "no connection" if stage == "connect" else "no answer to open"
        return RelpError(f"RELP {where}: {what} within {timeout:g} s")
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return RelpError(
            f"RELP {where}: TLS certificate verification failed: {exc.verify_message}",
            retriable=False,
        )
    if isinstance(exc, ssl_module.SSLError):
        return RelpError(f"RELP {where}: TLS failed: {exc.reason or exc}")
    if isinstance(exc, RelpFrameError):
        return RelpError(f"RELP {where}: malformed answer to open: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return RelpError(f"RELP {where}: connection refused")
    if isinstance(exc, OSError) and stage == "connect":
        return RelpError(f"RELP {where}: cannot connect: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        return RelpError(f"RELP {where}: connection failed during open: {exc}" + _TLS_HINT * tls)
    return RelpError(f"RELP {where}: {stage} failed: {exc!r}")
