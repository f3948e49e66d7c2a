"""Avro single-object encoding of audit events, the byte form on the ``audit.events`` topic.

A record is ``C3 01``, the writer schema's CRC-64-AVRO fingerprint (of its Parsing Canonical
Form, 8 bytes little-endian as the Avro specification and Java write it), then the Avro binary
body. The publisher encodes with :meth:`AuditEventCodec.encode`; the consumer engine decodes
with :meth:`AuditEventCodec.decode` (or ``decode_to_json``) and hands the canonical event on.

Writers use the pinned :data:`WRITER_VERSION`, so a new version can reach readers first.
Readers know every file in ``schemas/avro/`` (plus extra writer schemas given to the
constructor) and resolve other writers to the newest schema with fastavro's pure-Python reader,
which turns hostile nesting into a ``RecursionError`` where the compiled reader would overflow
the C stack. Version 1 records take the hand-written encoder and decoder of
:mod:`streams.avro_v1`, several times faster than fastavro and tested against it; the decoder is
used only while the newest schema is version 1 itself (fingerprint
:data:`FAST_PATH_FINGERPRINT`).
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from fastavro import parse_schema
from fastavro._read_py import schemaless_reader as _py_schemaless_reader
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

from streams.avro_v1 import decode_body, encode_body
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
    MAX_METADATA_DEPTH,
    OUTCOMES,
    AuditEvent,
    JsonValue,
    format_timestamp,
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


class _Corrupt(Exception):
    """Internal: the body does not follow the schema (generic path)."""


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
            encode_body(out, event)
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
                event = decode_body(buf, _HEADER_LEN)
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
