"""Avro single-object encoding of audit events, the byte form on the ``audit.events`` topic.

A record is ``C3 01``, the writer schema's CRC-64-AVRO fingerprint (of its Parsing Canonical
Form, 8 bytes little-endian as the Avro specification and Java write it), then the Avro binary
body. The publisher encodes with :meth:`AuditEventCodec.encode`; the consumer engine decodes
with :meth:`AuditEventCodec.decode` (or ``decode_to_json``) and hands the canonical event on.

Writers use the pinned :data:`WRITER_VERSION`, so a new version can reach readers first.
Readers know every file in ``schemas/avro/`` (plus extra writer schemas given to the
constructor) and resolve other writers to the newest schema with fastavro's pure-Python reader,
which turns hostile nesting into a ``RecursionError`` where the compiled reader would overflow
the C stack. Version 1 records take a hand-written encoder and decoder, several times faster
than fastavro and tested against it; the decoder is used only while the newest schema is
version 1 itself (fingerprint :data:`FAST_PATH_FINGERPRINT`).
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from fastavro import parse_schema
from fastavro._read_py import schemaless_reader as _py_schemaless_reader
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

from streams.catalogue import schemas_dir
from streams.errors import (
    ConfigError,
    CorruptRecordError,
    FieldProblem,
    InvalidEventError,
    UnknownSchemaError,
)
from streams.event import (
    ACTOR_TYPES,
    INT64_MAX,
    INT64_MIN,
    MAX_METADATA_DEPTH,
    OUTCOMES,
    ActorType,
    AuditEvent,
    JsonValue,
    Outcome,
    format_timestamp,
    parse_timestamp,
    validate_event,
)

__all__ = [
    "FAST_PATH_FINGERPRINT",
    "MARKER",
    "WRITER_VERSION",
    "AuditEventCodec",
    "packaged_schemas",
    "read_fingerprint",
    "schema_fingerprint",
]

MARKER = b"\xc3\x01"
_HEADER_LEN = 10
WRITER_VERSION = 1
FAST_PATH_FINGERPRINT = bytes.fromhex("17b5f1e4e39ccf0d")  # audit_event.v1.avsc
_SCHEMA_FILE = re.compile(r"audit_event\.v([0-9]+)\.avsc\Z")
_ACTOR_CODE = {name: i for i, name in enumerate(ACTOR_TYPES)}
_OUTCOME_CODE = {name: i for i, name in enumerate(OUTCOMES)}
_ACTOR_BY_BYTE: dict[int, ActorType] = {2 * i: name for i, name in enumerate(ACTOR_TYPES)}
_OUTCOME_BY_BYTE: dict[int, Outcome] = {2 * i: name for i, name in enumerate(OUTCOMES)}
_DOUBLE = struct.Struct("<d")


class _Corrupt(Exception):
    """Internal: the body does not follow the schema."""


def schema_fingerprint(schema: Mapping[str, Any] | str) -> bytes:
    """The 8 bytes that follow the marker: CRC-64-AVRO of the Parsing Canonical Form, LE."""
    raw: Any = json.loads(schema) if isinstance(schema, str) else schema
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))


def read_fingerprint(data: bytes) -> bytes:
    """The writer fingerprint of a single-object record; ``CorruptRecordError`` if no header."""
    if len(data) < _HEADER_LEN or data[:2] != MARKER:
        raise CorruptRecordError("not an Avro single-object record (missing C3 01 marker)")
    return bytes(data[2:_HEADER_LEN])


@functools.cache
def packaged_schemas() -> tuple[tuple[int, dict[str, Any]], ...]:
    """Every packaged ``audit_event.vN.avsc`` as ``(N, schema)``, oldest first."""
    folder = schemas_dir().joinpath("avro")
    found = []
    for entry in folder.iterdir():
        m = _SCHEMA_FILE.match(entry.name)
        if m:
            found.append((int(m.group(1)), json.loads(entry.read_text(encoding="utf-8"))))
    return tuple(sorted(found, key=lambda item: item[0]))


def _strip_logical(schema: Any) -> Any:
    """Copy without ``logicalType`` so timestamps are read and written as plain longs."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(v) for v in schema]
    return schema


# --------------------------------------------------------------------------- fast encoder


def _put_long(out: bytearray, n: int) -> None:
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _put_str(out: bytearray, s: str) -> None:
    b = s.encode()
    _put_long(out, len(b))
    out += b


