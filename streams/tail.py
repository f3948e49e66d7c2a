"""Reading a topic from the start without a consumer group: the demo's view and the ceiling.

``read_events`` assigns every partition of the topic directly (no group, no commits), so it
neither joins nor disturbs the connectors' consumer groups. It is what ``siem-export demo``
uses to show events as a SIEM receives them, and what ``bench/ceiling.py`` measures as the
raw consume-decode-encode ceiling.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from streams.codec import AuditEventCodec
from streams.config import ClientConfig, KafkaConfig
from streams.errors import DecodeError, StreamsError
from streams.event import AuditEvent


@dataclass(frozen=True)
class TailedRecord:
    """One record read from the topic: where it was, and its event or why it did not decode."""

    partition: int
    offset: int
    value: bytes
    event: AuditEvent | None
    error: DecodeError | None


def tail_consumer_config(kafka: KafkaConfig) -> ClientConfig:
    """A throughput-oriented consumer that never commits."""
    return {
        **kafka.client_config(),
        "group.id": f"siem-export-tail-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.min.bytes": 1,
        "queued.max.messages.kbytes": 65536,
        "fetch.queue.backoff.ms": 10,
        "enable.partition.eof": True,
    }


def _assign_all(consumer: Consumer, topic: str, timeout: float) -> int:
    meta = consumer.list_topics(topic, timeout=timeout)
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise StreamsError(f"topic {topic!r} does not exist (run 'siem-export topics create')")
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in info.partitions])
    return len(info.partitions)


def read_records(
    kafka: KafkaConfig,
    topic: str,
    *,
    max_records: int | None = None,
    idle_timeout: float = 5.0,
    decode: bool = True,
    batch_size: int = 1000,
) -> Iterator[TailedRecord]:
    """Yield records from the beginning of every partition until all are read or idle."""
    codec = AuditEventCodec()
    consumer = Consumer(tail_consumer_config(kafka))
    try:
        partitions = _assign_all(consumer, topic, idle_timeout)
        at_end: set[int] = set()
        next_offset: dict[int, int] = {}
        seen = 0
        last_data = time.monotonic()
        while time.monotonic() - last_data < idle_timeout:
            if len(at_end) == partitions:
                # Every partition reported its end; confirm against the broker's high
                # watermarks so an early end-of-partition event cannot cut the read short.
                behind = _behind(consumer, topic, next_offset, partitions)
                if not behind:
                    break
                at_end -= behind
            messages = consumer.consume(batch_size, timeout=0.5)
            for msg in messages:
                err = msg.error()
                partition = msg.partition() or 0
                if err is not None:
                    if err.code() == err._PARTITION_EOF:
                        at_end.add(partition)
                        continue
                    raise KafkaException(err)
                at_end.discard(partition)
                next_offset[partition] = (msg.offset() or 0) + 1
                last_data = time.monotonic()
                value = msg.value() or b""
                event: AuditEvent | None = None
                problem: DecodeError | None = None
                if decode:
                    try:
                        event = codec.decode(value)
                    except DecodeError as exc:
                        problem = exc
                yield TailedRecord(partition, msg.offset() or 0, value, event, problem)
                seen += 1
                if max_records is not None and seen >= max_records:
                    return
    finally:
        consumer.close()


def _behind(consumer: Consumer, topic: str, position: dict[int, int], partitions: int) -> set[int]:
    """Partitions whose high watermark lies past what was read from them."""
    behind = set()
    for partition in range(partitions):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=5, cached=False
        )
        if high > max(position.get(partition, 0), low):
            behind.add(partition)
    return behind
