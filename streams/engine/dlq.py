"""The dead-letter topic: records the engine cannot deliver, kept with the reason.

Undecodable, invalid and oversized records, and events a sink refuses for good, are produced
to ``siem-export.dlq`` unchanged (same key and value) with headers saying why and where from;
only once the broker has stored them does the engine count them as done, so nothing is ever
dropped silently.

Headers (all UTF-8 text):

    dlq.reason              what is wrong, in words (names the field or limit)
    dlq.error.class         the error type, e.g. CorruptRecordError, Rejected
    dlq.connector           the connector that gave up (webhook, syslog, ...)
    dlq.original.topic      where the record was read
    dlq.original.partition
    dlq.original.offset
    dlq.original.timestamp  the record's Kafka timestamp in epoch milliseconds
    dlq.tenant              the tenant, when it is known
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from streams.config import KafkaConfig
from streams.errors import PublishError


@dataclass(frozen=True)
class DeadLetter:
    """One record to park, with why."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    reason: str
    error_class: str
    tenant_id: str | None = None


class DeadLetterQueue:
    """Produces dead letters and reports their storage through asyncio futures."""

    def __init__(self, kafka: KafkaConfig, topic: str, connector: str) -> None:
        self.topic = topic
        self.connector = connector
        self._producer = Producer(
            {
                **kafka.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.max.bytes": 16 * 1024 * 1024,
            }
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="siem-export-dlq", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def send(self, letter: DeadLetter) -> asyncio.Future[None]:
        """Produce ``letter``; the future resolves once the broker stored it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done(err: KafkaError | None, _msg: Message) -> None:
            def settle() -> None:
                if future.done():
                    return
                if err is None:
                    future.set_result(None)
                else:
                    future.set_exception(
                        PublishError(
                            f"dead letter for {letter.topic}/{letter.partition}@{letter.offset} "
                            f"not stored: {err.str()}",
                            retriable=True,
                        )
                    )

            loop.call_soon_threadsafe(settle)

        headers: list[tuple[str, str | bytes | None]] = [
            ("dlq.reason", letter.reason.encode()),
            ("dlq.error.class", letter.error_class.encode()),
            ("dlq.connector", self.connector.encode()),
            ("dlq.original.topic", letter.topic.encode()),
            ("dlq.original.partition", str(letter.partition).encode()),
            ("dlq.original.offset", str(letter.offset).encode()),
            ("dlq.original.timestamp", str(letter.timestamp_ms).encode()),
        ]
        if letter.tenant_id:
            headers.append(("dlq.tenant", letter.tenant_id.encode()))
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=letter.value,
                    key=letter.key,
                    headers=headers,
                    on_delivery=done,
                )
                return future
            except BufferError:
                self._producer.poll(0.05)

    def close(self, timeout: float = 10.0) -> int:
        """Flush and stop; returns how many dead letters were not stored."""
        remaining = int(self._producer.flush(timeout))
        self._closed.set()
        self._poller.join()
        return remaining
