"""The webhook connector against the real broker and a real HTTPS receiver.

(1) In process: engine + WebhookSink while the receiver throws 500s, 429s with Retry-After and
answers too slowly; one tenant's endpoint is gone (410). Every other tenant receives all its
events, each in partition order by first arrival; the gone tenant is disabled and its alert
lands on the alerts topic.
(2) End to end: ``siem-export generate`` → Kafka → ``siem-export run webhook`` (a real
process, killed with -9 twice mid-run and restarted) → receiver: every event arrives, each
tenant in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import CollectorRegistry

from connectors.destinations import load_destinations
from connectors.health import DestinationHealth, HealthThresholds
from connectors.webhook.config import WebhookSettings
from connectors.webhook.sink import WebhookSink
from streams.alerts import AlertPublisher
from streams.config import KafkaConfig, TopicsConfig
from streams.engine import Engine, EngineConfig
from streams.tail import read_records
from tests.engine_support import fresh_topics, publish, spawn_connector
from tests.webhook_receiver import Faults, Receiver, localhost_tls

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a test key, public
LOOPBACK = ("127.0.0.0/8", "::1/128")


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.1)


def _with_alerts_topic(bootstrap: str, topics: TopicsConfig) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topics.alerts, 1, 1)]).values():
        f.result(timeout=30)


def _destinations(path: Path, port: int, bundle: Path, **webhook: object) -> Path:
    entry = {"url": f"https://localhost:{port}/in", "ca_bundle": str(bundle), **webhook}
    path.write_text(json.dumps({"tenants": {"*": {"webhook": entry}}}))  # JSON is YAML
    return path


def _expected_order(bootstrap: str, topic: str) -> dict[str, list[str]]:
    """Each tenant's event ids in partition order, read back from the topic."""
    order: dict[str, list[str]] = defaultdict(list)
    records = sorted(
        read_records(KafkaConfig(bootstrap_servers=bootstrap), topic, idle_timeout=5),
        key=lambda r: (r.partition, r.offset),
    )
    for record in records:
        assert record.event is not None
        order[record.event["tenant_id"]].append(record.event["event_id"])
    return order


