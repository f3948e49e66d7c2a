"""RELP client (connectors.syslog.relp): the frame parser, and the client against scripted
in-process servers for what a real rsyslog will not do on request (refusals, silence,
serverclose mid-stream, answers for unknown transactions, broken frames).

The fake servers read the client's frames with their own small reader (not the parser under
test), so a framing bug on the sending side cannot hide behind the same bug when reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from connectors.syslog.relp import (
    MAX_ANSWER_DATA,
    MAX_TXNR,
    RelpClient,
    RelpError,
    RelpFrame,
    RelpFrameError,
    RelpFrameParser,
    encode_frame,
    next_txnr,
    parse_rsp,
)

pytestmark = pytest.mark.unit

HOST = "127.0.0.1"
OPEN_OK = b"200 OK\nrelp_version=0\nrelp_software=fake,1.0\ncommands=syslog"

# ------------------------------------------------------------------------------------ parser

STREAM_FRAMES = [
    RelpFrame(1, "rsp", OPEN_OK),
    RelpFrame(2, "rsp", b"200 OK"),
    RelpFrame(3, "rsp", b""),
    RelpFrame(4, "rsp", "500 zu groß: ünïcødé €\nline two\n\n".encode()),
    RelpFrame(5, "rsp", b"200 OK\n6 rsp 6 200 OK\n"),  # a frame look-alike inside DATA
    RelpFrame(0, "serverclose", b""),
]
STREAM = b"".join(encode_frame(f.txnr, f.command, f.data) for f in STREAM_FRAMES)


def test_frames_on_the_wire_are_exactly_as_specified() -> None:
    assert encode_frame(2, "syslog", b"<13>1 - - - - - - x") == b"2 syslog 19 <13>1 - - - - - - x\n"
    assert encode_frame(7, "close") == b"7 close 0\n"
    assert encode_frame(0, "serverclose") == b"0 serverclose 0\n"
    with pytest.raises(ValueError, match="txnr"):
        encode_frame(MAX_TXNR + 1, "syslog", b"x")


def test_one_chunk_with_every_frame() -> None:
    assert RelpFrameParser().feed(STREAM) == STREAM_FRAMES


def test_zero_length_data_has_no_space() -> None:
    assert RelpFrameParser().feed(b"3 rsp 0\n") == [RelpFrame(3, "rsp", b"")]


def test_split_at_every_byte_position() -> None:
    for cut in range(len(STREAM) + 1):
        parser = RelpFrameParser()
        frames = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert frames == STREAM_FRAMES, f"cut at {cut}"


def test_split_at_every_pair_of_positions_in_one_frame() -> None:
    frame = encode_frame(123, "rsp", "500 nö\nx".encode())
    for first in range(len(frame) + 1):
        for second in range(first, len(frame) + 1):
            parser = RelpFrameParser()
            pieces = (frame[:first], frame[first:second], frame[second:])
            frames = [f for piece in pieces for f in parser.feed(piece)]
            assert frames == [RelpFrame(123, "rsp", "500 nö\nx".encode())], (first, second)


def test_one_byte_at_a_time() -> None:
    parser = RelpFrameParser()
    frames = [f for i in range(len(STREAM)) for f in parser.feed(STREAM[i : i + 1])]
    assert frames == STREAM_FRAMES


def test_incomplete_header_waits_for_more() -> None:
    parser = RelpFrameParser()
    for piece in (b"12", b" r", b"sp", b" ", b"6"):
        assert parser.feed(piece) == []
    assert parser.feed(b" 200 OK\n") == [RelpFrame(12, "rsp", b"200 OK")]


def test_bad_trailer_is_an_error_and_keeps_the_frames_before_it() -> None:
    parser = RelpFrameParser()
    with pytest.raises(RelpFrameError, match="no LF after its 6 octets") as caught:
        parser.feed(b"2 rsp 6 200 OK\n3 rsp 6 200 OKX")
    assert caught.value.frames == [RelpFrame(2, "rsp", b"200 OK")]


def test_datalen_shorter_than_the_data_is_caught_by_the_trailer() -> None:
    with pytest.raises(RelpFrameError, match="no LF"):
        RelpFrameParser().feed(b"2 rsp 3 200 OK\n")


@pytest.mark.parametrize(
    "wire",
    [
        b"x rsp 0\n",  # txnr not a number
        b"-1 rsp 0\n",
        b"2 rsp x\n",  # datalen not a number
        b"2 rsp -1\n",
        b"2 r5p 0\n",  # command not letters
        b"2  rsp 0\n",  # two spaces
        b" 2 rsp 0\n",
        b"2 rsp 0 \n",  # no data, yet a space
        b"2 rsp 3\nabc\n",  # data, yet no space
        b"1234567890 rsp 0\n",  # ten-digit txnr
        b"2 rsp 1234567890 ",  # ten-digit datalen
        b"2 " + b"r" * 33 + b" 0\n",  # command over 32 letters
        b"\n",
    ],
)
def test_malformed_headers(wire: bytes) -> None:
    with pytest.raises(RelpFrameError, match="malformed frame header|DATALEN"):
        RelpFrameParser().feed(wire)


def test_oversize_datalen_is_refused_before_the_data_arrives() -> None:
    parser = RelpFrameParser()
    with pytest.raises(RelpFrameError, match=f"DATALEN {MAX_ANSWER_DATA + 1} over"):
        parser.feed(b"2 rsp %d " % (MAX_ANSWER_DATA + 1))
    assert RelpFrameParser(max_data=4).feed(b"2 rsp 4 1234\n") == [RelpFrame(2, "rsp", b"1234")]
    with pytest.raises(RelpFrameError, match="DATALEN 5 over 4"):
        RelpFrameParser(max_data=4).feed(b"2 rsp 5 ")


def test_an_error_is_final() -> None:
    parser = RelpFrameParser()
    with pytest.raises(RelpFrameError):
        parser.feed(b"garbage\n")
    with pytest.raises(RelpFrameError, match="malformed"):
        parser.feed(b"2 rsp 0\n")


def test_txnr_wraps_from_the_nine_digit_maximum_to_one() -> None:
    assert [next_txnr(n) for n in (1, 2, MAX_TXNR - 1, MAX_TXNR)] == [2, 3, MAX_TXNR, 1]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"200 OK", (200, "OK", b"")),
        (b"200", (200, "", b"")),
        (b"500 no space left", (500, "no space left", b"")),
        (
            b"200 OK\nrelp_version=0\ncommands=syslog",
            (200, "OK", b"relp_version=0\ncommands=syslog"),
        ),
    ],
)
def test_parse_rsp(data: bytes, expected: tuple[int, str, bytes]) -> None:
    assert parse_rsp(data) == expected


@pytest.mark.parametrize("data", [b"", b"OK", b"20 OK", b"2000 OK", b"200OK"])
def test_parse_rsp_needs_a_status(data: bytes) -> None:
    with pytest.raises(RelpFrameError, match="3-digit status"):
        parse_rsp(data)


# ------------------------------------------------------------------------------- fake servers

Frame = tuple[int, str, bytes]
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """One frame the client sent, read independently of RelpFrameParser."""
    txnr = int((await reader.readuntil(b" "))[:-1])
    command = (await reader.readuntil(b" "))[:-1].decode("ascii")
    digits = b""
    while (byte := await reader.readexactly(1)) not in (b" ", b"\n"):
        digits += byte
    data = b""
    if byte == b" ":
        data = await reader.readexactly(int(digits))
        assert await reader.readexactly(1) == b"\n", "frame not closed by LF"
    else:
        assert int(digits) == 0
    return txnr, command, data


async def accept_open(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes = OPEN_OK
) -> Frame:
    frame = await read_frame(reader)
    writer.write(encode_frame(1, "rsp", answer))
    await writer.drain()
    return frame


async def answer(writer: asyncio.StreamWriter, txnr: int, data: bytes = b"200 OK") -> None:
    writer.write(encode_frame(txnr, "rsp", data))
    await writer.drain()


class FakeServer:
    """One scripted RELP server on 127.0.0.1; the script gets each connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.tasks: list[asyncio.Task[Any]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        try:
            await self.script(reader, writer)
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeServer]:
        server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            # Scripts end on their own once the client is gone (never cancel them: asyncio's
            # stream callback would report the cancelled task as an error).
            if self.tasks:
                _, hanging = await asyncio.wait(self.tasks, timeout=5)
                assert not hanging, "a fake server's script did not finish"
            await server.wait_closed()
            for task in self.tasks:  # an assertion inside a script fails the test
                error = task.exception()
                if error is not None and not isinstance(
                    error, asyncio.IncompleteReadError | ConnectionError
                ):
                    raise error


