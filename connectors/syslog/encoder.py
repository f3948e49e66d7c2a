"""Turning one audit event into one RFC 5424 syslog message, and framing it for the wire.

Who calls it: the syslog sink, once per event. :func:`encode` builds the message from the
event's :class:`~streams.engine.sink.Envelope` and the destination's :class:`SyslogFormat`;
the sink then frames it for its transport:

* TCP / TLS: :func:`frame_octet_counted` (RFC 6587 octet counting, ``LEN SP MSG``), which is
  safe for any payload because the receiver reads exactly ``LEN`` bytes.
* TCP for legacy receivers that only split on newlines: :func:`frame_lf`.
* UDP: no framing, one message per datagram (RFC 5426); :func:`fits_datagram` tells the sink
  whether a message fits its maximum datagram size. A message that does not fit is never cut
  (a cut JSON is worse than none): the sink applies its oversize policy (dead-letter).

Message layout (one line, one space between fields; wrapped here)::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
    [SD-ID event_id="…" tenant_id="…" outcome="…"] MSG

* ``PRI`` = facility * 8 + severity. The facility is configured (default 13, "log audit");
  the severity comes from the action catalogue and the outcome (see :func:`syslog_severity`).
* ``1`` is the protocol version.
* ``TIMESTAMP`` is the event's own ``timestamp`` (already RFC 3339, UTC, milliseconds, ``Z``),
  not the time of sending, so a replayed backlog keeps the times the operations happened.
* ``HOSTNAME``, ``APP-NAME``, ``PROCID`` are configured; ``MSGID`` is the action.
* One structured-data element under the configured SD-ID names the event, its tenant and the
  outcome, so receivers can route and filter without parsing the JSON.
* ``MSG`` is the event's JSON, byte for byte what every other connector delivers
  (``Envelope.json``), optionally preceded by a UTF-8 BOM (off by default, see
  :class:`SyslogFormat`).

The spec's example event becomes (one line)::

    <110>1 2026-03-15T08:42:17.003Z zaita siem-export - certificate.issue [audit@32473
    event_id="evt_a1b2c3d4e5f6" tenant_id="tnt_7g8h9i0j" outcome="success"]
    {"event_id":"evt_a1b2c3d4e5f6","timestamp":"2026-03-15T08:42:17.003Z",...}

Why frames cannot be split or desynchronised: header fields hold printable ASCII without
spaces only (configured values are checked, the action is sanitized), parameter values are
escaped as RFC 5424 requires, and the JSON never holds a raw CR or LF (JSON escapes control
characters inside strings). Octet counting does not depend on content at all; LF framing
additionally escapes any CR/LF that an unvalidated event might still smuggle in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from streams.catalogue import severity_for
from streams.engine.sink import Envelope
from streams.event import format_timestamp, parse_timestamp

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "FACILITY_LOG_AUDIT",
    "MAX_APP_NAME",
    "MAX_HOSTNAME",
    "MAX_MSGID",
    "MAX_PROCID",
    "MAX_UDP_PAYLOAD",
    "MIN_DATAGRAM",
    "NILVALUE",
    "UTF8_BOM",
    "SyslogFormat",
    "encode",
    "escape_sd_value",
    "fits_datagram",
    "frame_lf",
    "frame_octet_counted",
    "sanitize_header",
    "syslog_severity",
]

FACILITY_LOG_AUDIT = 13
"""RFC 5424 facility 13, "log audit": the code meant for audit trails, hence the default."""

NILVALUE = "-"
UTF8_BOM = b"\xef\xbb\xbf"

# Header field limits of the RFC 5424 grammar (characters, all ASCII, so also bytes).
MAX_HOSTNAME = 255
MAX_APP_NAME = 48
MAX_PROCID = 128
MAX_MSGID = 32
_MAX_SD_NAME = 32

MIN_DATAGRAM = 480
"""Smallest message every RFC 5426 receiver must accept (IPv4); a lower limit makes no sense."""
MAX_UDP_PAYLOAD = 65507
"""Largest UDP payload over IPv4 (65535 - 20 IP header - 8 UDP header)."""
DEFAULT_MAX_DATAGRAM = 2048
"""Default maximum UDP message size; see :func:`fits_datagram` for the reasoning."""

# Every code point outside PRINTUSASCII (33..126) becomes "_" in a header field. ASCII input,
# the normal case, goes through str.translate; the rest through a slower per-character path.
_HEADER_ASCII = str.maketrans({c: "_" for c in (*range(33), 127)})
_SD_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "]": "\\]"})
_SD_NAME_FORBIDDEN = frozenset('= ]"@')
_PEN = re.compile(r"[0-9]+(?:\.[0-9]+)*\Z")
# The shape streams.event.format_timestamp produces; anything else is normalised first.
_CANONICAL_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z")

# (action, outcome) -> (severity, MSGID). Actions come from a catalogue of a few dozen names;
# the bound only matters if unvalidated input floods it with new ones.
_ACTION_CACHE: dict[tuple[str, str], tuple[int, str]] = {}
_ACTION_CACHE_MAX = 4096


def _is_printusascii(value: str) -> bool:
    # isprintable() on ASCII accepts 32..126; the space is excluded separately.
    return value.isascii() and value.isprintable() and " " not in value


def _check_header(name: str, value: str, max_len: int) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string (use {NILVALUE!r} for none)")
    if len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")
    if not _is_printusascii(value):
        raise ValueError(
            f"{name} must be printable US-ASCII without spaces (33..126), got {value!r}"
        )


def _check_sd_id(value: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_SD_NAME:
        raise ValueError(f"sd_id must be 1 to {_MAX_SD_NAME} characters, got {value!r}")
    name, at, pen = value.partition("@")
    if (
        not at
        or not name
        or not _is_printusascii(value)
        or _SD_NAME_FORBIDDEN.intersection(name)
        or not _PEN.match(pen)
    ):
        raise ValueError(
            "sd_id must be name@<private enterprise number> (like audit@32473): printable "
            f"US-ASCII, no space, '=', ']', '\"' and one '@', got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class SyslogFormat:
    """How one destination wants its messages to look (built once, shared by every event).

    ``ValueError`` names the first wrong field. Configured header values are checked, not
    sanitized: a typo in configuration should be reported, not silently rewritten.
    """

    facility: int = FACILITY_LOG_AUDIT
    """0..23; 13 ("log audit") is the RFC 5424 facility for audit records."""

    hostname: str = "zaita"
    """Who originates the messages. A fixed name rather than the pod's host name, which
    changes with every deployment and would scatter one tenant's stream across "hosts"."""

    app_name: str = "siem-export"
    procid: str = NILVALUE
    """A process id carries no meaning across a fleet of workers, so it is left nil."""

    sd_id: str = "audit@32473"
    """Structured-data id for our parameters. Ids without ``@`` are reserved for IANA; private
    ones are ``name@<enterprise number>``. 32473 is the number IANA reserves for documentation
    (RFC 5612): deployments should set the id to one under their own enterprise number."""

    utf8_bom: bool = False
    """Start MSG with a UTF-8 byte order mark. RFC 5424 recommends one for UTF-8 text, but the
    payload is JSON, and JSON sent over a network must not start with a BOM (RFC 8259 §8.1):
    many SIEM parsers take the three bytes as part of the text and then fail to parse the
    event. Only enable it for a receiver known to require it."""

    _pri: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _middle: str = field(init=False, repr=False, compare=False)
    _sd_open: str = field(init=False, repr=False, compare=False)
    _bom: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        facility = self.facility
        if not isinstance(facility, int) or isinstance(facility, bool) or not 0 <= facility <= 23:
            raise ValueError(f"facility must be an integer from 0 to 23, got {facility!r}")
        _check_header("hostname", self.hostname, MAX_HOSTNAME)
        _check_header("app_name", self.app_name, MAX_APP_NAME)
        _check_header("procid", self.procid, MAX_PROCID)
        _check_sd_id(self.sd_id)
        if not isinstance(self.utf8_bom, bool):
            raise ValueError(f"utf8_bom must be true or false, got {self.utf8_bom!r}")
        # Everything that does not depend on the event, rendered once.
        pri = tuple(f"<{facility * 8 + severity}>1 " for severity in range(8))
        object.__setattr__(self, "_pri", pri)
        object.__setattr__(self, "_middle", f" {self.hostname} {self.app_name} {self.procid} ")
        object.__setattr__(self, "_sd_open", f' [{self.sd_id} event_id="')
        object.__setattr__(self, "_bom", UTF8_BOM if self.utf8_bom else b"")


