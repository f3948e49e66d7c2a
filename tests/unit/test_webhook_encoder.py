"""Request bodies of the webhook sink (connectors.webhook.encoder).

The encoder builds multi-event bodies in one pass (one ``orjson.dumps`` of the event list, or
one buffer for NDJSON and HEC) instead of encoding each event on its own and joining. Every body
is checked here byte for byte against that straightforward encoding (``reference_body``, the
encoder as it was written first, from ``Envelope.json``), for events made both ways the engine
can hold them: decoded from Avro by the codec, and checked by ``validate_event``. Signed bodies
are checked with the independent ``standardwebhooks`` verifier.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from connectors.webhook import encoder as encoder_module
from connectors.webhook.config import WebhookDestination
from connectors.webhook.encoder import RequestEncoder
from connectors.webhook.signing import batch_message_id
from streams.codec import AuditEventCodec
from streams.engine.sink import Envelope
from streams.event import (
    AuditEvent,
    format_timestamp,
    parse_timestamp,
    to_json_bytes,
    validate_event,
)
from streams.synthetic import EventFactory
from tests.spec_example import SPEC_EXAMPLE

pytestmark = pytest.mark.unit

SECRET = "whsec_" + base64.b64encode(hashlib.sha256(b"encoder").digest()).decode("ascii")
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode("ascii")
URL = "https://siem.example.com/in"

# Events with the shapes a body must carry exactly: nulls, non-ASCII and escapes, nested
# metadata, the extremes of the timestamp range, whole seconds.
ODD_EVENTS: list[dict[str, Any]] = [
    SPEC_EXAMPLE,
    {
        **SPEC_EXAMPLE,
        "event_id": "evt_nulls",
        "timestamp": "1970-01-01T00:00:00.000Z",
        "actor": {"type": "system", "id": "svc_sched"},
        "resource": {"type": "certificate", "id": "crt_1"},
        "metadata": {},
        "source_ip": None,
    },
    {
        **SPEC_EXAMPLE,
        "event_id": "evt_unicode",
        "timestamp": "9999-12-31T23:59:59.999Z",
        "actor": {"type": "user", "id": "usr_1", "email": "zoë@exämple.com"},
        "resource": {"type": "certificate", "id": "crt_2", "name": 'qu"ote\\back/\u2028é<>&'},
        "metadata": {
            "nested": {"list": [1, -2, 3.5, True, None, "x"], "deep": {"a": {"b": "c"}}},
            "emoji": "🔐",
            "big": 9_223_372_036_854_775_807,
            "small": -9_223_372_036_854_775_808,
        },
        "source_ip": "2001:db8::1",
    },
    {**SPEC_EXAMPLE, "event_id": "evt_whole", "timestamp": "2026-03-15T08:42:17Z"},
    {**SPEC_EXAMPLE, "event_id": "evt_offset", "timestamp": "2026-03-15T10:42:17.5+02:00"},
]


def canonical_events(count: int = 300) -> list[AuditEvent]:
    """Synthetic events of several tenants plus ODD_EVENTS, as validate_event returns them."""
    events = [validate_event(e) for e in ODD_EVENTS]
    events += [validate_event(e) for e in EventFactory(7, seed=11).events(count)]
    return events


def wrap(events: Iterable[AuditEvent], raws: Sequence[bytes] | None = None) -> list[Envelope]:
    """Envelopes as the engine makes them: ``json`` not computed yet."""
    return [
        Envelope("audit.events", 0, i, 0, e["tenant_id"], e, 0, raws[i] if raws else b"")
        for i, e in enumerate(events)
    ]


def decoded_envelopes() -> list[Envelope]:
    """The canonical events through the codec (Avro and back), the engine's path."""
    codec = AuditEventCodec()
    raws = [codec.encode(e) for e in canonical_events()]
    return wrap([codec.decode(raw) for raw in raws], raws)


def validated_envelopes() -> list[Envelope]:
    return wrap(canonical_events())


def reference_body(dest: WebhookDestination, batch: Sequence[Envelope], host: str) -> bytes:
    """The body as the encoder first built it: each event's ``Envelope.json``, then joined."""
    if dest.format == "splunk_hec":
        assert dest.splunk is not None
        fields = {
            "host": dest.splunk.host or host,
            "source": dest.splunk.source,
            "sourcetype": dest.splunk.sourcetype,
        }
        if dest.splunk.index:
            fields["index"] = dest.splunk.index
        prefix = orjson.dumps(fields)[1:-1]
        lines = []
        for env in batch:
            seconds, ms = divmod(parse_timestamp(env.event["timestamp"]), 1000)
            lines.append(b'{"time":%d.%03d,%s,"event":%s}' % (seconds, ms, prefix, env.json))
        return b"\n".join(lines)
    if dest.max_events_per_request == 1 and len(batch) == 1:
        return batch[0].json
    if dest.batch_encoding == "ndjson":
        return b"".join(env.json + b"\n" for env in batch)
    return b"[" + b",".join(env.json for env in batch) + b"]"


def destination(**options: Any) -> WebhookDestination:
    return WebhookDestination.model_validate({"url": URL, **options})


DESTINATIONS: dict[str, dict[str, Any]] = {
    "json_array": {"max_events_per_request": 100},
    "ndjson": {"max_events_per_request": 100, "batch_encoding": "ndjson"},
    "single": {},
    "splunk_hec": {
        "max_events_per_request": 100,
        "format": "splunk_hec",
        "splunk": {"token": "tok", "index": "audit", "source": "s\u00e9", "host": "h\\1"},
    },
    "splunk_hec_defaults": {
        "max_events_per_request": 50,
        "format": "splunk_hec",
        "splunk": {"token": "tok"},
    },
}


