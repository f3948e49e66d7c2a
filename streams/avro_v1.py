"""Hand-written Avro binary encoder and decoder for the body of audit event schema version 1.

fastavro is general and therefore slow; these functions know the one layout of
``schemas/avro/audit_event.v1.avsc`` and are several times faster. ``streams.codec`` is the
only caller: :class:`~streams.codec.AuditEventCodec` writes every record with
:func:`encode_body`, and reads with :func:`decode_body` those whose header names the version 1
fingerprint, as long as the newest packaged (reader) schema is version 1 itself. Other records,
and every record once a newer reader schema exists, go through fastavro's schema resolution.

The code is exact only for writer and reader schema version 1; ``tests/unit/test_codec.py``
checks it byte for byte against fastavro, including on damaged input. Both functions handle the
body alone; the single-object header (marker and fingerprint) is the codec's business. On bad
input they raise whatever fails first (``_Corrupt``, ``IndexError``, ``KeyError``,
``UnicodeDecodeError``, ``ValueError``, ``TypeError``...); the codec turns any exception into
its own error.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from streams.event import (
    ACTOR_TYPES,
    OUTCOMES,
    ActorType,
    AuditEvent,
    Outcome,
    format_timestamp,
    parse_timestamp,
)
from streams.event_metadata import INT64_MAX, INT64_MIN, MAX_METADATA_DEPTH, JsonValue

__all__ = ["decode_body", "encode_body"]

_ACTOR_CODE = {name: i for i, name in enumerate(ACTOR_TYPES)}
_OUTCOME_CODE = {name: i for i, name in enumerate(OUTCOMES)}
_ACTOR_BY_BYTE: dict[int, ActorType] = {2 * i: name for i, name in enumerate(ACTOR_TYPES)}
_OUTCOME_BY_BYTE: dict[int, Outcome] = {2 * i: name for i, name in enumerate(OUTCOMES)}
_DOUBLE = struct.Struct("<d")


class _Corrupt(Exception):
    """Internal: the body does not follow the schema."""


# --------------------------------------------------------------------------- encoder


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


def encode_body(out: bytearray, event: Mapping[str, Any]) -> None:
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


# --------------------------------------------------------------------------- decoder


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


def decode_body(buf: bytes, pos: int) -> AuditEvent:
    """The canonical event of the version 1 body that starts at ``pos`` and ends ``buf``."""
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
