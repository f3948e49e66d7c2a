"""The publisher platform services use to put audit events on the topic.

Each event is validated first (a bad one raises ``InvalidEventError`` listing every wrong
field, and nothing is sent), encoded with Avro single-object encoding, keyed by ``tenant_id``
and partitioned with ``murmur2_random`` so a tenant lands on the same partition as with
Kafka's Java producer. The producer is idempotent with ``acks=all``.

Delivery is reported per event: ``publish`` returns a ``concurrent.futures.Future`` that
resolves to a ``Delivery`` (or raises ``PublishError``), and ``publish_async`` awaits the same
from asyncio code. A background thread serves librdkafka's delivery callbacks, so callers
never have to poll. ``close`` (or leaving the ``with`` block) flushes everything in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.codec import AuditEventCodec
from streams.config import ClientConfig, KafkaConfig
from streams.errors import PublishError
from streams.event import validate_event

CONTENT_TYPE = b"application/vnd.zaita.audit-event+avro;encoding=single-object"


@dataclass(frozen=True)
class Delivery:
    """Where the broker stored one event."""

    event_id: str
    tenant_id: str
    topic: str
    partition: int
    offset: int


def producer_config(kafka: KafkaConfig, overrides: Mapping[str, Any] | None = None) -> ClientConfig:
    """librdkafka settings of the publisher: idempotent, acks=all, Java-compatible partitioning."""
    conf: ClientConfig = {
        **kafka.client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 120_000,
    }
    conf.update(overrides or {})
    return conf


class Publisher:
    """Validates, encodes and produces audit events; safe to share between threads."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str,
        *,
        codec: AuditEventCodec | None = None,
        overrides: Mapping[str, Any] | None = None,
        queue_full_timeout: float = 30.0,
    ) -> None:
        self.topic = topic
        self._codec = codec or AuditEventCodec()
        self._queue_full_timeout = queue_full_timeout
        self._producer = Producer(producer_config(kafka, overrides))
        self._closed = threading.Event()
        self._poller = threading.Thread(
            target=self._serve_callbacks, name="siem-export-publisher", daemon=True
        )
        self._poller.start()

    def _serve_callbacks(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def publish(self, event: Mapping[str, Any]) -> Future[Delivery]:
        """Validate and send one event; the future resolves once the broker has stored it."""
        if self._closed.is_set():
            raise PublishError("publisher is closed")
        valid = validate_event(event)
        value = self._codec.encode(valid)
        tenant_id = str(valid["tenant_id"])
        event_id = str(valid["event_id"])
        future: Future[Delivery] = Future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                future.set_exception(
                    PublishError(
                        f"event {event_id!r} of tenant {tenant_id!r} was not stored: {err.str()}",
                        retriable=err.retriable(),
                    )
                )
                return
            partition = msg.partition()
            offset = msg.offset()
            future.set_result(
                Delivery(
                    event_id,
                    tenant_id,
                    msg.topic() or self.topic,
                    -1 if partition is None else partition,
                    -1 if offset is None else offset,
                )
            )

        self._produce(tenant_id.encode(), value, on_delivery, event_id)
        return future

    def _produce(self, key: bytes, value: bytes, callback: Any, event_id: str) -> None:
        deadline = time.monotonic() + self._queue_full_timeout
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    value=value,
                    key=key,
                    headers=[("content-type", CONTENT_TYPE)],
                    on_delivery=callback,
                )
                return
            except BufferError:
                # The local queue is full: wait for deliveries to drain it, within a bound.
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"event {event_id!r}: the producer queue stayed full for "
                        f"{self._queue_full_timeout:.0f}s",
                        retriable=True,
                    ) from None
                self._producer.poll(0.05)
            except Exception as exc:  # KafkaException, TypeError from the C layer
                raise PublishError(f"event {event_id!r} was refused: {exc}") from exc

    async def publish_async(self, event: Mapping[str, Any]) -> Delivery:
        """Await delivery of one event from asyncio code (validation errors raise at once)."""
        return await asyncio.wrap_future(self.publish(event))

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for every event in flight; returns how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 30.0) -> int:
        """Flush, then stop the callback thread; returns how many events were not delivered."""
        if self._closed.is_set():
            return 0
        remaining = self.flush(timeout)
        if remaining:
            # Fail the futures of what could not be delivered instead of leaving them pending.
            self._producer.purge()
            self._producer.flush(0)
        self._closed.set()
        self._poller.join()
        return remaining

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
