"""State shared by the engine's parts, and the one way they call the consumer thread.

``Engine`` (``runner.py``) is assembled from layers, each a module of one concern:
``core`` (state) → ``commits`` (rebalance callbacks and commits) → ``dispatch`` (records into
lanes, dead letters, offset resets) → ``delivery`` (sending lanes to the sink, retries) →
``runner`` (the poll loop, flow control, shutdown, health, watchdog).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Consumer
from prometheus_client import REGISTRY, CollectorRegistry

from streams.codec import AuditEventCodec
from streams.config import KafkaConfig, TopicsConfig
from streams.engine.config import EngineConfig
from streams.engine.decoding import DecodePool
from streams.engine.dlq import DeadLetterQueue
from streams.engine.lanes import Lane, PartitionLanes
from streams.engine.metrics import EngineMetrics
from streams.engine.sink import Sink

_log = logging.getLogger("streams.engine.runner")
T = TypeVar("T")


@dataclass(frozen=True)
class EngineHealth:
    """What /healthz and /readyz report."""

    live: bool
    ready: bool
    poll_age_seconds: float
    partitions: list[int]
    stalled: list[int]
    buffered_events: int
    in_flight_events: int
    stopping: bool


class EngineCore:
    """Everything the engine holds; no behaviour beyond the consumer-thread call."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topics: TopicsConfig,
        sink: Sink,
        config: EngineConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        codec: AuditEventCodec | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topics.events
        self.sink = sink
        self.cfg = config or EngineConfig()
        self.group_id = self.cfg.group_id or f"siem-export-{sink.name}"
        self.metrics = EngineMetrics(registry or REGISTRY, sink.name)
        # The series updated per fetched batch or per send, looked up once.
        self._consumed_total = self.metrics.consumed.labels(sink.name, self.topic)
        self._skipped_total = self.metrics.skipped.labels(sink.name)
        self._delivered_total = self.metrics.delivered.labels(sink.name)
        self._buffered_gauge = self.metrics.buffered.labels(sink.name)
        self._in_flight_gauge = self.metrics.in_flight.labels(sink.name)
        self._rereading_gauge = self.metrics.rereading.labels(sink.name)
        self._codec = codec or AuditEventCodec()
        self._batch_limit: Callable[[str], int] | None = getattr(sink, "batch_limit", None)
        # A sink that reads only the events' JSON gets it from decoding worker processes.
        self._json_only = bool(getattr(sink, "json_only", False))
        self._decoder: DecodePool | None = None
        if self._json_only and self.cfg.decode_processes:
            self._decoder = DecodePool(self._codec, self.cfg.decode_processes)
        self._dlq = DeadLetterQueue(kafka, topics.dlq, sink.name)
        self._parts: dict[int, PartitionLanes] = {}
        self._new_parts: list[PartitionLanes] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="siem-export-consumer")
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._hard_stop = False
        self._buffered = 0
        self._in_flight = 0
        # Record key -> tenant id: one lookup instead of decoding every key (bounded).
        self._tenants: dict[bytes, str] = {}
        self._paused = False
        self._slots = asyncio.Semaphore(self.cfg.max_concurrent_sends)
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_poll = time.monotonic()
        self.has_assignment = False
        self._progress: dict[int, tuple[int, float]] = {}
        self.stalled: set[int] = set()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _wake(self, part: PartitionLanes, lane: Lane) -> None:
        """Start sending a lane (``delivery.Delivering``)."""
        raise NotImplementedError
