"""Validation, normalisation and JSON rendering of audit events (streams.event)."""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from streams.catalogue import schemas_dir
from streams.errors import InvalidEventError
from streams.event import (
    MAX_METADATA_DEPTH,
    format_timestamp,
    parse_timestamp,
    to_json_bytes,
    validate_event,
)
from tests.spec_example import SPEC_EXAMPLE

pytestmark = pytest.mark.unit

# The spec's example exactly as published (its e-mail reads "[email protected]", an
# obfuscation of the web page, accepted as any e-mail text is).
EXAMPLE: dict[str, Any] = copy.deepcopy(SPEC_EXAMPLE)

SPEC_KEY_ORDER = [
    "event_id",
    "timestamp",
    "tenant_id",
    "actor",
    "action",
    "resource",
    "outcome",
    "metadata",
    "source_ip",
]


def json_schema_validator() -> Draft202012Validator:
    text = schemas_dir().joinpath("audit_event.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_same_json(a: object, b: object, path: str = "$") -> None:
    """Equal values of the same JSON types (1 is not 1.0, True is not 1), same key order."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert isinstance(b, dict)
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same_json(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_json(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, float)
        assert a == b and math.copysign(1, a) == math.copysign(1, b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def event(**changes: Any) -> dict[str, Any]:
    """The example with top-level fields replaced (a value of ... deletes the field)."""
    out = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is ...:
            del out[key]
        else:
            out[key] = value
    return out


def problems_of(obj: Any) -> dict[str, str]:
    with pytest.raises(InvalidEventError) as info:
        validate_event(obj)
    return {p.path: p.message for p in info.value.problems}


# --------------------------------------------------------------------------- the example


def test_spec_example_is_already_canonical() -> None:
    valid = validate_event(EXAMPLE)
    assert_same_json(valid, EXAMPLE)
    assert valid is not EXAMPLE
    assert list(valid) == SPEC_KEY_ORDER
    assert list(valid["actor"]) == ["type", "id", "email"]
    assert list(valid["resource"]) == ["type", "id", "name"]
    assert type(valid["metadata"]["validity_days"]) is int


def test_json_bytes_match_the_spec_layout() -> None:
    data = to_json_bytes(validate_event(EXAMPLE))
    assert data == orjson.dumps(EXAMPLE)
    assert data.startswith(b'{"event_id":"evt_a1b2c3d4e5f6","timestamp":"2026-03-15T08:42:17.003Z"')
    assert b'"validity_days":365}' in data


def test_json_key_order_does_not_depend_on_input_order() -> None:
    shuffled = {k: EXAMPLE[k] for k in reversed(SPEC_KEY_ORDER)}
    shuffled["actor"] = {"email": EXAMPLE["actor"]["email"], "id": "usr_k1l2m3n4", "type": "user"}
    assert to_json_bytes(validate_event(shuffled)) == orjson.dumps(EXAMPLE)
    assert to_json_bytes(shuffled) == orjson.dumps(EXAMPLE)


def test_optional_fields_default_to_null_and_are_kept_in_json() -> None:
    obj = event(source_ip=..., metadata=...)
    del obj["actor"]["email"]
    del obj["resource"]["name"]
    valid = validate_event(obj)
    assert valid["actor"]["email"] is None
    assert valid["resource"]["name"] is None
    assert valid["source_ip"] is None
    assert valid["metadata"] == {}
    decoded = json.loads(to_json_bytes(valid))
    assert list(decoded) == SPEC_KEY_ORDER
    assert decoded["source_ip"] is None and decoded["actor"]["email"] is None


def test_email_is_kept_as_given_even_when_odd() -> None:
    obfuscated = {"type": "user", "id": "usr_k1l2m3n4", "email": "[email protected]"}
    assert validate_event(event(actor=obfuscated))["actor"]["email"] == "[email protected]"


def test_delivered_json_validates_against_the_json_schema() -> None:
    validator = json_schema_validator()
    samples = [
        EXAMPLE,
        event(source_ip="2001:db8::1", metadata={"nested": {"a": [1, 2.5, None, True, "x"]}}),
        event(actor={"type": "system", "id": "sys_scheduler"}, source_ip=None),
        event(resource={"type": "certificate", "id": "crt_1"}, outcome="denied"),
    ]
    for sample in samples:
        delivered = json.loads(to_json_bytes(validate_event(sample)))
        errors = sorted(validator.iter_errors(delivered), key=str)
        assert not errors, errors


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"timestamp": "2026-03-15T08:42:17Z"},
        {"timestamp": "2026-03-15T08:42:17.003+00:00"},
        {"outcome": "maybe"},
        {"action": "weather.rain"},
        {"source_ip": "not an ip"},
        {"metadata": []},
        {"tenant_id": "../other"},
    ],
)
def test_json_schema_rejects_what_we_never_deliver(change: dict[str, Any]) -> None:
    assert not json_schema_validator().is_valid(EXAMPLE | change)


def test_json_schema_requires_every_key() -> None:
    validator = json_schema_validator()
    for key in SPEC_KEY_ORDER:
        assert not validator.is_valid({k: v for k, v in EXAMPLE.items() if k != key}), key


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("2026-03-15T08:42:17.003Z", "2026-03-15T08:42:17.003Z"),
        ("2026-03-15T08:42:17.003999Z", "2026-03-15T08:42:17.003Z"),  # truncated, not rounded
        ("2026-03-15T08:42:17.9999999Z", "2026-03-15T08:42:17.999Z"),
        ("2026-03-15T08:42:17Z", "2026-03-15T08:42:17.000Z"),
        ("2026-03-15T08:42Z", "2026-03-15T08:42:00.000Z"),
        ("2026-03-15T08:42:17.1Z", "2026-03-15T08:42:17.100Z"),
        ("2026-03-15T08:42:17,25Z", "2026-03-15T08:42:17.250Z"),
        ("2026-03-15t08:42:17.003z", "2026-03-15T08:42:17.003Z"),
        ("2026-03-15T10:42:17.003+02:00", "2026-03-15T08:42:17.003Z"),
        ("2026-03-15T03:12:17.003-0530", "2026-03-15T08:42:17.003Z"),
        ("2026-03-15T09:42:17.003+01", "2026-03-15T08:42:17.003Z"),
        ("2026-03-15T00:30:00.000+01:00", "2026-03-14T23:30:00.000Z"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z"),
        ("9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z"),
    ],
)
def test_timestamps_are_normalised_to_utc_milliseconds(given: str, canonical: str) -> None:
    assert validate_event(event(timestamp=given))["timestamp"] == canonical


def test_aware_datetimes_are_accepted() -> None:
    tz = timezone(timedelta(hours=-3))
    dt = datetime(2026, 3, 15, 5, 42, 17, 3999, tzinfo=tz)
    assert validate_event(event(timestamp=dt))["timestamp"] == "2026-03-15T08:42:17.003Z"


@pytest.mark.parametrize(
    "given",
    [
        "2026-03-15T08:42:17.003",  # no offset
        "2026-03-15",
        "2026-03-15 08:42:17Z",
        "15/03/2026 08:42:17",
        "2026-02-30T08:42:17Z",
        "2026-03-15T24:00:00Z",
        "2026-03-15T23:59:60Z",  # leap second
        "2026-03-15T08:42:17+24:00",
        "1969-12-31T23:59:59.999Z",
        "9999-12-31T23:59:59.999-01:00",
        "0001-01-01T00:00:00+01:00",
        "２０２６-03-15T08:42:17Z",  # non-ASCII digits
        "",
        1773564137003,
        datetime(2026, 3, 15, 8, 42, 17),  # naive
    ],
)
def test_bad_timestamps_are_rejected(given: object) -> None:
    assert "timestamp" in problems_of(event(timestamp=given))


def test_format_and_parse_timestamp_are_inverse() -> None:
    for millis in (0, 1, 999, 1000, 1773564137003, 253402300799999, 951782400000):
        text = format_timestamp(millis)
        assert len(text) == 24 and text.endswith("Z")
        assert parse_timestamp(text) == millis
    assert format_timestamp(1773564137003) == "2026-03-15T08:42:17.003Z"


# --------------------------------------------------------------------------- fields


def test_every_wrong_field_is_reported_at_once() -> None:
    bad = {
        "event_id": "",
        "timestamp": "yesterday",
        "tenant_id": "tnt\x00",
        "actor": {"type": "robot", "id": 5, "email": "no\tbody", "role": "x"},
        "action": "Certificate.Issue",
        "resource": {"type": "Certificate", "name": "a\nb", "size": 1},
        "outcome": "ok",
        "metadata": {"n": float("nan"), "big": 2**64, "bad": {1, 2}},
        "source_ip": "300.1.1.1",
        "severity": "high",
    }
    with pytest.raises(InvalidEventError) as info:
        validate_event(bad)
    paths = {p.path for p in info.value.problems}
    assert paths == {
        "event_id",
        "timestamp",
        "tenant_id",
        "actor.type",
        "actor.id",
        "actor.email",
        "actor.role",
        "action",
        "resource.type",
        "resource.id",
        "resource.name",
        "resource.size",
        "outcome",
        "metadata.n",
        "metadata.big",
        "metadata.bad",
        "source_ip",
        "severity",
    }
    message = str(info.value)
    assert "actor.role: unknown field" in message
    assert "resource.id: is required" in message


def test_missing_required_fields_and_wrong_shapes() -> None:
    assert problems_of({}) == {
        "event_id": "is required",
        "timestamp": "is required",
        "tenant_id": "is required",
        "actor": "is required",
        "actor.type": "is required",
        "actor.id": "is required",
        "action": "is required",
        "resource": "is required",
        "resource.type": "is required",
        "resource.id": "is required",
        "outcome": "is required",
    }
    found = problems_of(event(actor="usr_1", resource=None))
    assert found["actor"].startswith("must be an object")
    assert found["resource"] == "is required"
    assert problems_of([1, 2]) == {"$": "must be an object, got array"}


def test_error_carries_the_event_id_when_it_is_valid() -> None:
    with pytest.raises(InvalidEventError) as info:
        validate_event(event(outcome="nope"))
    assert info.value.event_id == "evt_a1b2c3d4e5f6"
    assert "evt_a1b2c3d4e5f6" in str(info.value)


@pytest.mark.parametrize("field", ["event_id", "tenant_id"])
@pytest.mark.parametrize(
    "value", ["", " tnt", "tnt 1", "../etc", "tnt/1", "tnt\t", "é", "x" * 129, "-tnt", 7]
)
def test_identifiers_are_safe_tokens(field: str, value: object) -> None:
    assert field in problems_of(event(**{field: value}))


@pytest.mark.parametrize("value", ["tnt_7g8h9i0j", "a", "550e8400-e29b-41d4-a716-446655440000"])
def test_good_identifiers(value: str) -> None:
    valid = validate_event(event(tenant_id=value, event_id=value))
    assert valid["tenant_id"] == valid["event_id"] == value


@pytest.mark.parametrize(
    "action", ["certificate", "certificate.", ".issue", "certificate.issue.now", "cert-ificate.x"]
)
def test_action_must_be_category_dot_verb(action: str) -> None:
    assert "category.verb" in problems_of(event(action=action))["action"]


def test_action_category_must_be_known_but_verb_may_be_new() -> None:
    assert "unknown category 'weather'" in problems_of(event(action="weather.rain"))["action"]
    assert validate_event(event(action="certificate.teleport"))["action"] == "certificate.teleport"


@pytest.mark.parametrize("outcome", ["success", "failure", "denied"])
def test_outcomes(outcome: str) -> None:
    assert validate_event(event(outcome=outcome))["outcome"] == outcome


@pytest.mark.parametrize("outcome", ["Success", "ok", "", None, 1])
def test_bad_outcomes(outcome: object) -> None:
    assert "outcome" in problems_of(event(outcome=outcome))


@pytest.mark.parametrize("actor_type", ["user", "machine_account", "system"])
def test_actor_types(actor_type: str) -> None:
    obj = event(actor={"type": actor_type, "id": "x_1", "email": None})
    assert validate_event(obj)["actor"]["type"] == actor_type


def test_text_fields_reject_control_characters_and_overlong_values() -> None:
    found = problems_of(
        event(
            actor={"type": "user", "id": "usr\x7f"},
            resource={"type": "certificate", "id": "c" * 257, "name": "api\x85example"},
        )
    )
    assert set(found) == {"actor.id", "resource.id", "resource.name"}
    assert "257" in found["resource.id"]


@pytest.mark.parametrize(
    "email",
    [
        "jane.doe@example.com",
        "j+siem@mail.example.co.uk",
        "o'brien@example.org",
        "用户@例子.广告",
        "x@xn--p1ai.xn--p1ai",
        "nobody",
        "a b@example.com",
    ],
)
def test_accepted_emails(email: str) -> None:
    obj = event(actor={"type": "user", "id": "usr_1", "email": email})
    assert validate_event(obj)["actor"]["email"] == email


@pytest.mark.parametrize(
    "email",
    [
        "a\nb@example.com",
        "bell\x07@example.com",
        "x" * 321,
        "",
        42,
    ],
)
def test_refused_emails(email: object) -> None:
    assert "actor.email" in problems_of(event(actor={"type": "user", "id": "u", "email": email}))


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("203.0.113.42", "203.0.113.42"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped: what dual-stack sockets report
        ("::1", "::1"),
    ],
)
def test_source_ip_is_canonicalised(given: str, canonical: str) -> None:
    assert validate_event(event(source_ip=given))["source_ip"] == canonical


@pytest.mark.parametrize(
    "given", ["300.1.1.1", "203.0.113", "203.000.113.042", "fe80::1%eth0", "localhost", "", 3]
)
def test_bad_source_ips(given: object) -> None:
    assert "source_ip" in problems_of(event(source_ip=given))


# --------------------------------------------------------------------------- metadata


def test_metadata_keeps_json_types_and_order() -> None:
    meta: dict[str, Any] = {
        "z": 1,
        "a": 1.0,
        "neg_zero": -0.0,
        "t": True,
        "f": False,
        "n": None,
        "s": "héllo 🔐 日本語",
        "list": [1, "two", 3.5, [None, {"deep": False}]],
        "obj": {"inner": {"k": [], "o": {}}},
        "": "empty key",
        "int64": [2**63 - 1, -(2**63)],
    }
    valid = validate_event(event(metadata=meta))
    assert_same_json(valid["metadata"], meta)
    assert valid["metadata"] is not meta
    assert_same_json(json.loads(to_json_bytes(valid))["metadata"], meta)


def test_metadata_tuples_become_lists() -> None:
    valid = validate_event(event(metadata={"t": (1, (2, 3))}))
    assert valid["metadata"] == {"t": [1, [2, 3]]}


@pytest.mark.parametrize(
    ("meta", "path"),
    [
        ({"x": float("inf")}, "metadata.x"),
        ({"x": float("-inf")}, "metadata.x"),
        ({"x": [float("nan")]}, "metadata.x[0]"),
        ({"x": 2**63}, "metadata.x"),
        ({"x": -(2**63) - 1}, "metadata.x"),
        ({"x": b"bytes"}, "metadata.x"),
        ({"x": {"y": datetime(2026, 1, 1)}}, "metadata.x.y"),
        ({"x": {1: "int key"}}, "metadata.x.1"),
        ({"x": "\ud800"}, "metadata.x"),
        ({"\udfff": 1}, "metadata.'\\udfff'"),
    ],
)
def test_metadata_that_is_not_json_is_rejected(meta: dict[Any, Any], path: str) -> None:
    assert path in problems_of(event(metadata=meta))


def test_metadata_must_be_an_object() -> None:
    assert problems_of(event(metadata=[1]))["metadata"] == "must be an object, got array"
    assert problems_of(event(metadata="{}"))["metadata"] == "must be an object, got string"


def test_metadata_depth_limit() -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: Any = 1
        for _ in range(levels - 1):  # the metadata object itself is the first level
            value = [value]
        return {"x": value}

    assert validate_event(event(metadata=nested(MAX_METADATA_DEPTH)))
    found = problems_of(event(metadata=nested(MAX_METADATA_DEPTH + 1)))
    assert any("nested deeper" in message for message in found.values())
    # Far deeper structures are refused without hitting the recursion limit.
    assert problems_of(event(metadata=nested(5000)))


def test_metadata_problems_are_capped() -> None:
    meta: dict[str, Any] = {f"k{i}": float("nan") for i in range(50)}
    with pytest.raises(InvalidEventError) as info:
        validate_event(event(metadata=meta))
    problems = info.value.problems
    assert len(problems) == 11
    assert problems[-1].path == "metadata" and "40 more" in problems[-1].message


def test_to_json_bytes_rejects_non_events() -> None:
    with pytest.raises(InvalidEventError):
        to_json_bytes({"event_id": "x"})
    with pytest.raises(InvalidEventError):
        to_json_bytes(EXAMPLE | {"metadata": {"x": object()}})
