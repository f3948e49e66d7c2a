"""Test helpers for syslog: a strict RFC 5424 reader, stream splitters and hostile events.

The reader is written from the RFC 5424 grammar, independently of connectors.syslog.encoder,
so a test that uses it passes only if a strict receiver would see the fields we meant.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from streams.engine.sink import Envelope
from streams.event import validate_event
from streams.synthetic import EventFactory
from tests.spec_example import SPEC_EXAMPLE

# --------------------------------------------------------------------------- an RFC 5424 reader

_PRINT = rb"[\x21-\x7e]"
_HEADER = re.compile(
    rb"<(?P<pri>0|[1-9][0-9]{0,2})>(?P<version>[1-9][0-9]{0,2}) "
    rb"(?P<timestamp>-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    rb"(?:Z|[+-][0-9]{2}:[0-9]{2})) "
    rb"(?P<hostname>" + _PRINT + rb"{1,255}) "
    rb"(?P<app_name>" + _PRINT + rb"{1,48}) "
    rb"(?P<procid>" + _PRINT + rb"{1,128}) "
    rb"(?P<msgid>" + _PRINT + rb"{1,32}) "
)
_SD_NAME_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b'= ]"')


@dataclass
class Parsed:
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: list[tuple[str, list[tuple[str, str]]]]
    msg: bytes

    @property
    def params(self) -> dict[str, str]:
        assert len(self.sd) == 1
        return dict(self.sd[0][1])


class SyntaxProblem(AssertionError):
    pass


def _sd_name(data: bytes, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(data) and data[pos] in _SD_NAME_BYTES:
        pos += 1
    if not 1 <= pos - start <= 32:
        raise SyntaxProblem(f"bad SD-NAME at {start}")
    return data[start:pos].decode("ascii"), pos


def _expect(data: bytes, pos: int, token: bytes) -> int:
    if data[pos : pos + len(token)] != token:
        raise SyntaxProblem(f"expected {token!r} at {pos}, got {data[pos : pos + 10]!r}")
    return pos + len(token)


def param_value(data: bytes, pos: int) -> tuple[str, int]:
    out = bytearray()
    while True:
        if pos >= len(data):
            raise SyntaxProblem("unterminated PARAM-VALUE")
        byte = data[pos]
        if byte == ord("\\") and pos + 1 < len(data) and data[pos + 1] in b'"\\]':
            out.append(data[pos + 1])
            pos += 2
        elif byte == ord('"'):
            return out.decode("utf-8"), pos + 1
        elif byte == ord("]"):
            raise SyntaxProblem(f"unescaped ']' inside PARAM-VALUE at {pos}")
        else:
            out.append(byte)
            pos += 1


def parse_5424(data: bytes) -> Parsed:
    """Parse one unframed RFC 5424 message strictly; SyntaxProblem says what is wrong."""
    m = _HEADER.match(data)
    if m is None:
        raise SyntaxProblem(f"header does not match RFC 5424: {data[:120]!r}")
    pri = int(m["pri"])
    if pri > 191:
        raise SyntaxProblem(f"PRI {pri} out of range")
    pos = m.end()
    sd: list[tuple[str, list[tuple[str, str]]]] = []
    if data[pos : pos + 1] == b"-":
        pos += 1
    else:
        while data[pos : pos + 1] == b"[":
            sd_id, pos = _sd_name(data, pos + 1)
            params: list[tuple[str, str]] = []
            while data[pos : pos + 1] == b" ":
                name, pos = _sd_name(data, pos + 1)
                pos = _expect(data, pos, b'="')
                value, pos = param_value(data, pos)
                params.append((name, value))
            pos = _expect(data, pos, b"]")
            sd.append((sd_id, params))
        if not sd:
            raise SyntaxProblem(f"expected STRUCTURED-DATA at {pos}")
    if pos == len(data):
        msg = b""
    else:
        pos = _expect(data, pos, b" ")
        msg = data[pos:]

    def text(group: str) -> str:
        return m[group].decode("ascii")

    return Parsed(
        pri=pri,
        version=int(m["version"]),
        timestamp=text("timestamp"),
        hostname=text("hostname"),
        app_name=text("app_name"),
        procid=text("procid"),
        msgid=text("msgid"),
        sd=sd,
        msg=msg,
    )


def split_octet_counted(stream: bytes) -> list[bytes]:
    """Split an RFC 6587 octet-counted stream; fails on any leftover or short frame."""
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        m = re.compile(rb"[1-9][0-9]{0,8} ").match(stream, pos)
        if m is None:
            raise SyntaxProblem(f"expected MSG-LEN SP at {pos}: {stream[pos : pos + 20]!r}")
        length = int(m.group()[:-1])
        end = m.end() + length
        if end > len(stream):
            raise SyntaxProblem("frame runs past the end of the stream")
        out.append(stream[m.end() : end])
        pos = end
    return out


def split_lf(stream: bytes) -> list[bytes]:
    """Split a newline-terminated stream the way a legacy receiver does."""
    assert stream.endswith(b"\n")
    return stream[:-1].split(b"\n")


# --------------------------------------------------------------------------- fixtures


def envelope(event: dict[str, Any], validate: bool = True) -> Envelope:
    ev: Any = validate_event(event) if validate else event
    return Envelope("audit.events.v1", 0, 0, 0, ev["tenant_id"], ev, 0, raw=b"")


def synthetic_envelopes(count: int, seed: int = 7) -> list[Envelope]:
    factory = EventFactory(25, seed=seed)
    return [envelope(ev) for ev in factory.events(count)]


ADVERSARIAL_METADATA: dict[str, Any] = {
    "note": "line one\nline two\r\nline three\rend",
    "quote": 'she said "hi"',
    "brackets": '[x] ]]] [audit@32473 event_id="evil"] ',
    "backslash": 'C:\\temp\\ \\] \\"',
    "fake_frame": "123 <13>1 fake",
    "fake_line": "\n<13>1 2026-01-01T00:00:00.000Z evil - - - - injected\n",
    "unicode": "é 中文 🔐",
    "controls": "\x00\x07\x1b[31m\x7f\u2028\u2029",
    "nested": {"list": ["\n", '"', "]", "\\", "🔐"]},
}


def adversarial_event() -> dict[str, Any]:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["metadata"] = ADVERSARIAL_METADATA
    event["resource"]["name"] = 'Zertifikat für 中文 🔐 "quoted" [x] \\ ] 123 <13>1 fake'
    event["actor"]["email"] = "josé@exämple.com"
    event["outcome"] = "failure"
    return event
