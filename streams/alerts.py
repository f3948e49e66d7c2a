"""Producer of destination health alerts (``siem-export.alerts``) for the platform's notifier.

``connectors.health.DestinationHealth`` decides when to alert and builds the record (JSON, see
docs/alerts.md); ``AlertPublisher.publish`` is the callable it is given. Records are keyed by
tenant id, so a tenant's alerts stay in order on one partition. The producer is idempotent
with ``acks=all`` (``streams.publisher.producer_config``).

``publish`` never waits for the broker: it hands the record to librdkafka and serves pending
delivery reports with ``poll(0)``. A record that is not stored in the end is logged at ERROR
with the tenant and the topic and counted in ``failed`` (an alert never vanishes silently);
``close`` purges what could not be delivered in time, so those are logged too. Alerts are
rare, so there is no background thread: reports are served by later ``publish``, ``flush``
and ``close`` calls. Connectors never import confluent_kafka, which is why this lives here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streams.config import KafkaConfig
from streams.errors import PublishError
from streams.publisher import producer_config

_log = logging.getLogger(__name__)

CONTENT_TYPE = b"application/json"
QUEUE_FULL_RETRIES = 3
"""How many times ``publish`` waits 0.1 s for room in a full producer queue before failing."""


class AlertPublisher:
    """Produces alert records (JSON bytes, key = tenant id) to the alerts topic."""

    def __init__(
        self, kafka: KafkaConfig, topic: str, *, overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.topic = topic
        self.delivered = 0
        """Alerts the broker has stored (as reported so far)."""
        self.failed = 0
        """Alerts refused by the producer or not stored by the broker."""
        self._producer = Producer(producer_config(kafka, overrides))

    def publish(self, tenant_id: str, record: bytes) -> None:
        """Hand one alert to the producer without waiting; ``PublishError`` if it is refused."""
        for attempt in range(QUEUE_FULL_RETRIES + 1):
            try:
                self._producer.produce(
                    self.topic,
                    value=record,
                    key=tenant_id.encode(),
                    headers=[("content-type", CONTENT_TYPE)],
                    on_delivery=self._reported(tenant_id),
                )
                break
            except BufferError:
                if attempt == QUEUE_FULL_RETRIES:
                    self._refused(tenant_id, "the producer queue is full")
                    raise PublishError(
                        f"alert of tenant {tenant_id!r} for {self.topic!r} not sent: "
                        "the producer queue is full",
                        retriable=True,
                    ) from None
                self._producer.poll(0.1)
            except Exception as exc:  # KafkaException, TypeError from the C layer
                self._refused(tenant_id, str(exc))
                raise PublishError(
                    f"alert of tenant {tenant_id!r} for {self.topic!r} refused: {exc}"
                ) from exc
        self._producer.poll(0)

    def _refused(self, tenant_id: str, error: str) -> None:
        self.failed += 1
        _log.error(
            "Alert not sent.", extra={"tenant": tenant_id, "topic": self.topic, "error": error}
        )

    def _reported(self, tenant_id: str) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self.delivered += 1
                return
            self.failed += 1
            _log.error(
                "Alert not stored.",
                extra={
                    "tenant": tenant_id,
                    "topic": self.topic,
                    "error": err.str(),
                    "retriable": err.retriable(),
                },
            )

        return on_delivery

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for every alert in flight; returns how many are still undelivered."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 10.0) -> int:
        """Flush; alerts still undelivered after ``timeout`` are purged (and logged as failed).

        Returns how many were not delivered.
        """
        remaining = self.flush(timeout)
        if remaining:
            self._producer.purge()
            self._producer.flush(0)
        return remaining
