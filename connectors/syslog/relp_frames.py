"""RELP frames (rsyslog's Reliable Event Logging Protocol): encoding and an incremental parser.

Pure code, no I/O: :mod:`connectors.syslog.relp` (the client) uses it on both directions of a
session, and the unit tests drive it byte by byte. The frame layout, the limits and what is
refused are described in that module's docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TXNR = 999_999_999  # nine digits; the next one is 1
MAX_DATALEN = 999_999_999  # nine digits
MAX_ANSWER_DATA = 128 * 1024  # the spec's fixed maximum; answers are a few hundred octets
MAX_WINDOW = 1_000_000  # far below MAX_TXNR, so a txnr is never reused while unanswered
STATUS_OK = 200

_HEADER = re.compile(rb"([0-9]{1,9}) ([A-Za-z]{1,32}) ([0-9]{1,9})([ \n])")
# What a header that has not fully arrived yet may look like; anything else is malformed.
_HEADER_PREFIX = re.compile(rb"(?:[0-9]{1,9}(?: (?:[A-Za-z]{1,32}(?: [0-9]{0,9})?)?)?)?")
_RSP_HEAD = re.compile(rb"([0-9]{3})(?: (.*))?", re.DOTALL)


class RelpFrameError(ValueError):
    """Bytes that are not a RELP frame; ``frames`` holds the good ones that came before."""

    def __init__(self, message: str, frames: list[RelpFrame] | None = None) -> None:
        super().__init__(message)
        self.frames = frames or []


@dataclass(frozen=True, slots=True)
class RelpFrame:
    """One frame as it was on the wire."""

    txnr: int
    command: str
    data: bytes


def encode_frame(txnr: int, command: str, data: bytes = b"") -> bytes:
    """The bytes of one frame (no SP and no data when ``data`` is empty)."""
    if not 0 <= txnr <= MAX_TXNR:
        raise ValueError(f"RELP txnr {txnr} outside 0..{MAX_TXNR}")
    if len(data) > MAX_DATALEN:
        raise ValueError(f"RELP data of {len(data)} octets exceeds {MAX_DATALEN}")
    head = b"%d %s %d" % (txnr, command.encode("ascii"), len(data))
    return head + b" " + data + b"\n" if data else head + b"\n"


def next_txnr(txnr: int) -> int:
    """The transaction number after ``txnr``: one more, and 1 after :data:`MAX_TXNR`."""
    return 1 if txnr >= MAX_TXNR else txnr + 1


def parse_rsp(data: bytes) -> tuple[int, str, bytes]:
    """An ``rsp`` frame's data as ``(status, human text, body after the first LF)``."""
    head, _, body = data.partition(b"\n")
    match = _RSP_HEAD.fullmatch(head)
    if match is None:
        raise RelpFrameError(f"answer {data[:80]!r} does not start with a 3-digit status")
    return int(match[1]), (match[2] or b"").decode("utf-8", "replace"), body


class RelpFrameParser:
    """Turns received bytes into frames, however the stream was cut into reads.

    Who calls it: :class:`RelpClient`'s reader, once per read. Pure: no I/O. After an error the
    parser stays broken (every later ``feed`` raises again): a stream that lost its framing
    cannot be resynchronised.
    """

    def __init__(self, max_data: int = MAX_ANSWER_DATA) -> None:
        self.max_data = max_data
        self._buffer = bytearray()
        self._error: str | None = None

    def feed(self, chunk: bytes) -> list[RelpFrame]:
        """The frames completed by ``chunk``; raises :class:`RelpFrameError` when malformed."""
        if self._error is not None:
            raise RelpFrameError(self._error)
        buffer = self._buffer
        buffer += chunk
        frames: list[RelpFrame] = []
        pos = 0
        try:
            while True:
                match = _HEADER.match(buffer, pos)
                if match is None:
                    if _HEADER_PREFIX.fullmatch(buffer, pos) is None:
                        self._fail(f"malformed frame header {bytes(buffer[pos : pos + 60])!r}")
                    break  # the header has not fully arrived
                txnr, command = int(match[1]), match[2].decode("ascii")
                length, separator = int(match[3]), match[4]
                if length == 0:
                    if separator != b"\n":
                        self._fail(f"frame {txnr} {command}: DATALEN 0 must be followed by LF")
                    frames.append(RelpFrame(txnr, command, b""))
                    pos = match.end()
                    continue
                if separator != b" ":
                    self._fail(f"frame {txnr} {command}: DATALEN {length} but no data")
                if length > self.max_data:
                    self._fail(f"frame {txnr} {command}: DATALEN {length} over {self.max_data}")
                start = match.end()
                end = start + length
                if len(buffer) <= end:
                    break  # data or trailer still to come
                if buffer[end] != 0x0A:
                    self._fail(
                        f"frame {txnr} {command}: no LF after its {length} octets of data"
                        f" (found {bytes(buffer[end : end + 1])!r})"
                    )
                frames.append(RelpFrame(txnr, command, bytes(buffer[start:end])))
                pos = end + 1
        except RelpFrameError as exc:
            exc.frames = frames
            raise
        finally:
            del buffer[:pos]
        return frames

    def _fail(self, message: str) -> None:
        self._error = message
        raise RelpFrameError(message)
