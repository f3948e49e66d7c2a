"""Destination health alerts through the real broker: ``DestinationHealth`` publishing with
``AlertPublisher``, read back by a plain consumer; and alerts that cannot be delivered."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import CollectorRegistry

from connectors.health import DestinationHealth, HealthThresholds
from streams.alerts import AlertPublisher
from streams.config import KafkaConfig, TopicsConfig
from streams.errors import PublishError

pytestmark = pytest.mark.integration

URL = "https://siem.example.com/hook"
FIELDS = [
    "type",
    "version",
    "tenant_id",
    "method",
    "endpoint",
    "state",
    "reason",
    "since",
    "at",
    "consecutive_failures",
]


def _alerts_topic(bootstrap: str) -> str:
    name = TopicsConfig(alerts=f"alerts-{uuid.uuid4().hex[:10]}").alerts
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(timeout=30)
    return name


def _read(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False}
    )
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions]
    )
    out: list[Message] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return out


def test_transitions_reach_the_alerts_topic(kafka_bootstrap: str) -> None:
    topic = _alerts_topic(kafka_bootstrap)
    publisher = AlertPublisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic)
    health = DestinationHealth(
        "webhook", HealthThresholds(), publisher.publish, registry=CollectorRegistry()
    )
    # tnt_a: failing by count, disabled by 410, recovered by a success.
    for _ in range(6):
        health.failure("tnt_a", URL, "HTTP 503 Service Unavailable")
    health.failure("tnt_a", URL, "HTTP 410 Gone", disable=True)
    health.success("tnt_a", URL)
    # tnt_b: misconfigured, then recovered by a configuration change.
    health.failure("tnt_b", URL, "HTTP 401 Unauthorized", misconfigured=True)
    health.reconfigured("tnt_b", URL + "/v2")
    assert publisher.close(timeout=30) == 0
    assert (publisher.delivered, publisher.failed) == (5, 0)

    msgs = _read(kafka_bootstrap, topic, 5)
    assert len(msgs) == 5
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    partitions: dict[str, set[int | None]] = {}
    for msg in sorted(msgs, key=lambda m: (m.partition() or 0, m.offset() or 0)):
        key = msg.key()
        assert key is not None
        tenant = key.decode()
        assert msg.headers() == [("content-type", b"application/json")]
        value = msg.value()
        assert value is not None
        body = orjson.loads(value)
        assert list(body) == FIELDS
        assert body["tenant_id"] == tenant
        assert (body["type"], body["version"], body["method"]) == (
            "siem_export.destination_health",
            1,
            "webhook",
        )
        by_tenant.setdefault(tenant, []).append(body)
        partitions.setdefault(tenant, set()).add(msg.partition())
    assert all(len(p) == 1 for p in partitions.values())  # a tenant's alerts keep their order
    a = by_tenant["tnt_a"]
    assert [(b["state"], b["reason"], b["consecutive_failures"]) for b in a] == [
        ("failing", "HTTP 503 Service Unavailable", 5),
        ("disabled", "HTTP 410 Gone", 7),
        ("recovered", "delivery succeeded", 7),
    ]
    assert a[0]["since"] == a[1]["since"]
    assert all(b["endpoint"] == URL for b in a)
    b = by_tenant["tnt_b"]
    assert [(x["state"], x["endpoint"], x["reason"]) for x in b] == [
        ("failing", URL, "HTTP 401 Unauthorized"),
        ("recovered", URL + "/v2", "configuration changed"),
    ]


def test_undelivered_alerts_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    # No broker listens on this port: the alert is purged on close and logged at ERROR.
    publisher = AlertPublisher(KafkaConfig(bootstrap_servers="127.0.0.1:1"), "nowhere")
    with caplog.at_level(logging.ERROR, logger="streams.alerts"):
        publisher.publish("tnt_a", b"{}")
        assert publisher.close(timeout=0.5) == 1
    assert publisher.failed == 1
    [record] = [r for r in caplog.records if r.name == "streams.alerts"]
    assert record.getMessage() == "Alert not stored."
    assert (record.__dict__["tenant"], record.__dict__["topic"]) == ("tnt_a", "nowhere")


def test_full_queue_raises_publish_error(caplog: pytest.LogCaptureFixture) -> None:
    publisher = AlertPublisher(
        KafkaConfig(bootstrap_servers="127.0.0.1:1"),
        "nowhere",
        overrides={"queue.buffering.max.messages": 1},
    )
    health = DestinationHealth(
        "syslog", HealthThresholds(), publisher.publish, registry=(registry := CollectorRegistry())
    )
    with caplog.at_level(logging.ERROR):
        health.failure("tnt_a", "siem.example.com:6514", "connection refused", disable=True)
        # The queue holds one record: the second alert is refused, delivery goes on.
        assert health.failure("tnt_b", "siem.example.com:6514", "gone", disable=True) == "disabled"
        with pytest.raises(PublishError, match="queue is full"):
            publisher.publish("tnt_c", b"{}")
        publisher.close(timeout=0.5)
    assert publisher.failed == 3  # two refused, one purged
    labels = {"method": "syslog", "state": "disabled"}
    assert registry.get_sample_value("siem_export_destination_alert_errors_total", labels) == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert messages.count("Alert not sent.") == 2
    assert "Destination health alert not published." in messages
    assert "Alert not stored." in messages