def serve(script: Script) -> contextlib.AbstractAsyncContextManager[FakeServer]:
    return FakeServer(script).running()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the loop would report ("Future exception was never retrieved", ...): none allowed.

    Also checks that no RELP reader task outlives its test.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    await asyncio.sleep(0)  # let an aborted reader task take its cancellation
    gc.collect()
    readers = [t for t in asyncio.all_tasks() if t.get_name().startswith("relp-reader")]
    assert [t for t in readers if not t.done()] == []
    assert errors == []
    loop.set_exception_handler(None)


def where(server: FakeServer) -> str:
    return f"{HOST}:{server.port}"


# ------------------------------------------------------------------------------- the client


@pytest.mark.usefixtures("loop_errors")
class TestClient:
    async def test_open_send_close_on_the_wire(self) -> None:
        seen: list[Frame] = []

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await read_frame(reader))
            # Answers dribble in one byte at a time: the client must reassemble them.
            for byte in encode_frame(1, "rsp", OPEN_OK):
                writer.write(bytes([byte]))
                await writer.drain()
            for _ in range(3):
                seen.append(await read_frame(reader))
            wire = b"".join(encode_frame(t, "rsp", b"200 OK") for t in (2, 3, 4))
            for byte in wire:
                writer.write(bytes([byte]))
                await writer.drain()
            seen.append(await read_frame(reader))  # close
            writer.write(encode_frame(5, "rsp") + encode_frame(0, "serverclose"))
            await writer.drain()

        messages = [b"<13>1 - h app - - - one", "zwei\nü".encode(), b"x" * 5000]
        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port, software="tests,1")
            futures = [await client.send(m) for m in messages]
            await client.drain()
            await asyncio.gather(*futures)
            assert client.unacknowledged() == 0
            await client.close()
            assert client.lost is None

        assert seen[0] == (1, "open", b"relp_version=0\nrelp_software=tests,1\ncommands=syslog")
        assert seen[1:4] == [(n, "syslog", m) for n, m in zip((2, 3, 4), messages, strict=True)]
        assert seen[4] == (5, "close", b"")

    async def test_a_refused_message_fails_alone(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            for _ in range(3):
                await read_frame(reader)
            await answer(writer, 2)
            await answer(writer, 3, b"500 message too large\nmore detail")
            await answer(writer, 4)
            await read_frame(reader)  # close
            await answer(writer, 5, b"")

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            first, refused, third = [await client.send(b"m%d" % i) for i in range(3)]
            await first
            with pytest.raises(RelpError) as caught:
                await refused
            await third
            assert client.lost is None
            await client.close()
        text = str(caught.value)
        assert where(server) in text and "500 message too large" in text and "txnr 3" in text

    async def test_refused_open(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer, b"500 not now")

        async with serve(script) as server:
            with pytest.raises(RelpError, match=f"{where(server)}: .*refused.*500 not now"):
                await RelpClient.open(HOST, server.port)

    async def test_open_without_syslog_command(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer, b"200 OK\nrelp_version=0\ncommands=eventlog")

        async with serve(script) as server:
            with pytest.raises(RelpError, match="does not offer the syslog command") as caught:
                await RelpClient.open(HOST, server.port)
        assert where(server) in str(caught.value) and "eventlog" in str(caught.value)
        assert caught.value.retriable is False

    async def test_open_without_relp_version(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer, b"200 OK\ncommands=syslog")

        async with serve(script) as server:
            with pytest.raises(RelpError, match="relp_version"):
                await RelpClient.open(HOST, server.port)

    async def test_open_answered_by_a_broken_frame(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_frame(reader)
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()

        async with serve(script) as server:
            with pytest.raises(RelpError, match=f"{where(server)}: malformed answer to open"):
                await RelpClient.open(HOST, server.port)

    async def test_server_that_never_answers_open(self) -> None:
        opened = asyncio.Event()

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_frame(reader)
            opened.set()
            await reader.read()  # until the client gives up

        async with serve(script) as server:
            started = time.monotonic()
            with pytest.raises(RelpError, match=f"{where(server)}: no answer to open within 0.3 s"):
                await RelpClient.open(HOST, server.port, connect_timeout=0.3)
            assert time.monotonic() - started < 2
            assert opened.is_set()

    async def test_server_closing_before_answering_open(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_frame(reader)

        async with serve(script) as server:
            with pytest.raises(RelpError, match="closed the connection before answering open"):
                await RelpClient.open(HOST, server.port)

    async def test_serverclose_mid_stream(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            for _ in range(4):
                await read_frame(reader)
            await answer(writer, 2)
            await answer(writer, 3)
            writer.write(encode_frame(0, "serverclose"))
            await writer.drain()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            futures = [await client.send(b"m%d" % i) for i in range(4)]
            results = await asyncio.gather(*futures, return_exceptions=True)
            assert results[:2] == [None, None]
            for failed in results[2:]:
                assert isinstance(failed, RelpError)
                assert where(server) in str(failed) and "serverclose" in str(failed)
            assert client.lost is not None and "serverclose" in client.lost
            assert client.unacknowledged() == 0
            with pytest.raises(RelpError, match="lost: .*serverclose"):
                await client.send(b"later")
            with pytest.raises(RelpError, match="lost"):
                await client.drain()
            await client.close()
            assert client.lost is not None  # close does not forget why the session ended

    async def test_answer_for_unknown_txnr_ends_the_session(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)
            await read_frame(reader)
            await answer(writer, 2)
            await answer(writer, 99)
            await reader.read()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            first = await client.send(b"a")
            second = await client.send(b"b")
            await first
            with pytest.raises(RelpError, match="unknown txnr 99"):
                await second
            assert client.lost == "answer for unknown txnr 99"
            await client.close()

    async def test_malformed_frame_ends_the_session_after_the_good_ones(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)
            await read_frame(reader)
            writer.write(encode_frame(2, "rsp", b"200 OK") + b"3 rsp 6 200 OKX")
            await writer.drain()
            await reader.read()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            first = await client.send(b"a")
            second = await client.send(b"b")
            await first  # answered in the same read as the garbage
            with pytest.raises(RelpError, match="malformed frame"):
                await second
            assert client.lost is not None and "no LF" in client.lost
            await client.close()

    async def test_answer_without_status_ends_the_session(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)
            await answer(writer, 2, b"OK")
            await reader.read()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            future = await client.send(b"a")
            with pytest.raises(RelpError, match="malformed answer for txnr 2"):
                await future
            await client.close()

    async def test_eof_without_serverclose(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            future = await client.send(b"a")
            with pytest.raises(RelpError, match="lost before the server answered"):
                await future
            assert client.lost == "the server closed the connection"
            await client.close()

    async def test_unknown_hint_is_ignored_and_other_commands_are_not(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)
            writer.write(encode_frame(0, "weather", b"sunny") + encode_frame(2, "rsp", b"200 OK"))
            await read_frame(reader)
            writer.write(encode_frame(7, "syslog", b"backwards"))
            await reader.read()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            await (await client.send(b"a"))
            with pytest.raises(RelpError, match="unexpected command 'syslog'"):
                await (await client.send(b"b"))
            await client.close()

    async def test_window_full_makes_send_wait(self) -> None:
        received = asyncio.Event()
        release = asyncio.Event()

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)
            await read_frame(reader)
            received.set()
            await release.wait()
            await answer(writer, 2)
            await read_frame(reader)
            await answer(writer, 3)
            await answer(writer, 4)
            await read_frame(reader)  # close
            await answer(writer, 5, b"")

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port, window=2)
            futures = [await client.send(b"a"), await client.send(b"b")]
            third = asyncio.create_task(client.send(b"c"))
            await received.wait()
            done, _ = await asyncio.wait({third}, timeout=0.2)  # proving a negative
            assert not done and client.unacknowledged() == 2
            release.set()
            futures.append(await third)
            assert client.unacknowledged() <= 2
            await asyncio.gather(*futures)
            await client.close()

    async def test_close_waits_for_outstanding_answers(self) -> None:
        closing = asyncio.Event()
        order: list[str] = []

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await read_frame(reader)
            await read_frame(reader)
            await closing.wait()
            early = asyncio.create_task(read_frame(reader))
            done, _ = await asyncio.wait({early}, timeout=0.2)  # proving a negative
            order.append("close came early" if done else "answers")
            await answer(writer, 2)
            await answer(writer, 3)
            txnr, command, _ = await early
            order.append(command)
            await answer(writer, txnr, b"")
            writer.write(encode_frame(0, "serverclose"))

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            futures = [await client.send(b"a"), await client.send(b"b")]
            closing.set()
            await client.close()
            assert [f.exception() for f in futures] == [None, None]
            assert order == ["answers", "close"] and client.lost is None
            await client.close()  # idempotent
            with pytest.raises(RelpError, match="is closed"):
                await client.send(b"c")

    async def test_close_is_bounded_when_the_server_is_silent(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await reader.read()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            future = await client.send(b"a")
            started = time.monotonic()
            await client.close(timeout=0.2)
            assert time.monotonic() - started < 1.5
            with pytest.raises(
                RelpError, match=f"{where(server)} closed before the server answered"
            ):
                await future

    async def test_abort_fails_what_is_unanswered(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            await reader.read()

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            future = await client.send(b"a")
            client.abort()
            assert future.done() and "aborted" in str(future.exception())
            with pytest.raises(RelpError, match="is closed"):
                await client.send(b"b")
            client.abort()
            await client.close()  # after abort: nothing left but to tidy up

    async def test_txnr_wraps_on_the_wire(self) -> None:
        seen: list[int] = []

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            for _ in range(3):
                txnr, _, _ = await read_frame(reader)
                seen.append(txnr)
                await answer(writer, txnr)

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            client._next = MAX_TXNR - 1  # a long-lived session, a billion messages later
            for message in (b"a", b"b", b"c"):
                await (await client.send(message))
            client.abort()
        assert seen == [MAX_TXNR - 1, MAX_TXNR, 1]

    async def test_a_cancelled_future_does_not_break_the_reader(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            for _ in range(2):
                await read_frame(reader)
            await answer(writer, 2)
            await answer(writer, 3)
            await read_frame(reader)
            await answer(writer, 4, b"")

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            first = await client.send(b"a")
            second = await client.send(b"b")
            first.cancel()
            await second
            assert client.lost is None and client.unacknowledged() == 0
            await client.close()

    async def test_failures_nobody_retrieves_are_not_reported(
        self, loop_errors: list[dict[str, Any]]
    ) -> None:
        # The check itself can fail: an ordinary failed future left alone is reported.
        stray: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stray.set_exception(RelpError("stray"))
        del stray
        gc.collect()
        assert [c["message"] for c in loop_errors] == ["Future exception was never retrieved"]
        loop_errors.clear()

        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await accept_open(reader, writer)
            for _ in range(3):
                await read_frame(reader)

        async with serve(script) as server:
            client = await RelpClient.open(HOST, server.port)
            for message in (b"a", b"b", b"c"):
                await client.send(message)  # futures dropped on the floor
            await client.close()
        gc.collect()
        assert loop_errors == []

    async def test_connection_refused(self) -> None:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            pass

        async with serve(script) as server:
            port = server.port
        with pytest.raises(RelpError, match=f"{HOST}:{port}: connection refused"):
            await RelpClient.open(HOST, port)

    async def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="window"):
            await RelpClient.open(HOST, 1, window=0)
        with pytest.raises(ValueError, match="software"):
            await RelpClient.open(HOST, 1, software="a\nb")
        with pytest.raises(ValueError, match="server_hostname"):
            await RelpClient.open(HOST, 1, server_hostname="localhost")