def _alerts(bootstrap: str, topic: str, want: int) -> list[tuple[str, dict[str, object]]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "alerts-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    found: list[tuple[str, dict[str, object]]] = []
    deadline = time.monotonic() + 20
    while len(found) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            found.append(((msg.key() or b"").decode(), json.loads(msg.value() or b"{}")))
    consumer.close()
    return found


async def test_faults_retry_in_order_and_a_gone_endpoint_is_disabled_with_an_alert(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=3)
    _with_alerts_topic(kafka_bootstrap, topics)
    events = publish(kafka_bootstrap, topics.events, 1500, 12, seed=41)
    counts: dict[str, int] = defaultdict(int)
    for e in events:
        counts[e["tenant_id"]] += 1
    gone = max(counts, key=lambda t: counts[t])
    tls, bundle = localhost_tls(tmp_path)
    receiver = Receiver(
        Faults(error_500=0.08, throttle_429=0.04, slow=0.02, slow_seconds=1.5),
        secret=SECRET,
        gone={gone},
    )
    await receiver.start(tls)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    registry = CollectorRegistry()
    alerts = AlertPublisher(kafka, topics.alerts)
    settings = WebhookSettings(
        allowed_networks=LOOPBACK,  # type: ignore[arg-type]
        timeout_seconds=1.0,
        health=HealthThresholds(failing_after_failures=3),
    )
    dests = load_destinations(
        _destinations(tmp_path / "d.yaml", receiver.port, bundle, signing_secret=SECRET)
    )
    health = DestinationHealth("webhook", settings.health, alerts.publish, registry=registry)
    sink = WebhookSink(settings, dests, health, registry=registry)
    engine = Engine(
        kafka,
        topics,
        sink,
        EngineConfig(
            group_id="wh-faults",
            commit_interval_seconds=0.3,
            retry_initial_seconds=0.05,
            retry_max_seconds=0.5,
        ),
        registry=registry,
    )
    healthy = {e["event_id"] for e in events if e["tenant_id"] != gone}
    run = asyncio.create_task(engine.run())
    try:
        await _until(lambda: healthy <= receiver.distinct(), 120, "all healthy events")
        await _until(
            lambda: health.is_disabled(gone, f"https://localhost:{receiver.port}/in"),
            10,
            "gone disabled",
        )
    finally:
        engine.request_stop()
        await run
        await receiver.stop()
        alerts.close()

    # Faults did happen, and nothing was accepted without a valid signature.
    assert receiver.statuses[500] and receiver.statuses[429] and receiver.statuses[410]
    assert receiver.bad_signatures == 0
    assert gone not in receiver.received
    expected = _expected_order(kafka_bootstrap, topics.events)
    for tenant, ids in expected.items():
        if tenant != gone:
            assert receiver.first_arrivals(tenant) == ids, f"{tenant} out of order or incomplete"
    # One disabled alert for the gone tenant (its key is the tenant id), no secrets in it.
    records = _alerts(kafka_bootstrap, topics.alerts, 1)
    disabled = [r for key, r in records if key == gone and r["state"] == "disabled"]
    assert len(disabled) == 1, records
    assert disabled[0]["method"] == "webhook"
    assert disabled[0]["endpoint"] == f"https://localhost:{receiver.port}/in"
    assert "410" in str(disabled[0]["reason"])
    assert SECRET not in json.dumps(records)
    # The gone tenant's events are not committed past: they stay in Kafka.
    assert registry.get_sample_value(
        "siem_export_delivered_total", {"connector": "webhook"}
    ) >= len(healthy)


async def test_end_to_end_generator_kafka_connector_receiver_survives_kill_9(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=6)
    _with_alerts_topic(kafka_bootstrap, topics)
    tls, bundle = localhost_tls(tmp_path)
    receiver = Receiver(Faults(error_500=0.02), secret=SECRET)
    await receiver.start(tls)
    dest_file = _destinations(
        tmp_path / "d.yaml", receiver.port, bundle, signing_secret=SECRET, max_events_per_request=5
    )
    env = {
        **os.environ,
        "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SIEM_EXPORT_TOPICS__EVENTS": topics.events,
        "SIEM_EXPORT_TOPICS__DLQ": topics.dlq,
        "SIEM_EXPORT_TOPICS__ALERTS": topics.alerts,
        "SIEM_EXPORT_ENGINE__GROUP_ID": "wh-e2e",
        "SIEM_EXPORT_ENGINE__COMMIT_INTERVAL_SECONDS": "0.5",
        "SIEM_EXPORT_ENGINE__RETRY_MAX_SECONDS": "1",
        "SIEM_EXPORT_OPS__ENABLED": "false",
        "SIEM_EXPORT_WEBHOOK__ALLOWED_NETWORKS": json.dumps(LOOPBACK),
    }
    total = 6000
    generate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors",
        "generate",
        "--count",
        str(total),
        "--tenants",
        "60",
        "--seed",
        "9",
        "--rate",
        "1500",
        "--quiet",
        cwd=ROOT,
        env=env,
    )
    log = tmp_path / "connector.log"
    proc = spawn_connector("webhook", env, dest_file, log)
    kills = 0
    try:
        # Kill -9 twice while the stream is still arriving, restart each time.
        for threshold in (total // 5, total // 2):
            await _until(lambda t=threshold: receiver.total() >= t, 90, f"{threshold} received")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            proc = spawn_connector("webhook", env, dest_file, log)
        assert await asyncio.wait_for(generate.wait(), 120) == 0
        await _until(lambda: len(receiver.distinct()) >= total, 120, "every event received")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        if generate.returncode is None:
            generate.kill()
        await receiver.stop()

    assert kills == 2
    expected = _expected_order(kafka_bootstrap, topics.events)
    assert sum(len(v) for v in expected.values()) == total
    for tenant, ids in expected.items():
        assert receiver.first_arrivals(tenant) == ids, f"{tenant} out of order or incomplete"
    assert receiver.bad_signatures == 0
    duplicates = receiver.total() - total
    print(f"\nkill -9 x2 over {total} events: {duplicates} duplicate deliveries")
