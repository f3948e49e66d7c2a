"""Creation of the topics siem-export needs, idempotently.

Called by ``siem-export topics create``, by ``demo`` and by tests. Creating a topic that
already exists is not an error; a topic that exists with fewer partitions than asked is
reported (never altered silently: adding partitions moves tenants to other partitions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.config import KafkaConfig, TopicsConfig
from streams.errors import TopicAdminError

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: its name, partition count and topic-level configuration."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


@dataclass(frozen=True)
class TopicResult:
    """What ``ensure_topics`` did for one topic."""

    name: str
    status: Literal["created", "exists"]
    partitions: int
    note: str = ""


def standard_topics(topics: TopicsConfig) -> list[TopicSpec]:
    """The four topics of the product contract, with their partitioning and retention."""
    rf = topics.replication_factor
    return [
        TopicSpec(
            topics.events,
            topics.events_partitions,
            rf,
            {"retention.ms": str(7 * DAY_MS)},
            "audit events published by the platform (key = tenant_id)",
        ),
        TopicSpec(
            topics.dlq,
            3,
            rf,
            {"retention.ms": str(30 * DAY_MS)},
            "records that could not be delivered, with the reason in headers",
        ),
        TopicSpec(
            topics.alerts,
            3,
            rf,
            {"retention.ms": str(14 * DAY_MS)},
            "destination health changes for the customer notifier",
        ),
        TopicSpec(
            topics.config,
            1,
            rf,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            "live per-tenant destination configuration (compacted)",
        ),
    ]


def _existing_partitions(admin: AdminClient, timeout: float) -> dict[str, int]:
    try:
        meta = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(f"cannot list topics: {exc.args[0]}") from exc
    return {name: len(t.partitions) for name, t in meta.topics.items()}


def ensure_topics(
    kafka: KafkaConfig, specs: list[TopicSpec], timeout: float = 30.0
) -> list[TopicResult]:
    """Create every topic in ``specs`` that does not exist yet; report the others."""
    admin = AdminClient(kafka.client_config())
    existing = _existing_partitions(admin, timeout)
    results: dict[str, TopicResult] = {}
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    config=s.config,
                )
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for spec in missing:
            try:
                futures[spec.name].result(timeout=timeout)
                results[spec.name] = TopicResult(spec.name, "created", spec.partitions)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    existing = _existing_partitions(admin, timeout)
                    continue
                raise TopicAdminError(f"cannot create topic {spec.name!r}: {err}") from exc
    for spec in specs:
        if spec.name in results:
            continue
        have = existing.get(spec.name, spec.partitions)
        note = ""
        if have < spec.partitions:
            note = (
                f"has {have} partitions, fewer than the {spec.partitions} configured;"
                " left unchanged (adding partitions would move tenants between partitions)"
            )
        results[spec.name] = TopicResult(spec.name, "exists", have, note)
    return [results[s.name] for s in specs]


def require_topic(kafka: KafkaConfig, topic: str, timeout: float = 10.0) -> int:
    """Partition count of ``topic``; TopicAdminError if Kafka is unreachable or it is missing."""
    admin = AdminClient(kafka.client_config())
    try:
        meta = admin.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise TopicAdminError(
            f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc.args[0]}"
        ) from exc
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise TopicAdminError(
            f"topic {topic!r} does not exist on {kafka.bootstrap_servers}"
            " (run 'siem-export topics create')"
        )
    return len(info.partitions)
