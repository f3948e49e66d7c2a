"""Validation, normalisation and JSON rendering of audit events.

Platform services give the publisher an event as a JSON-shaped mapping. :func:`validate_event`
checks it against the contract (``schemas/avro/`` and ``schemas/audit_event.schema.json``) and
returns the canonical :class:`AuditEvent` dict; :func:`to_json_bytes` turns a canonical event
into the bytes every connector delivers. Used by the publisher and the generator (before
encoding), by ``streams.codec`` (timestamp conversion) and by the connectors (JSON bytes).

Normalisation decisions:

* ``timestamp`` may carry any UTC offset (or be an aware ``datetime``); it is converted to UTC
  and rendered ``YYYY-MM-DDTHH:MM:SS.mmmZ``. Digits below the millisecond are truncated, not
  rounded, so an event never moves into the next millisecond. Leap seconds (``:60``) and
  instants before 1970-01-01T00:00:00Z are rejected.
* ``source_ip`` is rewritten in canonical form (``2001:DB8::1`` -> ``2001:db8::1``), and an
  IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what dual-stack sockets report) becomes the
  IPv4 address. Scoped IPv6 addresses (``fe80::1%eth0``) are rejected.
* Optional fields (``actor.email``, ``resource.name``, ``source_ip``) that are missing become
  ``null``, and ``null`` keys are kept in the JSON: every delivered event has the same keys, so
  SIEM field extractions never depend on presence. ``metadata`` defaults to ``{}``.
* ``metadata`` is any JSON object: integers must fit in a signed 64-bit integer, floats must be
  finite, and containers nest at most :data:`MAX_METADATA_DEPTH` deep (the metadata object
  counts as one level). Tuples are accepted and become lists; key order is kept. The checks
  live in :mod:`streams.event_metadata`, whose public names are re-exported here.
* ``tenant_id`` and ``event_id`` are tokens (letters, digits, ``_ . : -``, starting with a
  letter or digit, at most 128 characters) because they end up in object names, HTTP headers
  and Kafka keys. Other text fields must be non-empty and free of control characters.
* ``action`` is ``category.verb`` in lower snake_case with a category of the catalogue; a verb
  the catalogue does not list yet is accepted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal, TypeAlias, TypedDict, cast

import orjson

from streams.catalogue import category_names, category_of
from streams.errors import FieldProblem, InvalidEventError
from streams.event_metadata import INT64_MAX as INT64_MAX
from streams.event_metadata import INT64_MIN as INT64_MIN
from streams.event_metadata import MAX_METADATA_DEPTH, JsonValue, check_metadata
from streams.event_metadata import json_type_name as _type_name

__all__ = [
    "ACTOR_TYPES",
    "MAX_METADATA_DEPTH",
    "OUTCOMES",
    "Actor",
    "ActorType",
    "AuditEvent",
    "JsonValue",
    "Outcome",
    "Resource",
    "format_timestamp",
    "parse_timestamp",
    "to_json_bytes",
    "validate_event",
]

ActorType: TypeAlias = Literal["user", "machine_account", "system"]
Outcome: TypeAlias = Literal["success", "failure", "denied"]

ACTOR_TYPES: tuple[ActorType, ...] = ("user", "machine_account", "system")
OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "denied")
MAX_TIMESTAMP_MILLIS = 253402300799999  # 9999-12-31T23:59:59.999Z


class Actor(TypedDict):
    """Who performed the operation."""

    type: ActorType
    id: str
    email: str | None


class Resource(TypedDict):
    """What the operation was applied to."""

    type: str
    id: str
    name: str | None


class AuditEvent(TypedDict):
    """A canonical audit event, keys in delivery order."""

    event_id: str
    timestamp: str
    tenant_id: str
    actor: Actor
    action: str
    resource: Resource
    outcome: Outcome
    metadata: dict[str, JsonValue]
    source_ip: str | None


_TOP_KEYS = frozenset(AuditEvent.__annotations__)
_ACTOR_KEYS = frozenset(Actor.__annotations__)
_RESOURCE_KEYS = frozenset(Resource.__annotations__)
_MISSING: Any = object()

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")
_ID_HINT = "must start with a letter or digit and use only letters, digits and _ . : -"
_SNAKE = re.compile(r"[a-z][a-z0-9_]*\Z")
_ACTION = re.compile(r"([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\Z")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:[.,]([0-9]+))?)?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?)\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_ONE_MS = timedelta(milliseconds=1)
_SECOND_PREFIX: dict[int, str] = {}
_MILLIS_SUFFIX = tuple(f".{ms:03d}Z" for ms in range(1000))


def _show(value: object) -> str:
    """Short repr of a wrong value for a problem message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- timestamps