def _put_opt_str(out: bytearray, s: str | None) -> None:
    if s is None:
        out.append(0)
    else:
        out.append(2)
        _put_str(out, s)


def _put_value(out: bytearray, v: object, depth: int) -> None:
    if v is None:
        out.append(0)
    elif isinstance(v, bool):
        out += b"\x02\x01" if v else b"\x02\x00"
    elif isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise ValueError("integer does not fit in 64 bits")
        out.append(4)
        _put_long(out, v)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("NaN and infinities are not JSON")
        out.append(6)
        out += _DOUBLE.pack(v)
    elif isinstance(v, str):
        out.append(8)
        _put_str(out, v)
    elif isinstance(v, list | tuple | Mapping):
        if depth >= MAX_METADATA_DEPTH:
            raise ValueError("metadata nested too deep")
        if isinstance(v, Mapping):
            out.append(12)
            _put_map(out, v, depth + 1)
            return
        out.append(10)
        if v:
            _put_long(out, len(v))
            for item in v:
                _put_value(out, item, depth + 1)
        out.append(0)
    else:
        raise TypeError(f"{type(v).__name__} is not a JSON value")


def _put_map(out: bytearray, m: Mapping[str, object], depth: int) -> None:
    if m:
        _put_long(out, len(m))
        for key, value in m.items():
            _put_str(out, key)
            _put_value(out, value, depth)
    out.append(0)


def _encode_v1_body(out: bytearray, event: Mapping[str, Any]) -> None:
    """Append the version 1 body of a canonical ``event`` to ``out``."""
    actor, resource = event["actor"], event["resource"]
    _put_str(out, event["event_id"])
    _put_long(out, parse_timestamp(event["timestamp"]))
    _put_str(out, event["tenant_id"])
    out.append(2 * _ACTOR_CODE[actor["type"]])
    _put_str(out, actor["id"])
    _put_opt_str(out, actor.get("email"))
    _put_str(out, event["action"])
    _put_str(out, resource["type"])
    _put_str(out, resource["id"])
    _put_opt_str(out, resource.get("name"))
    out.append(2 * _OUTCOME_CODE[event["outcome"]])
    _put_map(out, event.get("metadata") or {}, 1)
    _put_opt_str(out, event.get("source_ip"))


# --------------------------------------------------------------------------- fast decoder


def _get_long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise _Corrupt("varint longer than 10 bytes")
    return (n >> 1) ^ -(n & 1), pos


def _get_str(buf: bytes, pos: int) -> tuple[str, int]:
    # No bounds check: a slice past the end is merely short, and the caller's next read (an
    # index, which raises) or the final "every byte consumed" check catches the truncation.
    n = buf[pos]
    if not n & 0x81:  # one-byte length, even (zigzag of a non-negative number)
        end = pos + 1 + (n >> 1)
        return buf[pos + 1 : end].decode(), end
    size, pos = _get_long(buf, pos)
    if size < 0:
        raise _Corrupt("negative string length")
    end = pos + size
    return buf[pos:end].decode(), end


def _get_opt_str(buf: bytes, pos: int) -> tuple[str | None, int]:
    branch = buf[pos]
    if branch == 0:
        return None, pos + 1
    if branch != 2:
        raise _Corrupt(f"bad union branch {branch}")
    n = buf[pos + 1]
    if not n & 0x81:  # inlined short string, as in _get_str
        end = pos + 2 + (n >> 1)
        return buf[pos + 2 : end].decode(), end
    return _get_str(buf, pos + 1)


def _get_value(buf: bytes, pos: int, depth: int) -> tuple[JsonValue, int]:
    branch = buf[pos]
    pos += 1
    if branch == 8:
        n = buf[pos]
        if not n & 0x81:  # inlined short string, as in _get_str
            end = pos + 1 + (n >> 1)
            return buf[pos + 1 : end].decode(), end
        return _get_str(buf, pos)
    if branch == 4:
        return _get_long(buf, pos)
    if branch == 0:
        return None, pos
    if branch == 2:
        flag = buf[pos]
        if flag > 1:
            raise _Corrupt("bad boolean")
        return flag == 1, pos + 1
    if branch == 6:
        if pos + 8 > len(buf):
            raise _Corrupt("double runs past the end")
        return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
    if branch not in (10, 12):
        raise _Corrupt(f"bad union branch {branch}")
    if depth >= MAX_METADATA_DEPTH:
        raise _Corrupt("metadata nested too deep")
    if branch == 12:
        return _get_map(buf, pos, depth + 1)
    items: list[JsonValue] = []
    while True:
        count, pos = _get_long(buf, pos)
        if count == 0:
            return items, pos
        if count < 0:
            count = -count
            _, pos = _get_long(buf, pos)
        for _ in range(count):
            item, pos = _get_value(buf, pos, depth + 1)
            items.append(item)


