"""Avro single-object encoding of audit events (streams.codec), checked against fastavro."""

from __future__ import annotations

import copy
import io
import json
import random
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from streams.codec import (
    FAST_PATH_FINGERPRINT,
    MARKER,
    AuditEventCodec,
    packaged_schemas,
    read_fingerprint,
    schema_fingerprint,
)
from streams.errors import (
    ConfigError,
    CorruptRecordError,
    DecodeError,
    InvalidEventError,
    UnknownSchemaError,
)
from streams.event import (
    MAX_METADATA_DEPTH,
    format_timestamp,
    parse_timestamp,
    to_json_bytes,
    validate_event,
)
from tests.unit.test_event import EXAMPLE, assert_same_json, json_schema_validator

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
V1 = dict(packaged_schemas())[1]
V1_CANONICAL = (
    '{"name":"com.zaita.audit.AuditEvent","type":"record","fields":['
    '{"name":"event_id","type":"string"},{"name":"timestamp","type":"long"},'
    '{"name":"tenant_id","type":"string"},{"name":"actor","type":{"name":"com.zaita.audit.Actor",'
    '"type":"record","fields":[{"name":"type","type":{"name":"com.zaita.audit.ActorType",'
    '"type":"enum","symbols":["user","machine_account","system"]}},{"name":"id","type":"string"},'
    '{"name":"email","type":["null","string"]}]}},{"name":"action","type":"string"},'
    '{"name":"resource","type":{"name":"com.zaita.audit.Resource","type":"record","fields":['
    '{"name":"type","type":"string"},{"name":"id","type":"string"},'
    '{"name":"name","type":["null","string"]}]}},{"name":"outcome","type":{'
    '"name":"com.zaita.audit.Outcome","type":"enum","symbols":["success","failure","denied"]}},'
    '{"name":"metadata","type":{"type":"map","values":{"name":"com.zaita.audit.JsonValue",'
    '"type":"record","fields":[{"name":"value","type":["null","boolean","long","double","string",'
    '{"type":"array","items":"com.zaita.audit.JsonValue"},'
    '{"type":"map","values":"com.zaita.audit.JsonValue"}]}]}}},'
    '{"name":"source_ip","type":["null","string"]}]}'
)


@pytest.fixture(scope="module")
def codec() -> AuditEventCodec:
    return AuditEventCodec()