def syslog_severity(action: str, outcome: str) -> int:
    """RFC 5424 severity (0 most urgent .. 7) of an event with this action and outcome.

    The catalogue (``schemas/actions.yaml``) names severities with the RFC's own words, so the
    mapping is the RFC's table itself:

    =============  ====
    catalogue      code
    =============  ====
    emergency      0
    alert          1
    critical       2
    error          3
    warning        4
    notice         5
    informational  6
    debug          7
    =============  ====

    The catalogue's severity is that of a successful operation. A ``failure`` or ``denied``
    outcome lifts it to the catalogue's outcome floor when the floor is more urgent (failure:
    notice, denied: warning; stricter for authentication, machine_account, pki and security),
    and never lowers it, so a failed or refused operation is never less urgent than the same
    operation succeeding. The rule lives in :mod:`streams.catalogue`; this does not repeat it.
    """
    return int(severity_for(action, outcome))


def sanitize_header(value: str, max_len: int) -> str:
    """``value`` made fit for a syslog header field of at most ``max_len`` characters.

    Header fields are space-separated printable ASCII, so every other character (space,
    control, non-ASCII) is *replaced* by ``_``, one per character. Replacing rather than
    dropping keeps the result recognisable and never merges two words into one, nor makes a
    value empty. The result is cut to ``max_len``; an empty value becomes the nil value ``-``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    # Truncate first: the mapping is one character to one character.
    value = value[:max_len]
    if value.isascii():
        clean = value.translate(_HEADER_ASCII)
    else:
        clean = "".join(ch if "!" <= ch <= "~" else "_" for ch in value)
    return clean or NILVALUE


def escape_sd_value(text: str) -> str:
    """``text`` as an SD-PARAM value: ``"``, ``\\`` and ``]`` preceded by a backslash.

    These three are the only characters that could end the value or the element early (or be
    taken for an escape); everything else, non-ASCII included, is carried as UTF-8 unchanged.
    """
    # Ids and outcomes almost never hold one of the three; str.translate with a mapping is
    # roughly ten times slower than these scans, so only pay for it when needed.
    if '"' in text or "\\" in text or "]" in text:
        return text.translate(_SD_ESCAPES)
    return text


def _timestamp(value: object) -> str:
    if isinstance(value, str) and _CANONICAL_TS.match(value):
        return value
    # Not the canonical shape (an event that bypassed validation): normalise it, or raise
    # ValueError rather than put a malformed field into the header.
    return format_timestamp(parse_timestamp(value))


def _action_info(action: str, outcome: str) -> tuple[int, str]:
    key = (action, outcome)
    info = _ACTION_CACHE.get(key)
    if info is None:
        info = (syslog_severity(action, outcome), sanitize_header(action, MAX_MSGID))
        if len(_ACTION_CACHE) >= _ACTION_CACHE_MAX:
            _ACTION_CACHE.clear()
        _ACTION_CACHE[key] = info
    return info


def encode(env: Envelope, fmt: SyslogFormat) -> bytes:
    """The RFC 5424 message of one event (unframed; see the module docstring for the layout).

    ``ValueError`` if the event's timestamp cannot be read as a date and time.
    """
    event = env.event
    action = event["action"]
    outcome = event["outcome"]
    severity, msgid = _action_info(action, outcome)
    head = (
        f"{fmt._pri[severity]}{_timestamp(event['timestamp'])}{fmt._middle}{msgid}"
        f"{fmt._sd_open}{escape_sd_value(event['event_id'])}"
        f'" tenant_id="{escape_sd_value(event["tenant_id"])}'
        f'" outcome="{escape_sd_value(outcome)}"] '
    )
    return head.encode() + fmt._bom + env.json


def frame_octet_counted(msg: bytes) -> bytes:
    """``msg`` framed for a stream by octet counting (RFC 6587): ``LEN SP MSG``.

    ``LEN`` is the message's length in bytes, so the receiver never looks at the content to
    find the end of a message. ``ValueError`` for an empty message (the grammar has no zero).
    """
    if not msg:
        raise ValueError("cannot frame an empty message")
    return b"%d %b" % (len(msg), msg)


def frame_lf(msg: bytes) -> bytes:
    """``msg`` framed for a stream by a trailing newline, for receivers without octet counting.

    Such receivers end a message at the first LF (some also at CR), so a CR or LF inside the
    message would split it and make the rest look like a new message. Any such byte is
    written as the two characters ``\\r`` / ``\\n``. Messages from :func:`encode` do not contain
    them (header fields are sanitized, the JSON escapes control characters, validated ids have
    none), so for them this only appends the newline; the replacement guards the rest.
    Receivers that accept both framings on one port (rsyslog's imtcp) take a frame starting
    with a digit for octet counting; a message from :func:`encode` starts with ``<``.
    """
    if b"\n" in msg or b"\r" in msg:
        msg = msg.replace(b"\r", b"\\r").replace(b"\n", b"\\n")
    return msg + b"\n"


def fits_datagram(msg: bytes, max_bytes: int = DEFAULT_MAX_DATAGRAM) -> bool:
    """Whether ``msg`` may go out as one UDP datagram of at most ``max_bytes`` bytes.

    The default, 2048, is the size RFC 5426 says every receiver should accept (480 over IPv4
    and 1180 over IPv6 are the hard minimums), so a message within it is not cut short by a
    conformant receiver. Receivers often accept more (rsyslog 8 KiB by default, syslog-ng
    64 KiB) and the limit may be raised up to 65507 for them, at the cost of IP
    fragmentation above the path MTU (about 1.4 KiB), where a lost fragment loses the whole
    event. A message that does not fit is never truncated: the sink dead-letters it (or uses
    TCP). ``ValueError`` if ``max_bytes`` is outside 480..65507.
    """
    if not MIN_DATAGRAM <= max_bytes <= MAX_UDP_PAYLOAD:
        raise ValueError(
            f"max_bytes must be from {MIN_DATAGRAM} to {MAX_UDP_PAYLOAD}, got {max_bytes}"
        )
    return len(msg) <= max_bytes