def batches(envs: Sequence[Envelope], size: int) -> list[Sequence[Envelope]]:
    """Consecutive batches of ``size``, then a lone event and a batch of two."""
    out: list[Sequence[Envelope]] = [envs[i : i + size] for i in range(0, len(envs), size)]
    return [*out, envs[:1], envs[3:5]]


@pytest.mark.parametrize("kind", sorted(DESTINATIONS))
@pytest.mark.parametrize("make", [decoded_envelopes, validated_envelopes], ids=["codec", "valid"])
def test_bodies_are_byte_identical_to_the_per_event_encoding(kind: str, make: Any) -> None:
    dest = destination(**DESTINATIONS[kind])
    envs = make()
    encoder = RequestEncoder("tnt_x", dest, "collector-host")
    sizes = [dest.max_events_per_request] if kind != "single" else [1]
    for size in sizes:
        for batch in batches(envs, size) if size > 1 else [[env] for env in envs]:
            # Fresh envelopes for the reference, so the encoder under test sees json unset.
            expected = reference_body(dest, wrap([e.event for e in batch]), "collector-host")
            request = encoder.encode(batch)
            assert request.body == expected
            assert request.events == len(batch)
            assert request.message_id == batch_message_id([e.event["event_id"] for e in batch])


def test_the_array_is_the_events_json_even_when_already_encoded() -> None:
    envs = decoded_envelopes()[:40]
    for env in envs[::2]:
        assert env.json == orjson.dumps(env.event)  # computed now: the cache is filled
    request = RequestEncoder("tnt_x", destination(max_events_per_request=100), "h").encode(envs)
    assert request.body == b"[" + b",".join(to_json_bytes(e.event) for e in envs) + b"]"
    assert orjson.loads(request.body) == [e.event for e in envs]


def test_ndjson_lines_parse_back_to_the_events() -> None:
    envs = decoded_envelopes()[:100]
    request = RequestEncoder(
        "tnt_x", destination(max_events_per_request=100, batch_encoding="ndjson"), "h"
    ).encode(envs)
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.body.endswith(b"\n") and b"\n\n" not in request.body
    lines = request.body.split(b"\n")[:-1]
    assert [orjson.loads(line) for line in lines] == [e.event for e in envs]


def test_hec_time_is_the_event_timestamp_whether_learned_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoder_module, "_HEC_TIME_HEAD", {})
    dest = destination(**DESTINATIONS["splunk_hec"])
    encoder = RequestEncoder("tnt_x", dest, "h")
    envs = validated_envelopes()
    first = encoder.encode(envs[:100]).body  # cold: each second's text is learned here
    again = encoder.encode(envs[:100]).body  # warm: from the table
    assert first == again == reference_body(dest, envs[:100], "h")
    for line, env in zip(first.split(b"\n"), envs[:100], strict=True):
        envelope = orjson.loads(line)
        assert round(envelope["time"] * 1000) == parse_timestamp(env.event["timestamp"])
        assert envelope["event"] == env.event


def test_hec_time_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    table: dict[str, bytes] = {}
    monkeypatch.setattr(encoder_module, "_HEC_TIME_HEAD", table)
    dest = destination(**DESTINATIONS["splunk_hec"])
    encoder = RequestEncoder("tnt_x", dest, "h")
    base = parse_timestamp(SPEC_EXAMPLE["timestamp"])
    events = [
        validate_event({**SPEC_EXAMPLE, "timestamp": stamp(base + i * 1001)}) for i in range(5000)
    ]
    envs = wrap(events)
    for start in range(0, len(envs), 100):
        batch = envs[start : start + 100]
        assert encoder.encode(batch).body == reference_body(dest, wrap(events[start:][:100]), "h")
    assert 0 < len(table) <= 4096


def test_hec_of_non_canonical_timestamps_takes_the_long_way() -> None:
    # Not what the codec produces, but the encoder must not guess: the time is parsed.
    dest = destination(**DESTINATIONS["splunk_hec"])
    odd = [
        {**validate_event(SPEC_EXAMPLE), "timestamp": stamp}
        for stamp in (
            "2026-03-15T08:42:17.003+00:00",
            "2026-03-15T08:42:17.003z",
            "2026-03-15T08:42:17.0031Z",
            "2026-03-15T08:42:17Z",
        )
    ]
    envs = wrap(odd)  # type: ignore[arg-type]
    body = RequestEncoder("tnt_x", dest, "h").encode(envs).body
    assert body == reference_body(dest, wrap(odd), "h")  # type: ignore[arg-type]


def stamp(millis: int) -> str:
    return format_timestamp(millis)


@pytest.mark.parametrize("kind", ["json_array", "ndjson", "splunk_hec", "single"])
def test_fast_bodies_verify_with_standard_webhooks(kind: str) -> None:
    dest = destination(**DESTINATIONS[kind], signing_secret=[OLD_SECRET, SECRET])
    envs = decoded_envelopes()
    batch = envs[:1] if kind == "single" else envs[:100]
    request = RequestEncoder("tnt_x", dest, "h").encode(batch)
    headers: Mapping[str, str] = request.headers
    one_value = kind in ("json_array", "single")  # NDJSON and HEC bodies are several values
    for secret in (SECRET, OLD_SECRET):
        verified = Webhook(secret).verify(request.body, dict(headers), json_parse=one_value)
        if one_value:
            assert verified == orjson.loads(
                reference_body(dest, wrap([e.event for e in batch]), "h")
            )
    tampered = request.body[:-2] + b" " + request.body[-1:]
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, dict(headers), json_parse=False)
    assert headers["webhook-id"] == request.message_id
    assert len(headers["webhook-signature"].split(" ")) == 2