def crc64_avro(data: bytes) -> int:
    """The Avro specification's reference fingerprint algorithm, written out independently."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def strip_logical(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical(v) for v in schema]
    return schema


def to_avro(event: Mapping[str, Any]) -> dict[str, Any]:
    """The fastavro record of a canonical event (the oracle's input)."""

    def wrap(value: Any) -> dict[str, Any]:
        if isinstance(value, list):
            return {"value": ("array", [wrap(v) for v in value])}
        if isinstance(value, dict):
            return {"value": ("map", {k: wrap(v) for k, v in value.items()})}
        return {"value": value}

    record = copy.deepcopy(dict(event))
    record["timestamp"] = parse_timestamp(event["timestamp"])
    record["metadata"] = {k: wrap(v) for k, v in event["metadata"].items()}
    return record


def fastavro_encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(MARKER + schema_fingerprint(schema))
    schemaless_writer(out, parse_schema(strip_logical(schema)), record)
    return out.getvalue()


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 4 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 365, 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)])
    if kind == 3:
        return rng.randint(-(2**70), 2**70) >> rng.randrange(8, 71)
    if kind == 4:
        return rng.choice([1.0, -0.0, 0.1, 1e308, 5e-324, -2.5e-10, float(2**53)])
    if kind == 5:
        return rng.uniform(-1e6, 1e6)
    if kind in (6, 7):
        alphabet = 'abcXYZ019 _-."\\/\n\té日本語🔐\u2028'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    if kind == 8:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {f"k{rng.randrange(100)}é": random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_event(rng: random.Random) -> dict[str, Any]:
    event = copy.deepcopy(EXAMPLE)
    event["event_id"] = f"evt_{rng.getrandbits(48):012x}"
    event["timestamp"] = format_timestamp(rng.randrange(0, 253402300799999))
    event["actor"] = {
        "type": rng.choice(["user", "machine_account", "system"]),
        "id": "usr_" + "é" * rng.randrange(0, 100),
        "email": rng.choice([None, "jane.doe@example.com"]),
    }
    event["resource"]["name"] = rng.choice([None, "api.example.com", "x" * 1000])
    event["outcome"] = rng.choice(["success", "failure", "denied"])
    event["metadata"] = {f"m{i}": random_json(rng) for i in range(rng.randrange(0, 8))}
    event["source_ip"] = rng.choice([None, "203.0.113.42", "2001:db8::1"])
    return event


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_matches_the_avro_reference_vectors() -> None:
    # Published CRC-64-AVRO values of the Avro project's schema tests (signed 64-bit).
    for canonical, signed in (('"null"', 7195948357588979594), ('"int"', 8247732601305521295)):
        assert crc64_avro(canonical.encode()) == signed % 2**64
        assert schema_fingerprint(canonical) == (signed % 2**64).to_bytes(8, "little")


def test_v1_fingerprint_is_little_endian_crc_of_the_canonical_form(codec: AuditEventCodec) -> None:
    assert to_parsing_canonical_form(V1) == V1_CANONICAL  # published versions never change
    expected = crc64_avro(V1_CANONICAL.encode()).to_bytes(8, "little")
    assert schema_fingerprint(V1) == expected == FAST_PATH_FINGERPRINT
    assert codec.writer_fingerprint == expected
    data = codec.encode(validate_event(EXAMPLE))
    assert data[:2] == b"\xc3\x01" and data[2:10] == expected
    assert read_fingerprint(data) == expected


# --------------------------------------------------------------------------- round trips


def test_spec_example_survives_json_validate_avro_decode_json(codec: AuditEventCodec) -> None:
    original = orjson.dumps(EXAMPLE)
    decoded = codec.decode(codec.encode(validate_event(orjson.loads(original))))
    assert decoded["timestamp"] == "2026-03-15T08:42:17.003Z"
    assert type(decoded["metadata"]["validity_days"]) is int
    assert decoded["metadata"]["validity_days"] == 365
    assert_same_json(decoded, EXAMPLE)
    assert to_json_bytes(decoded) == original
    assert codec.decode_to_json(codec.encode(validate_event(EXAMPLE))) == original


def test_metadata_types_survive(codec: AuditEventCodec) -> None:
    meta = {
        "float_one": 1.0,
        "neg_zero": -0.0,
        "int": 1,
        "t": True,
        "f": False,
        "null": None,
        "unicode": 'héllo 🔐 日本語 \u2028 "quoted"',
        "nested": {"list": [1, 2.5, "x", None, [True, {"k": []}]], "empty": {}},
        "limits": [2**63 - 1, -(2**63), 5e-324, 1.7976931348623157e308],
        "": "empty key",
    }
    valid = validate_event({**EXAMPLE, "metadata": meta})
    decoded = codec.decode(codec.encode(valid))
    assert_same_json(decoded["metadata"], meta)
    assert_same_json(orjson.loads(codec.decode_to_json(codec.encode(valid)))["metadata"], meta)


def test_many_random_events_round_trip_and_agree_with_fastavro(codec: AuditEventCodec) -> None:
    rng = random.Random(20260315)
    validator = json_schema_validator()
    parsed = parse_schema(strip_logical(V1))
    slow = AuditEventCodec()
    slow._fast = False  # the generic fastavro path, for comparison
    for _ in range(400):
        valid = validate_event(random_event(rng))
        data = codec.encode(valid)
        # Byte for byte what fastavro writes, and fastavro reads it back.
        assert data == fastavro_encode(V1, to_avro(valid))
        oracle: Any = schemaless_reader(io.BytesIO(data[10:]), parsed, None)
        assert oracle["event_id"] == valid["event_id"]
        decoded = codec.decode(data)
        assert_same_json(decoded, valid)
        assert_same_json(slow.decode(data), valid)
        assert validate_event(decoded) == decoded
        delivered = json.loads(codec.decode_to_json(data))
        assert not list(validator.iter_errors(delivered))


def test_decode_accepts_bytearray_and_memoryview(codec: AuditEventCodec) -> None:
    data = codec.encode(validate_event(EXAMPLE))
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == EXAMPLE


def test_metadata_at_the_depth_limit_round_trips(codec: AuditEventCodec) -> None:
    value: Any = "bottom"
    for _ in range(MAX_METADATA_DEPTH - 1):
        value = {"d": value}
    valid = validate_event({**EXAMPLE, "metadata": {"x": value}})
    assert codec.decode(codec.encode(valid)) == valid


# --------------------------------------------------------------------------- versions


def test_older_writer_is_resolved_with_defaults() -> None:
    v0 = json.loads((FIXTURES / "audit_event.v0.avsc").read_text(encoding="utf-8"))
    record = {
        "event_id": "evt_old",
        "timestamp": 1773564137003,
        "tenant_id": "tnt_7g8h9i0j",
        "actor": {"type": "machine_account", "id": "mac_1"},
        "action": "machine_account.api_auth",
        "resource": {"type": "machine_account", "id": "mac_1"},
        "outcome": "failure",
        "metadata": {"attempt": {"value": 2}, "ratio": {"value": 0.5}},
    }
    data = fastavro_encode(v0, record)
    with pytest.raises(UnknownSchemaError, match=schema_fingerprint(v0).hex()):
        AuditEventCodec().decode(data)
    decoded = AuditEventCodec(extra_writer_schemas=[json.dumps(v0)]).decode(data, validate=True)
    assert decoded == {
        "event_id": "evt_old",
        "timestamp": "2026-03-15T08:42:17.003Z",
        "tenant_id": "tnt_7g8h9i0j",
        "actor": {"type": "machine_account", "id": "mac_1", "email": None},
        "action": "machine_account.api_auth",
        "resource": {"type": "machine_account", "id": "mac_1", "name": None},
        "outcome": "failure",
        "metadata": {"attempt": 2, "ratio": 0.5},
        "source_ip": None,
    }


def test_unknown_enum_symbol_of_a_newer_writer_reads_as_the_default() -> None:
    newer = copy.deepcopy(V1)
    newer["fields"][3]["type"]["fields"][0]["type"]["symbols"].append("service")
    newer["fields"].append({"name": "trace_id", "type": "string", "default": ""})
    record = to_avro(validate_event(EXAMPLE))
    record["actor"]["type"] = "service"
    record["trace_id"] = "abc"
    decoded = AuditEventCodec(extra_writer_schemas=[newer]).decode(fastavro_encode(newer, record))
    assert decoded["actor"]["type"] == "system"
    assert {k: v for k, v in decoded.items() if k != "actor"} == {
        k: v for k, v in EXAMPLE.items() if k != "actor"
    }


def test_incompatible_writer_is_an_unknown_schema() -> None:
    bad = copy.deepcopy(V1)
    bad["fields"][0]["type"] = "long"
    record = to_avro(validate_event(EXAMPLE)) | {"event_id": 5}
    with pytest.raises(UnknownSchemaError, match="cannot be resolved"):
        AuditEventCodec(extra_writer_schemas=[bad]).decode(fastavro_encode(bad, record))


def test_every_field_and_named_type_is_documented_and_enums_have_defaults() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum"):
                assert node.get("doc"), f"{where}: {node['name']} has no doc"
            if node.get("type") == "enum":
                assert node.get("default") in node["symbols"], node["name"]
            for field in node.get("fields", []):
                assert field.get("doc"), f"{where}: field {field['name']} has no doc"
                walk(field["type"], f"{where}.{field['name']}")
            for key in ("items", "values", "type"):
                if isinstance(node.get(key), dict | list):
                    walk(node[key], where)

    for version, schema in packaged_schemas():
        assert schema["name"] == "AuditEvent" and schema["namespace"] == "com.zaita.audit"
        walk(schema, f"v{version}")


def test_codec_knows_every_packaged_version(codec: AuditEventCodec) -> None:
    assert {schema_fingerprint(s) for _, s in packaged_schemas()} == codec.known_fingerprints
    assert [n for n, _ in packaged_schemas()][0] == 1


# --------------------------------------------------------------------------- errors


def test_unknown_fingerprint(codec: AuditEventCodec) -> None:
    data = bytearray(codec.encode(validate_event(EXAMPLE)))
    data[2:10] = bytes.fromhex("0102030405060708")
    with pytest.raises(UnknownSchemaError, match="0102030405060708"):
        codec.decode(bytes(data))


@pytest.mark.parametrize("data", [b"", b"\xc3", b"\xc3\x01\x00", b"{}", b"\x00\x01" + b"\x00" * 20])
def test_bad_marker_or_header(codec: AuditEventCodec, data: bytes) -> None:
    with pytest.raises(CorruptRecordError):
        codec.decode(data)


@pytest.mark.parametrize("fast", [True, False])
def test_every_truncation_and_trailing_bytes_are_corrupt(fast: bool) -> None:
    codec = AuditEventCodec()
    codec._fast = fast
    valid = validate_event({**EXAMPLE, "metadata": {"x": [1, 2.5, {"y": None}], "z": "é"}})
    data = codec.encode(valid)
    for size in range(10, len(data)):
        with pytest.raises(CorruptRecordError):
            codec.decode(data[:size])
    with pytest.raises(CorruptRecordError, match="trailing"):
        codec.decode(data + b"\x00")


@pytest.mark.parametrize("fast", [True, False])
def test_random_damage_never_escapes_as_another_exception(fast: bool) -> None:
    codec = AuditEventCodec()
    codec._fast = fast
    rng = random.Random(7)
    data = codec.encode(validate_event(random_event(rng) | {"metadata": {"a": [1, {"b": 2.0}]}}))
    for _ in range(1500):
        damaged = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(10, len(damaged))] = rng.randrange(256)
        with suppress(CorruptRecordError):
            codec.decode(bytes(damaged))


