"""RFC 5424 encoding and RFC 6587 framing of audit events (connectors.syslog.encoder).

The messages are read back with a parser written here from the RFC 5424 grammar, independent
of the encoder, so a test passes only if a strict receiver would see the fields we meant.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
import yaml

from connectors.syslog.encoder import (
    DEFAULT_MAX_DATAGRAM,
    MAX_MSGID,
    MAX_UDP_PAYLOAD,
    MIN_DATAGRAM,
    UTF8_BOM,
    SyslogFormat,
    encode,
    escape_sd_value,
    fits_datagram,
    frame_lf,
    frame_octet_counted,
    sanitize_header,
    syslog_severity,
)
from streams.catalogue import Severity, load_catalogue, schemas_dir
from streams.engine.sink import Envelope
from streams.event import OUTCOMES
from tests.spec_example import SPEC_EXAMPLE
from tests.syslog_support import (
    ADVERSARIAL_METADATA,
    Parsed,
    adversarial_event,
    envelope,
    param_value,
    parse_5424,
    split_lf,
    split_octet_counted,
    synthetic_envelopes,
)

pytestmark = pytest.mark.unit


def check_message(msg: bytes, env: Envelope, fmt: SyslogFormat) -> Parsed:
    """Everything a receiver should read out of ``msg`` for ``env``."""
    parsed = parse_5424(msg)
    event = env.event
    severity = load_catalogue().severity_for(event["action"], event["outcome"])
    assert parsed.pri == fmt.facility * 8 + int(severity)
    assert parsed.version == 1
    assert parsed.timestamp == event["timestamp"]
    assert (parsed.hostname, parsed.app_name, parsed.procid) == (
        fmt.hostname,
        fmt.app_name,
        fmt.procid,
    )
    assert parsed.msgid == event["action"][:MAX_MSGID]
    assert parsed.sd == [
        (
            fmt.sd_id,
            [
                ("event_id", event["event_id"]),
                ("tenant_id", event["tenant_id"]),
                ("outcome", event["outcome"]),
            ],
        )
    ]
    body = parsed.msg
    if fmt.utf8_bom:
        assert body.startswith(UTF8_BOM)
        body = body[len(UTF8_BOM) :]
    assert body == env.json
    assert orjson.loads(body) == event
    return parsed


# --------------------------------------------------------------------------- the message


def test_spec_example_gives_the_documented_line() -> None:
    env = envelope(SPEC_EXAMPLE)
    msg = encode(env, SyslogFormat())
    assert msg == (
        b"<110>1 2026-03-15T08:42:17.003Z zaita siem-export - certificate.issue "
        b'[audit@32473 event_id="evt_a1b2c3d4e5f6" tenant_id="tnt_7g8h9i0j" outcome="success"] '
        + env.json
    )
    parsed = check_message(msg, env, SyslogFormat())
    assert parsed.pri == 13 * 8 + 6  # log audit, informational
    assert orjson.loads(parsed.msg) == SPEC_EXAMPLE


def test_synthetic_events_parse_back_with_every_field() -> None:
    envs = synthetic_envelopes(1500)
    assert {env.event["outcome"] for env in envs} == set(OUTCOMES)
    fmt = SyslogFormat(
        facility=10, hostname="export-1.zaita.example", app_name="zaita", sd_id="zaita@99999"
    )
    for env in envs:
        check_message(encode(env, fmt), env, fmt)


def test_adversarial_event_keeps_its_content_and_one_sd_element() -> None:
    env = envelope(adversarial_event())
    msg = encode(env, SyslogFormat())
    check_message(msg, env, SyslogFormat())
    # The JSON escapes control characters, so no raw CR or LF reaches the message.
    assert b"\n" not in msg
    assert b"\r" not in msg
    assert orjson.loads(env.json)["metadata"] == ADVERSARIAL_METADATA


@pytest.mark.parametrize("facility", [0, 13, 23])
def test_pri_is_facility_times_eight_plus_severity(facility: int) -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["action"] = "authentication.login"
    fmt = SyslogFormat(facility=facility)
    for outcome, severity in [("success", 6), ("failure", 4), ("denied", 4)]:
        event["outcome"] = outcome
        assert parse_5424(encode(envelope(event), fmt)).pri == facility * 8 + severity


def test_sd_values_that_need_escaping_round_trip() -> None:
    # Not a valid event (ids are tokens), but the encoder must stay safe for any input.
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["event_id"] = 'evt"] injected="1" [x@1 a="b'
    event["tenant_id"] = "tnt\\]\\\\x"
    event["outcome"] = 'odd"outcome]'
    env = envelope(event, validate=False)
    msg = encode(env, SyslogFormat())
    parsed = check_message(msg, env, SyslogFormat())
    assert len(parsed.sd) == 1
    assert parsed.params == {
        "event_id": event["event_id"],
        "tenant_id": event["tenant_id"],
        "outcome": event["outcome"],
    }


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a]b", "a\\]b"),
        ('\\"]', '\\\\\\"\\]'),
        ("[é 中文 🔐]", "[é 中文 🔐\\]"),
        ("", ""),
    ],
)
def test_escape_sd_value(raw: str, escaped: str) -> None:
    assert escape_sd_value(raw) == escaped
    value, end = param_value(escaped.encode() + b'"', 0)
    assert (value, end) == (raw, len(escaped.encode()) + 1)


def test_non_ascii_sd_values_are_utf8() -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["tenant_id"] = "tnt_é中🔐"
    env = envelope(event, validate=False)
    msg = encode(env, SyslogFormat())
    assert 'tenant_id="tnt_é中🔐"'.encode() in msg
    assert parse_5424(msg).params["tenant_id"] == "tnt_é中🔐"


def test_msgid_is_the_action_cut_to_32_and_catalogue_actions_stay_distinct() -> None:
    actions = list(load_catalogue().actions)
    msgids = {sanitize_header(a, MAX_MSGID) for a in actions}
    assert len(msgids) == len(actions)
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["action"] = "machine_account.credential_rotate"
    msg = encode(envelope(event), SyslogFormat())
    assert parse_5424(msg).msgid == "machine_account.credential_rotat"


def test_msgid_of_an_unvalidated_action_is_sanitized() -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["action"] = "certificate.is sue\n<13>1 é"
    parsed = parse_5424(encode(envelope(event, validate=False), SyslogFormat()))
    assert parsed.msgid == "certificate.is_sue_<13>1__"


def test_timestamp_with_an_offset_is_normalised_in_the_header_only() -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["timestamp"] = "2026-03-15T10:42:17.003456+02:00"
    env = envelope(event, validate=False)
    parsed = parse_5424(encode(env, SyslogFormat()))
    assert parsed.timestamp == "2026-03-15T08:42:17.003Z"
    assert orjson.loads(parsed.msg)["timestamp"] == event["timestamp"]


@pytest.mark.parametrize("timestamp", ["yesterday", "2026-03-15 08:42:17 Z", ""])
def test_unreadable_timestamp_is_refused(timestamp: str) -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["timestamp"] = timestamp
    with pytest.raises(ValueError, match="ISO 8601"):
        encode(envelope(event, validate=False), SyslogFormat())


def test_bom_off_by_default_and_on_when_asked() -> None:
    env = envelope(SPEC_EXAMPLE)
    plain = encode(env, SyslogFormat())
    with_bom = encode(env, SyslogFormat(utf8_bom=True))
    assert parse_5424(plain).msg.startswith(b"{")
    check_message(with_bom, env, SyslogFormat(utf8_bom=True))
    assert with_bom == plain.replace(b"] {", b"] " + UTF8_BOM + b"{", 1)
    # What a JSON parser makes of it is why the default is off.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(parse_5424(with_bom).msg)


# --------------------------------------------------------------------------- framing


def test_octet_counting_length_is_in_bytes() -> None:
    env = envelope(adversarial_event())
    msg = encode(env, SyslogFormat())
    assert len(msg) > len(msg.decode())  # multi-byte characters present
    frame = frame_octet_counted(msg)
    length, _, rest = frame.partition(b" ")
    assert int(length) == len(msg)
    assert rest == msg
    assert split_octet_counted(frame) == [msg]


def test_octet_counting_refuses_an_empty_message() -> None:
    with pytest.raises(ValueError, match="empty"):
        frame_octet_counted(b"")


def test_lf_framing_keeps_an_event_with_newlines_on_one_line() -> None:
    env = envelope(adversarial_event())
    msg = encode(env, SyslogFormat())
    frame = frame_lf(msg)
    assert frame == msg + b"\n"  # nothing to escape: the JSON already did
    assert frame.count(b"\n") == 1
    assert b"\r" not in frame
    [line] = split_lf(frame)
    parsed = check_message(line, env, SyslogFormat())
    assert orjson.loads(parsed.msg)["metadata"]["note"] == ADVERSARIAL_METADATA["note"]


def test_lf_framing_escapes_raw_cr_and_lf() -> None:
    # Only an unvalidated id can bring raw line breaks into a message.
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["event_id"] = "evt\n<13>1 2026-01-01T00:00:00.000Z x y z w - fake\r\n"
    msg = encode(envelope(event, validate=False), SyslogFormat())
    assert b"\n" in msg
    frame = frame_lf(msg)
    assert frame.count(b"\n") == 1
    assert b"\r" not in frame
    assert frame.endswith(b"\n")
    [line] = split_lf(frame)
    # The guard is visible but not reversible in general (the JSON holds "\\n" sequences
    # too); it keeps the frame whole, and octet counting carries such a message unchanged.
    assert line == msg.replace(b"\r", b"\\r").replace(b"\n", b"\\n")
    assert parse_5424(line).params["event_id"] == event["event_id"].replace("\r", "\\r").replace(
        "\n", "\\n"
    )
    # Octet counting needs no escaping at all.
    assert split_octet_counted(frame_octet_counted(msg)) == [msg]


def test_lf_framing_of_arbitrary_bytes() -> None:
    assert frame_lf(b"a\nb\rc\r\n") == b"a\\nb\\rc\\r\\n\n"
    assert frame_lf(b"plain") == b"plain\n"


def test_streams_of_many_messages_do_not_desync() -> None:
    envs = synthetic_envelopes(400, seed=11)
    hostile = adversarial_event()
    for i in range(0, 400, 7):
        envs[i] = envelope({**hostile, "event_id": f"evt_hostile_{i}"})
    fmt = SyslogFormat()
    messages = [encode(env, fmt) for env in envs]

    counted = split_octet_counted(b"".join(frame_octet_counted(m) for m in messages))
    lines = split_lf(b"".join(frame_lf(m) for m in messages))
    assert counted == messages
    assert lines == messages
    for msg, env in zip(counted, envs, strict=True):
        check_message(msg, env, fmt)


def test_forged_frame_inside_a_value_stays_inside_its_message() -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["metadata"] = {"x": "5 <13>1", "y": "\n12 <13>1 fake\n"}
    event["resource"]["name"] = "] 99 <13>1 - - - - - - evil"
    fmt = SyslogFormat()
    first = encode(envelope(event), fmt)
    second = encode(envelope(SPEC_EXAMPLE), fmt)
    stream = frame_octet_counted(first) + frame_octet_counted(second)
    assert split_octet_counted(stream) == [first, second]
    assert split_lf(frame_lf(first) + frame_lf(second)) == [first, second]


# --------------------------------------------------------------------------- UDP size


def test_fits_datagram_boundaries() -> None:
    assert fits_datagram(b"x" * DEFAULT_MAX_DATAGRAM)
    assert not fits_datagram(b"x" * (DEFAULT_MAX_DATAGRAM + 1))
    assert fits_datagram(b"x" * 480, MIN_DATAGRAM)
    assert not fits_datagram(b"x" * 481, MIN_DATAGRAM)
    assert fits_datagram(b"x" * MAX_UDP_PAYLOAD, MAX_UDP_PAYLOAD)


@pytest.mark.parametrize("max_bytes", [0, MIN_DATAGRAM - 1, MAX_UDP_PAYLOAD + 1])
def test_fits_datagram_refuses_impossible_limits(max_bytes: int) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        fits_datagram(b"x", max_bytes)


def test_typical_events_fit_the_default_datagram() -> None:
    fmt = SyslogFormat()
    assert all(fits_datagram(encode(env, fmt)) for env in synthetic_envelopes(300))


def test_oversized_event_is_reported_not_cut() -> None:
    event = copy.deepcopy(SPEC_EXAMPLE)
    event["metadata"] = {"blob": "x" * 5000}
    msg = encode(envelope(event), SyslogFormat())
    assert not fits_datagram(msg)
    assert orjson.loads(parse_5424(msg).msg) == event


# --------------------------------------------------------------------------- header sanitizing


@pytest.mark.parametrize(
    ("value", "max_len", "expected"),
    [
        ("certificate.issue", 32, "certificate.issue"),
        ("my host", 255, "my_host"),
        ("hôte-中文🔐", 255, "h_te-___"),
        ("tab\there\nnl\x7fdel", 255, "tab_here_nl_del"),
        ("", 32, "-"),
        (" ", 32, "_"),
        ("x" * 40, 32, "x" * 32),
        ("é" * 40, 32, "_" * 32),
        ("-", 48, "-"),
    ],
)
def test_sanitize_header(value: str, max_len: int, expected: str) -> None:
    assert sanitize_header(value, max_len) == expected


def test_sanitize_header_refuses_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="max_len"):
        sanitize_header("x", 0)


# --------------------------------------------------------------------------- SyslogFormat


def test_format_defaults() -> None:
    fmt = SyslogFormat()
    assert (fmt.facility, fmt.hostname, fmt.app_name, fmt.procid, fmt.sd_id, fmt.utf8_bom) == (
        13,
        "zaita",
        "siem-export",
        "-",
        "audit@32473",
        False,
    )
    assert fmt == SyslogFormat()
    assert hash(fmt) == hash(SyslogFormat())
    assert "_pri" not in repr(fmt)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"facility": -1}, "facility"),
        ({"facility": 24}, "facility"),
        ({"facility": True}, "facility"),
        ({"facility": "13"}, "facility"),
        ({"hostname": ""}, "hostname"),
        ({"hostname": "my host"}, "hostname"),
        ({"hostname": "hôte"}, "hostname"),
        ({"hostname": "h" * 256}, "hostname"),
        ({"app_name": "a" * 49}, "app_name"),
        ({"app_name": "app\n"}, "app_name"),
        ({"procid": "p" * 129}, "procid"),
        ({"procid": ""}, "procid"),
        ({"sd_id": "audit"}, "sd_id"),
        ({"sd_id": "origin"}, "sd_id"),
        ({"sd_id": "audit@"}, "sd_id"),
        ({"sd_id": "@32473"}, "sd_id"),
        ({"sd_id": "audit@pen"}, "sd_id"),
        ({"sd_id": "au dit@32473"}, "sd_id"),
        ({"sd_id": "au=dit@32473"}, "sd_id"),
        ({"sd_id": 'au"dit@32473'}, "sd_id"),
        ({"sd_id": "au]dit@32473"}, "sd_id"),
        ({"sd_id": "a@b@32473"}, "sd_id"),
        ({"sd_id": "é@32473"}, "sd_id"),
        ({"sd_id": "a" * 27 + "@32473"}, "sd_id"),
        ({"utf8_bom": 1}, "utf8_bom"),
    ],
)
def test_format_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        SyslogFormat(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"facility": 0},
        {"facility": 23},
        {"hostname": "h" * 255, "app_name": "a" * 48, "procid": "p" * 128},
        {"sd_id": "a" * 26 + "@32473"},
        {"sd_id": "zaita@1.3.6"},
        {"procid": "4242"},
    ],
)
def test_format_accepts_edge_values(kwargs: dict[str, Any]) -> None:
    fmt = SyslogFormat(**kwargs)
    env = envelope(SPEC_EXAMPLE)
    check_message(encode(env, fmt), env, fmt)


# --------------------------------------------------------------------------- severity


def _yaml_severity_labels() -> set[str]:
    doc = yaml.safe_load(schemas_dir().joinpath("actions.yaml").read_text(encoding="utf-8"))
    labels = {doc["defaults"]["severity"], *doc["defaults"]["outcome_floor"].values()}
    for cat in doc["categories"].values():
        labels.add(cat["default_severity"])
        labels.update(cat.get("outcome_floor", {}).values())
    labels.update(action["severity"] for action in doc["actions"].values())
    return labels


def test_every_catalogue_severity_maps_to_an_rfc_code() -> None:
    labels = _yaml_severity_labels()
    assert labels >= {"informational", "notice", "warning", "error", "critical"}
    rfc = ["emergency", "alert", "critical", "error", "warning", "notice", "informational"]
    for label in labels:
        assert int(Severity.from_label(label)) == [*rfc, "debug"].index(label)


def test_severity_is_in_range_and_failures_are_never_less_urgent() -> None:
    cat = load_catalogue()
    actions = [
        *cat.actions,
        *(f"{name}.not_listed_yet" for name in cat.categories),
        "unknown_category.verb",
    ]
    for action in actions:
        success = syslog_severity(action, "success")
        assert 0 <= success <= 7
        for outcome in ("failure", "denied"):
            other = syslog_severity(action, outcome)
            assert 0 <= other <= 7
            assert other <= success, (action, outcome)


def test_severity_examples() -> None:
    assert syslog_severity("certificate.issue", "success") == 6
    assert syslog_severity("certificate.issue", "failure") == 5
    assert syslog_severity("certificate.issue", "denied") == 4
    assert syslog_severity("authentication.login", "failure") == 4
    assert syslog_severity("security.permission_denied", "denied") <= 4