def _get_map(buf: bytes, pos: int, depth: int) -> tuple[dict[str, JsonValue], int]:
    out: dict[str, JsonValue] = {}
    while True:
        count, pos = _get_long(buf, pos)
        if count == 0:
            return out, pos
        if count < 0:
            count = -count
            _, pos = _get_long(buf, pos)
        for _ in range(count):
            n = buf[pos]
            if not n & 0x81:  # inlined short key, as in _get_str
                end = pos + 1 + (n >> 1)
                key = buf[pos + 1 : end].decode()
                pos = end
            else:
                key, pos = _get_str(buf, pos)
            out[key], pos = _get_value(buf, pos, depth)


def _decode_v1_body(buf: bytes) -> AuditEvent:
    pos = _HEADER_LEN
    event_id, pos = _get_str(buf, pos)
    millis, pos = _get_long(buf, pos)
    tenant_id, pos = _get_str(buf, pos)
    actor_type = _ACTOR_BY_BYTE[buf[pos]]
    actor_id, pos = _get_str(buf, pos + 1)
    email, pos = _get_opt_str(buf, pos)
    action, pos = _get_str(buf, pos)
    resource_type, pos = _get_str(buf, pos)
    resource_id, pos = _get_str(buf, pos)
    resource_name, pos = _get_opt_str(buf, pos)
    outcome = _OUTCOME_BY_BYTE[buf[pos]]
    if buf[pos + 1] == 0:
        metadata: dict[str, JsonValue] = {}
        pos += 2
    else:
        metadata, pos = _get_map(buf, pos + 1, 1)
    source_ip, pos = _get_opt_str(buf, pos)
    if pos != len(buf):
        raise _Corrupt(f"{len(buf) - pos} unexpected trailing byte(s)")
    return {
        "event_id": event_id,
        "timestamp": format_timestamp(millis),
        "tenant_id": tenant_id,
        "actor": {"type": actor_type, "id": actor_id, "email": email},
        "action": action,
        "resource": {"type": resource_type, "id": resource_id, "name": resource_name},
        "outcome": outcome,
        "metadata": metadata,
        "source_ip": source_ip,
    }


# --------------------------------------------------------------------------- generic path


def _unwrap(record: Any, depth: int) -> JsonValue:
    value = record["value"]
    if isinstance(value, list | dict):
        if depth >= MAX_METADATA_DEPTH:
            raise _Corrupt("metadata nested too deep")
        if isinstance(value, list):
            return [_unwrap(v, depth + 1) for v in value]
        return {k: _unwrap(v, depth + 1) for k, v in value.items()}
    return value  # type: ignore[no-any-return]


def _from_record(rec: dict[str, Any]) -> AuditEvent:
    actor, resource = rec["actor"], rec["resource"]
    if actor["type"] not in ACTOR_TYPES or rec["outcome"] not in OUTCOMES:
        raise _Corrupt("enum symbol outside the version 1 vocabulary")
    return {
        "event_id": rec["event_id"],
        "timestamp": format_timestamp(rec["timestamp"]),
        "tenant_id": rec["tenant_id"],
        "actor": {"type": actor["type"], "id": actor["id"], "email": actor["email"]},
        "action": rec["action"],
        "resource": {"type": resource["type"], "id": resource["id"], "name": resource["name"]},
        "outcome": rec["outcome"],
        "metadata": {k: _unwrap(v, 1) for k, v in rec["metadata"].items()},
        "source_ip": rec["source_ip"],
    }


# --------------------------------------------------------------------------- the codec


