"""``topics create`` against the real broker: the four topics, their configs, idempotence."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from streams.config import KafkaConfig, TopicsConfig
from streams.topics import ensure_topics, standard_topics

pytestmark = pytest.mark.integration


def _topics(suffix: str) -> TopicsConfig:
    return TopicsConfig(
        events=f"t{suffix}.events",
        dlq=f"t{suffix}.dlq",
        alerts=f"t{suffix}.alerts",
        config=f"t{suffix}.config",
        events_partitions=6,
    )


def test_creates_all_topics_then_reports_them_existing(kafka_bootstrap: str) -> None:
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    cfg = _topics(uuid.uuid4().hex[:8])
    first = ensure_topics(kafka, standard_topics(cfg))
    assert [(r.name, r.status) for r in first] == [
        (cfg.events, "created"),
        (cfg.dlq, "created"),
        (cfg.alerts, "created"),
        (cfg.config, "created"),
    ]
    second = ensure_topics(kafka, standard_topics(cfg))
    assert [r.status for r in second] == ["exists"] * 4
    assert second[0].partitions == 6

    admin = AdminClient(kafka.client_config())
    meta = admin.list_topics(timeout=10)
    assert len(meta.topics[cfg.events].partitions) == 6
    res = ConfigResource(ResourceType.TOPIC, cfg.config)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"


def test_fewer_partitions_than_configured_is_reported_not_changed(kafka_bootstrap: str) -> None:
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    cfg = _topics(uuid.uuid4().hex[:8])
    ensure_topics(kafka, standard_topics(cfg))
    bigger = cfg.model_copy(update={"events_partitions": 12})
    result = ensure_topics(kafka, standard_topics(bigger))[0]
    assert result.status == "exists"
    assert result.partitions == 6
    assert "fewer than the 12 configured" in result.note
