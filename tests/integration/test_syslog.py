"""The syslog connector against a real rsyslog (and, end to end, the real broker).

(1) Sink and rsyslog, every transport: hostile events (newlines, quotes, brackets, backslashes,
non-ASCII, control characters) arrive as strict RFC 5424 whose fields and JSON equal the source.
(2) Engine, broker and rsyslog: an event too large for a UDP datagram lands in the dead-letter
topic with its reason, and the rest arrive.
(3) rsyslog restarted mid-stream, twice, while events keep being published and forwarded over
TCP, TLS and RELP: every event arrives, each tenant in order by first arrival.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.destinations import load_destinations
from connectors.health import DestinationHealth
from connectors.syslog.config import SyslogSettings
from connectors.syslog.encoder import MAX_MSGID, sanitize_header
from connectors.syslog.sink import SyslogSink
from streams.config import KafkaConfig
from streams.engine import Engine, EngineConfig
from streams.engine.sink import Envelope
from streams.event import to_json_bytes, validate_event
from streams.publisher import Publisher
from streams.synthetic import EventFactory
from streams.tail import read_records
from tests.engine_support import fresh_topics, read_messages
from tests.rsyslog_support import (
    Rsyslog,
    rsyslog_fixture,  # noqa: F401 - the fixture "rsyslog"
)
from tests.syslog_support import adversarial_event, parse_5424

pytestmark = pytest.mark.integration

FACILITY = 13
# transport name in the destination, rsyslog input it goes to, extra destination keys
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "udp": ("udp", "udp", {"max_datagram_bytes": 16384}),
    "tcp": ("tcp", "tcp", {}),
    "tcp_lf": ("tcp", "tcp", {"framing": "lf"}),
    "tls": ("tls", "tls", {}),
    "relp": ("relp", "relp", {}),
    "relp_tls": ("relp_tls", "relp_tls", {}),
}


def _destination(rsyslog: Rsyslog, case: str) -> dict[str, Any]:
    transport, port_of, extra = CASES[case]
    entry: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": rsyslog.ports[port_of],
        "transport": transport,
        **extra,
    }
    if transport in ("tls", "relp_tls"):
        entry |= {"ca_bundle": str(rsyslog.ca_pem), "server_name": "localhost"}
    if transport == "relp_tls":
        entry |= {"client_cert": str(rsyslog.client_pem), "client_key": str(rsyslog.client_pem)}
    return entry


def _destinations_file(path: Path, entry: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"tenants": {"*": {"syslog": entry}}}))  # JSON is YAML
    return path


def _sink(path: Path, settings: SyslogSettings, registry: CollectorRegistry) -> SyslogSink:
    alerts: list[tuple[str, bytes]] = []
    health = DestinationHealth(
        "syslog", settings.health, lambda t, b: alerts.append((t, b)), registry=registry
    )
    return SyslogSink(settings, load_destinations(path), health, registry=registry)


def _message_json(line: bytes) -> dict[str, Any]:
    parsed = parse_5424(line)
    result: dict[str, Any] = json.loads(parsed.msg)
    return result


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_events_arrive_as_strict_rfc5424_with_equal_json(
    rsyslog: Rsyslog, tmp_path: Path, case: str
) -> None:
    hostile = validate_event(adversarial_event())
    plain = [validate_event(e) for e in EventFactory(7, seed=5).events(299)]
    events = [hostile, *plain]
    envelopes = [
        Envelope("t", 0, i, 0, e["tenant_id"], e, 0, raw=b"") for i, e in enumerate(events)
    ]
    settings = SyslogSettings(confirm_seconds=0.2)
    sink = _sink(
        _destinations_file(tmp_path / "d.yaml", _destination(rsyslog, case)),
        settings,
        CollectorRegistry(),
    )
    try:
        for start in range(0, len(envelopes), 100):
            chunk = envelopes[start : start + 100]
            by_tenant: dict[str, list[Envelope]] = defaultdict(list)
            for env in chunk:
                by_tenant[env.tenant_id].append(env)
            for tenant, batch in by_tenant.items():
                result = await sink.send(tenant, batch)
                if result is not None:
                    assert not result.rejected and result.settled is None
                    assert result.pending is not None
                    await asyncio.wait_for(result.pending, 10)
    finally:
        await sink.close()
    transport_input = CASES[case][1]
    lines = await asyncio.to_thread(rsyslog.wait_for, transport_input, len(events))
    assert len(lines) == len(events)
    received = {}
    for line in lines:
        parsed = parse_5424(line)
        event = json.loads(parsed.msg)
        received[event["event_id"]] = (parsed, event)
    assert len(received) == len(events)
    for event in events:
        parsed, got = received[event["event_id"]]
        assert got == json.loads(to_json_bytes(event)), f"{case}: JSON differs"
        assert parsed.pri // 8 == FACILITY and parsed.version == 1
        assert parsed.timestamp == event["timestamp"]
        assert (parsed.hostname, parsed.app_name) == ("zaita", "siem-export")
        assert parsed.msgid == sanitize_header(event["action"], MAX_MSGID)  # 32 chars at most
        assert parsed.params == {
            "event_id": event["event_id"],
            "tenant_id": event["tenant_id"],
            "outcome": event["outcome"],
        }
    # The hostile one: its text survived byte for byte inside the JSON.
    assert received[hostile["event_id"]][1]["metadata"]["note"] == (
        "line one\nline two\r\nline three\rend"
    )


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.1)


async def test_an_event_too_large_for_udp_is_dead_lettered_and_the_rest_arrive(
    rsyslog: Rsyslog, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=2)
    events = list(EventFactory(5, seed=9).events(60))
    big = events[17]
    big["metadata"] = {"blob": "x" * 5000}
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    with Publisher(kafka, topics.events) as pub:
        for f in [pub.publish(e) for e in events]:
            f.result(timeout=60)
    entry = _destination(rsyslog, "udp") | {"max_datagram_bytes": 2048}
    registry = CollectorRegistry()
    sink = _sink(_destinations_file(tmp_path / "d.yaml", entry), SyslogSettings(), registry)
    engine = Engine(
        kafka,
        topics,
        sink,
        EngineConfig(group_id="syslog-udp", commit_interval_seconds=0.3),
        registry=registry,
    )
    run = asyncio.create_task(engine.run())
    try:
        lines = await asyncio.to_thread(rsyslog.wait_for, "udp", len(events) - 1, 30)
        dead = await asyncio.to_thread(read_messages, kafka_bootstrap, topics.dlq, 1)
    finally:
        engine.request_stop()
        await run
    got = {_message_json(line)["event_id"] for line in lines}
    assert got == {e["event_id"] for e in events} - {big["event_id"]}
    assert len(dead) == 1
    headers = {k: v.decode() for k, v in dead[0].headers() or []}
    reason = headers["dlq.reason"]
    assert "max_datagram_bytes 2048" in reason and "not truncated" in reason, reason
    assert headers["dlq.connector"] == "syslog"
    assert headers["dlq.original.topic"] == topics.events
    assert big["event_id"].encode() in (dead[0].value() or b"")  # the original record
    assert registry.get_sample_value("siem_export_syslog_oversize_messages_total") == 1


def _publish_steadily(
    kafka: KafkaConfig, topic: str, events: list[dict[str, Any]], seconds: float
) -> None:
    """Publish ``events`` spread evenly over about ``seconds`` (in chunks)."""
    chunks = 40
    size = -(-len(events) // chunks)
    with Publisher(kafka, topic) as pub:
        for n in range(chunks):
            started = time.monotonic()
            for f in [pub.publish(e) for e in events[n * size : (n + 1) * size]]:
                f.result(timeout=60)
            time.sleep(max(0.0, seconds / chunks - (time.monotonic() - started)))


@pytest.mark.parametrize("case", ["tcp", "tls", "relp"])
def test_rsyslog_restarted_mid_stream_loses_nothing(
    rsyslog: Rsyslog, kafka_bootstrap: str, tmp_path: Path, case: str
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=3)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    events = list(EventFactory(20, seed=23).events(12_000))
    registry = CollectorRegistry()
    sink = _sink(
        _destinations_file(tmp_path / "d.yaml", _destination(rsyslog, case)),
        SyslogSettings(connect_timeout_seconds=2),
        registry,
    )
    engine = Engine(
        kafka,
        topics,
        sink,
        EngineConfig(
            group_id=f"syslog-restart-{case}",
            commit_interval_seconds=0.3,
            retry_initial_seconds=0.05,
            retry_max_seconds=0.5,
        ),
        registry=registry,
    )
    loop = asyncio.new_event_loop()
    engine_thread = threading.Thread(target=loop.run_until_complete, args=(engine.run(),))
    publisher = threading.Thread(target=_publish_steadily, args=(kafka, topics.events, events, 6.0))
    engine_thread.start()
    publisher.start()
    transport_input = CASES[case][1]
    try:
        # Restart twice while events are being published and forwarded (this thread started
        # rsyslogd, so this thread restarts it; the engine runs in its own thread meanwhile).
        rsyslog.wait_for(transport_input, 2_000, timeout=60)
        rsyslog.restart()
        rsyslog.wait_for(transport_input, len(rsyslog.lines(transport_input)) + 2_000, 60)
        rsyslog.restart()
        publisher.join()
        wanted = {e["event_id"] for e in events}
        deadline = time.monotonic() + 90
        while True:
            lines = rsyslog.lines(transport_input)
            arrived = {_message_json(line)["event_id"] for line in lines}
            if wanted <= arrived or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        loop.call_soon_threadsafe(engine.request_stop)
        publisher.join()
        engine_thread.join(60)
        loop.close()
    missing = wanted - arrived
    assert not missing, f"{case}: {len(missing)} events never arrived"
    assert rsyslog.starts == 3
    assert (
        registry.get_sample_value(
            "siem_export_syslog_connects_total", {"transport": CASES[case][0], "result": "ok"}
        )
        or 0
    ) >= 3, "the connector did not reconnect after the restarts"
    # Each tenant's first arrivals are in partition order (the topic's order).
    expected: dict[str, list[str]] = defaultdict(list)
    records = sorted(
        read_records(kafka, topics.events, idle_timeout=5), key=lambda r: (r.partition, r.offset)
    )
    for record in records:
        assert record.event is not None
        expected[record.event["tenant_id"]].append(record.event["event_id"])
    first: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for line in lines:
        event = _message_json(line)
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            first[event["tenant_id"]].append(event["event_id"])
    for tenant, ids in expected.items():
        assert first[tenant] == ids, f"{case}: tenant {tenant} out of order"
    print(f"{case}: {len(lines)} lines for {len(wanted)} events ({len(lines) - len(wanted)} dups)")
