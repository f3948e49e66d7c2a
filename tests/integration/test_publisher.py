"""The publisher against the real broker: round trip, validation, delivery reports, asyncio,
and partitioning identical to Kafka's own Java producer."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.codec import AuditEventCodec
from streams.config import KafkaConfig
from streams.errors import InvalidEventError
from streams.publisher import Publisher
from streams.synthetic import EventFactory
from tests.spec_example import SPEC_EXAMPLE

pytestmark = pytest.mark.integration


def _new_topic(bootstrap: str, partitions: int) -> str:
    name = f"pub-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex, "enable.auto.commit": False}
    )
    meta = consumer.list_topics(topic, timeout=10)
    consumer.assign(
        [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions]
    )
    out: list[Any] = []
    try:
        import time

        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
    finally:
        consumer.close()
    return out


def test_round_trip_keys_and_delivery_reports(kafka_bootstrap: str) -> None:
    topic = _new_topic(kafka_bootstrap, 4)
    events = list(EventFactory(7, seed=3).events(300))
    events.append(copy.deepcopy(SPEC_EXAMPLE))
    with Publisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic) as pub:
        futures = [pub.publish(e) for e in events]
        reports = [f.result(timeout=30) for f in futures]
    assert [r.event_id for r in reports] == [e["event_id"] for e in events]
    assert all(r.topic == topic and r.offset >= 0 for r in reports)

    msgs = _read_all(kafka_bootstrap, topic, len(events))
    assert len(msgs) == len(events)
    codec = AuditEventCodec()
    by_id = {e["event_id"]: e for e in events}
    where = {r.event_id: (r.partition, r.offset) for r in reports}
    for msg in msgs:
        decoded = codec.decode(msg.value())
        assert msg.key() == decoded["tenant_id"].encode()
        assert where[decoded["event_id"]] == (msg.partition(), msg.offset())
        assert decoded == by_id[decoded["event_id"]]
    # Every event of a tenant sits on one partition.
    partitions: dict[str, set[int]] = {}
    for r in reports:
        partitions.setdefault(r.tenant_id, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())


def test_invalid_event_lists_every_field_and_sends_nothing(kafka_bootstrap: str) -> None:
    topic = _new_topic(kafka_bootstrap, 1)
    bad = copy.deepcopy(SPEC_EXAMPLE)
    bad["outcome"] = "maybe"
    bad["timestamp"] = "yesterday"
    del bad["tenant_id"]
    with Publisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic) as pub:
        with pytest.raises(InvalidEventError) as info:
            pub.publish(bad)
        paths = {p.path for p in info.value.problems}
        assert {"outcome", "timestamp", "tenant_id"} <= paths
        pub.publish(SPEC_EXAMPLE).result(timeout=30)
    msgs = _read_all(kafka_bootstrap, topic, 2, timeout=5)
    assert len(msgs) == 1  # only the valid event reached the topic


async def test_publish_async(kafka_bootstrap: str) -> None:
    topic = _new_topic(kafka_bootstrap, 2)
    events = list(EventFactory(3, seed=9).events(50))
    with Publisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic) as pub:
        reports = await asyncio.gather(*(pub.publish_async(e) for e in events))
    assert sorted(r.event_id for r in reports) == sorted(e["event_id"] for e in events)
    assert len({(r.partition, r.offset) for r in reports}) == len(events)


def test_undeliverable_events_fail_their_futures_on_close() -> None:
    # No broker listens on this port: close() must fail the futures, not leave them pending.
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1")
    pub = Publisher(kafka, "nowhere", overrides={"message.timeout.ms": 60_000})
    future = pub.publish(SPEC_EXAMPLE)
    assert pub.close(timeout=1.0) == 1
    with pytest.raises(Exception, match="not stored"):
        future.result(timeout=10)


JAVA_KEYS = [f"tnt_{i:04d}" for i in range(150)] + [
    "tnt_7g8h9i0j",
    "a",
    "0",
    "tenant-with-dashes",
    "Acme.Corp:eu-1_prod",
    "x" * 128,
]


def test_partitions_match_kafkas_java_producer(
    kafka_bootstrap: str, kafka_lib_dir: Path, tmp_path: Path
) -> None:
    topic = _new_topic(kafka_bootstrap, 12)
    # 1. Kafka's own ConsoleProducer (Java default partitioner: murmur2 of the key bytes).
    lines = "".join(f"{key}\tjava\n" for key in JAVA_KEYS)
    subprocess.run(
        [
            "java",
            "-Xmx256m",
            "-cp",
            f"{kafka_lib_dir}/*",
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            kafka_bootstrap,
            "--topic",
            topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=\t",
        ],
        input=lines.encode(),
        check=True,
        timeout=120,
        capture_output=True,
    )
    # 2. Our publisher, same keys as tenant ids.
    with Publisher(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic) as pub:
        ours = {}
        for key in JAVA_KEYS:
            event = copy.deepcopy(SPEC_EXAMPLE)
            event["tenant_id"] = key
            event["event_id"] = f"evt_{uuid.uuid4().hex[:12]}"
            ours[key] = pub.publish(event).result(timeout=30).partition
    msgs = _read_all(kafka_bootstrap, topic, 2 * len(JAVA_KEYS))
    java = {m.key().decode(): m.partition() for m in msgs if m.value() == b"java"}
    assert len(java) == len(JAVA_KEYS)
    assert len(set(java.values())) > 6  # the keys really spread over partitions
    mismatches = {k: (java[k], ours[k]) for k in JAVA_KEYS if java[k] != ours[k]}
    assert mismatches == {}