@pytest.mark.parametrize("fast", [True, False])
def test_nesting_bomb_is_corrupt_not_a_crash(fast: bool) -> None:
    codec = AuditEventCodec()
    codec._fast = fast
    head = codec.encode(validate_event({**EXAMPLE, "metadata": {}, "source_ip": None}))
    levels = 100_000
    bomb = b"\x02\x02k" + b"\x0a\x02" * levels + b"\x00" + b"\x00" * levels + b"\x00"
    with pytest.raises(CorruptRecordError, match="deep|Recursion"):
        codec.decode(head[:-2] + bomb + b"\x00")


def test_semantically_invalid_record_is_caught_with_validate(codec: AuditEventCodec) -> None:
    data = codec.encode({**validate_event(EXAMPLE), "action": "weather.rain"})
    assert codec.decode(data)["action"] == "weather.rain"
    with pytest.raises(InvalidEventError, match="unknown category"):
        codec.decode(data, validate=True)


@pytest.mark.parametrize(
    "change",
    [
        {"outcome": "maybe"},
        {"actor": {"type": "robot", "id": "x"}},
        {"timestamp": "yesterday"},
        {"metadata": {"x": 2**64}},
        {"metadata": {"x": float("nan")}},
        {"metadata": {1: "x"}},
        {"metadata": {"x": {1, 2}}},
        {"event_id": None},
        {"resource": None},
    ],
)
def test_encode_rejects_non_canonical_events(
    codec: AuditEventCodec, change: dict[str, Any]
) -> None:
    with pytest.raises(InvalidEventError, match="cannot encode"):
        codec.encode({**validate_event(EXAMPLE), **change})


def test_tombstone_is_corrupt(codec: AuditEventCodec) -> None:
    with pytest.raises(CorruptRecordError, match="tombstone"):
        codec.decode(None)


@pytest.mark.parametrize(
    "schema",
    ["{not json", {"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}, 5],
)
def test_broken_extra_writer_schema_is_a_config_error(schema: Any) -> None:
    with pytest.raises(ConfigError, match="invalid writer schema"):
        AuditEventCodec(extra_writer_schemas=[schema])


def test_decode_errors_are_all_decode_errors(codec: AuditEventCodec) -> None:
    assert issubclass(UnknownSchemaError, DecodeError)
    assert issubclass(CorruptRecordError, DecodeError)
    with pytest.raises(DecodeError) as info:
        codec.decode(b"\xc3\x01" + FAST_PATH_FINGERPRINT + b"\xff" * 30)
    assert info.value.__cause__ is not None