def format_timestamp(millis: int) -> str:
    """Render milliseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    ``OverflowError``/``ValueError`` when the instant is outside years 1..9999.
    """
    seconds = millis // 1000
    prefix = _SECOND_PREFIX.get(seconds)
    if prefix is None:
        prefix = (_EPOCH_NAIVE + timedelta(seconds=seconds)).isoformat()
        if len(_SECOND_PREFIX) >= 4096:
            _SECOND_PREFIX.clear()
        _SECOND_PREFIX[seconds] = prefix
    return prefix + _MILLIS_SUFFIX[millis - seconds * 1000]


def parse_timestamp(value: object) -> int:
    """Milliseconds since the epoch of an ISO 8601 timestamp with an offset (or aware datetime).

    Sub-millisecond digits are truncated. ``ValueError`` says what is wrong.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("datetime must be timezone-aware")
        dt = value
    elif isinstance(value, str):
        m = _TIMESTAMP.match(value)
        if m is None:
            raise ValueError(
                "must be an ISO 8601 date and time with a UTC offset, like 2026-03-15T08:42:17.003Z"
            )
        year, month, day, hour, minute, sec, frac, zulu, sign, off_h, off_m = m.groups()
        offset = timedelta(0)
        if not zulu:
            offset = timedelta(hours=int(off_h), minutes=int(off_m or 0))
            if sign == "-":
                offset = -offset
        micros = int((frac or "")[:3].ljust(3, "0")) * 1000
        try:
            y, mo, d, h, mi, se = (int(x) for x in (year, month, day, hour, minute, sec or 0))
            dt = datetime(y, mo, d, h, mi, se, micros, tzinfo=timezone(offset))
        except ValueError as exc:
            raise ValueError(f"not a valid date and time ({exc})") from None
    else:
        raise ValueError(f"must be a string, got {_type_name(value)}")
    try:
        millis = (dt - _EPOCH) // _ONE_MS
    except OverflowError:
        millis = -1
    if not 0 <= millis <= MAX_TIMESTAMP_MILLIS:
        raise ValueError("must be between 1970-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z")
    return millis


# --------------------------------------------------------------------------- field checks


class _Checker:
    """Collects every problem of one event."""

    def __init__(self) -> None:
        self.problems: list[FieldProblem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(FieldProblem(path, message))

    def keys(self, obj: Mapping[Any, object], allowed: frozenset[str], prefix: str) -> None:
        for key in obj:
            if key not in allowed:
                self.add(f"{prefix}{key}", "unknown field")

    def text(
        self,
        value: object,
        path: str,
        max_len: int,
        required: bool,
        pattern: re.Pattern[str] | None,
        pattern_hint: str,
    ) -> str | None:
        if value is _MISSING or value is None:
            if required:
                self.add(path, "is required")
            return None
        if not isinstance(value, str):
            self.add(path, f"must be a string, got {_type_name(value)}")
            return None
        if not value:
            self.add(path, "must not be empty")
            return None
        if len(value) > max_len:
            self.add(path, f"must be at most {max_len} characters, got {len(value)}")
            return None
        if pattern is not None:
            if not pattern.match(value):
                self.add(path, pattern_hint)
                return None
        elif _BAD_CHARS.search(value):
            self.add(path, "must not contain control characters or unpaired surrogates")
            return None
        return str(value)


def _nested(checker: _Checker, obj: Mapping[str, object], name: str) -> Mapping[Any, object]:
    value = obj.get(name, _MISSING)
    if value is _MISSING or value is None:
        checker.add(name, "is required")
        return {}
    if not isinstance(value, Mapping):
        checker.add(name, f"must be an object, got {_type_name(value)}")
        return {}
    checker.keys(value, _ACTOR_KEYS if name == "actor" else _RESOURCE_KEYS, f"{name}.")
    return value


# path, maximum length, required, pattern (None: any text without control characters), hint
_TEXT_FIELDS: tuple[tuple[str, int, bool, re.Pattern[str] | None, str], ...] = (
    ("event_id", 128, True, _TOKEN, _ID_HINT),
    ("tenant_id", 128, True, _TOKEN, _ID_HINT),
    ("actor.id", 256, True, None, ""),
    # The e-mail is whatever the identity provider holds; an audit record is never refused
    # over its spelling (the spec's own example shows an obfuscated one), only over control
    # characters or length.
    ("actor.email", 320, False, None, ""),
    ("action", 128, True, _ACTION, "must be category.verb in lower snake_case (certificate.issue)"),
    ("resource.type", 64, True, _SNAKE, "must be lower snake_case, like certificate"),
    ("resource.id", 256, True, None, ""),
    ("resource.name", 1024, False, None, ""),
)


def _choice(
    c: _Checker, obj: Mapping[Any, object], key: str, path: str, allowed: tuple[str, ...]
) -> None:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        c.add(path, "is required")
    elif value not in allowed:
        c.add(path, f"must be one of {', '.join(allowed)}, got {_show(value)}")


def validate_event(obj: Mapping[str, object]) -> AuditEvent:
    """Check an event against the contract and return its canonical form (a new dict).

    Raises :class:`InvalidEventError` whose ``problems`` list every wrong field at once.
    """
    if not isinstance(obj, Mapping):
        raise InvalidEventError([FieldProblem("$", f"must be an object, got {_type_name(obj)}")])
    c = _Checker()
    c.keys(obj, _TOP_KEYS, "")
    parts = {"": obj, "actor": _nested(c, obj, "actor"), "resource": _nested(c, obj, "resource")}
    text: dict[str, str | None] = {}
    for path, max_len, required, pattern, hint in _TEXT_FIELDS:
        parent, _, key = path.rpartition(".")
        value = parts[parent].get(key, _MISSING)
        text[path] = c.text(value, path, max_len, required, pattern, hint)
    action = text["action"]
    if action is not None and category_of(action) is None:
        known = ", ".join(category_names())
        c.add("action", f"unknown category {action.partition('.')[0]!r} (known: {known})")

    millis = 0
    raw_ts = obj.get("timestamp", _MISSING)
    if raw_ts is _MISSING or raw_ts is None:
        c.add("timestamp", "is required")
    else:
        try:
            millis = parse_timestamp(raw_ts)
        except ValueError as exc:
            c.add("timestamp", str(exc))
    _choice(c, parts["actor"], "type", "actor.type", ACTOR_TYPES)
    _choice(c, obj, "outcome", "outcome", OUTCOMES)

    raw_meta = obj.get("metadata", _MISSING)
    metadata: dict[str, JsonValue] = {}
    if isinstance(raw_meta, Mapping):
        metadata, metadata_problems = check_metadata(raw_meta)
        c.problems += metadata_problems
    elif raw_meta is not _MISSING and raw_meta is not None:
        c.add("metadata", f"must be an object, got {_type_name(raw_meta)}")

    source_ip: str | None = None
    raw_ip = obj.get("source_ip", _MISSING)
    if raw_ip is not _MISSING and raw_ip is not None:
        try:
            if not isinstance(raw_ip, str) or "%" in raw_ip:
                raise ValueError(raw_ip)
            ip = ipaddress.ip_address(raw_ip)
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            source_ip = str(mapped or ip)
        except ValueError:
            c.add("source_ip", f"must be an IPv4 or IPv6 address (no zone), got {_show(raw_ip)}")

    if c.problems:
        raise InvalidEventError(c.problems, event_id=text["event_id"])
    # No problem recorded, so every required text field is a str and the choices are valid.
    return {
        "event_id": cast(str, text["event_id"]),
        "timestamp": format_timestamp(millis),
        "tenant_id": cast(str, text["tenant_id"]),
        "actor": {
            "type": cast(ActorType, parts["actor"]["type"]),
            "id": cast(str, text["actor.id"]),
            "email": text["actor.email"],
        },
        "action": cast(str, action),
        "resource": {
            "type": cast(str, text["resource.type"]),
            "id": cast(str, text["resource.id"]),
            "name": text["resource.name"],
        },
        "outcome": cast(Outcome, obj["outcome"]),
        "metadata": metadata,
        "source_ip": source_ip,
    }


def to_json_bytes(event: Mapping[str, Any]) -> bytes:
    """The delivered JSON of a canonical event (from :func:`validate_event` or the codec).

    Compact UTF-8 JSON, keys in the order of the spec's example, ``null`` optional fields kept,
    metadata keys in their original order. Does not re-validate; an input that is not a
    canonical event raises :class:`InvalidEventError`.
    """
    try:
        actor = event["actor"]
        resource = event["resource"]
        return orjson.dumps(
            {
                "event_id": event["event_id"],
                "timestamp": event["timestamp"],
                "tenant_id": event["tenant_id"],
                "actor": {"type": actor["type"], "id": actor["id"], "email": actor.get("email")},
                "action": event["action"],
                "resource": {
                    "type": resource["type"],
                    "id": resource["id"],
                    "name": resource.get("name"),
                },
                "outcome": event["outcome"],
                "metadata": event.get("metadata", {}),
                "source_ip": event.get("source_ip"),
            }
        )
    except (KeyError, TypeError, AttributeError, orjson.JSONEncodeError) as exc:
        problem = FieldProblem("$", f"not a canonical event ({type(exc).__name__}: {exc})")
        raise InvalidEventError([problem]) from exc