class AuditEventCodec:
    """Encodes canonical events as version :data:`WRITER_VERSION`; decodes any known writer.

    Records are resolved to the newest packaged schema. Thread-safe; build one per process.
    ``extra_writer_schemas`` (dicts or JSON text) are more writers to accept, e.g. in tests.
    """

    def __init__(self, extra_writer_schemas: Iterable[Mapping[str, Any] | str] = ()) -> None:
        packaged = dict(packaged_schemas())
        if packaged.get(WRITER_VERSION) is None or (
            schema_fingerprint(packaged[WRITER_VERSION]) != FAST_PATH_FINGERPRINT
        ):
            raise ConfigError(f"audit_event.v{WRITER_VERSION}.avsc is missing or was changed")
        newest = packaged[max(packaged)]
        self._fingerprint = FAST_PATH_FINGERPRINT
        self._header = MARKER + self._fingerprint
        self._writers: dict[bytes, Any] = {}
        try:
            self._reader = parse_schema(_strip_logical(newest))
            for raw in [*packaged.values(), *extra_writer_schemas]:
                schema = json.loads(raw) if isinstance(raw, str) else dict(raw)
                fp = schema_fingerprint(schema)
                self._writers.setdefault(fp, parse_schema(_strip_logical(schema)))
        except Exception as exc:  # json or fastavro: the schema itself is broken
            raise ConfigError(f"invalid writer schema: {type(exc).__name__}: {exc}") from exc
        # The specialised decoder is exact only while the reader schema is version 1 itself.
        self._fast = schema_fingerprint(newest) == FAST_PATH_FINGERPRINT

    @property
    def writer_fingerprint(self) -> bytes:
        """Fingerprint (8 bytes, as on the wire) of the schema :meth:`encode` writes with."""
        return self._fingerprint

    @property
    def known_fingerprints(self) -> frozenset[bytes]:
        """Fingerprints of every writer schema :meth:`decode` accepts."""
        return frozenset(self._writers)

    def encode(self, event: Mapping[str, Any]) -> bytes:
        """Single-object bytes of a canonical event (the output of ``validate_event``).

        Does not re-run validation; a mapping that is not a canonical event raises
        :class:`InvalidEventError`.
        """
        out = bytearray(self._header)
        try:
            _encode_v1_body(out, event)
        except Exception as exc:  # any failure means the input was not a canonical event
            problem = FieldProblem("$", f"cannot encode ({type(exc).__name__}: {exc})")
            event_id = event.get("event_id") if isinstance(event, Mapping) else None
            raise InvalidEventError(
                [problem], event_id=event_id if isinstance(event_id, str) else None
            ) from exc
        return bytes(out)

    def decode(
        self, data: bytes | bytearray | memoryview | None, *, validate: bool = False
    ) -> AuditEvent:
        """The canonical event of a single-object record.

        ``UnknownSchemaError`` if the writer fingerprint is not known; ``CorruptRecordError``
        for a bad marker, a truncated or damaged body, trailing bytes or ``None`` (a Kafka
        tombstone). With ``validate=True`` the result is also checked with ``validate_event``
        (which raises ``InvalidEventError``); the Avro schema alone already guarantees field
        types, enum values and the timestamp format.
        """
        if data is None:
            raise CorruptRecordError("empty record (a tombstone has no audit event)")
        buf = data if type(data) is bytes else bytes(data)
        try:
            if self._fast and buf.startswith(self._header):
                event = _decode_v1_body(buf)
            else:
                event = self._decode_resolved(buf)
        except (UnknownSchemaError, CorruptRecordError):
            raise
        except Exception as exc:  # any other failure means the bytes are damaged
            raise CorruptRecordError(
                f"corrupt audit event record (writer {buf[2:_HEADER_LEN].hex()}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return validate_event(event) if validate else event

    def decode_to_json(self, data: bytes | bytearray | memoryview | None) -> bytes:
        """The delivered JSON bytes of a record (``to_json_bytes(decode(data))``, faster)."""
        return orjson.dumps(self.decode(data))

    def _decode_resolved(self, buf: bytes) -> AuditEvent:
        fp = read_fingerprint(buf)
        writer = self._writers.get(fp)
        if writer is None:
            raise UnknownSchemaError(
                f"unknown writer schema fingerprint {fp.hex()} "
                f"(known: {', '.join(sorted(f.hex() for f in self._writers))})"
            )
        body = io.BytesIO(buf[_HEADER_LEN:])
        try:
            record = _py_schemaless_reader(body, writer, self._reader)
        except SchemaResolutionError as exc:
            raise UnknownSchemaError(
                f"writer schema {fp.hex()} cannot be resolved to the reader schema: {exc}"
            ) from exc
        if not isinstance(record, dict):
            raise _Corrupt("the writer schema is not a record")
        if body.tell() != len(buf) - _HEADER_LEN:
            raise _Corrupt(f"{len(buf) - _HEADER_LEN - body.tell()} unexpected trailing byte(s)")
        return _from_record(record)
