"""The consumer-group runner every connector plugs into: it owns Kafka, a sink owns delivery.

Who calls it: ``siem-export run <method>`` builds a sink and calls ``Engine(...).run()``.

Threads. librdkafka's consumer is driven from ONE worker thread (every consume, seek, pause,
commit and close goes through a single-thread executor, so they never interleave); rebalance
callbacks therefore also run there. Everything else (dispatching records to lanes, sending,
acknowledging) runs on the asyncio loop. The poll loop never waits for a destination: a slow
sink only fills lane queues, which are bounded, so polls stay far inside max.poll.interval.ms.

Commit order (the at-least-once contract). Every ``commit_interval_seconds``, on revoke and
on shutdown, for each partition this process still owns:

    Step 1. Compute the commit point C: the lowest offset not yet acknowledged by the sink
            (or stored in the dead-letter topic) over all lanes of the partition; while a lane
            re-reads, C never passes the re-read position.
    Step 2. Refuse a C lower than the last committed one (a bug, never papered over).
    Step 3. Encode the lagging tenants above C into the commit metadata (``lanes.py``), so a
            restart does not re-deliver to healthy tenants.
    Step 4. Re-check ownership in the consumer thread, right before committing: a partition
            revoked meanwhile is never committed.
    Step 5. Commit synchronously; count the result; remember C and the metadata.

Shutdown (SIGTERM/SIGINT via ``request_stop``): stop fetching, let lanes drain for
``shutdown_grace_seconds``, commit (steps above), close the consumer (its revoke commits
again), close the sink. A second signal stops at once, committing nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from prometheus_client import REGISTRY, CollectorRegistry

from streams.codec import AuditEventCodec
from streams.config import KafkaConfig, TopicsConfig
from streams.engine.config import EngineConfig
from streams.engine.dlq import DeadLetter, DeadLetterQueue
from streams.engine.lanes import DLQ_LANE, Custody, Lane, PartitionLanes
from streams.engine.metrics import EngineMetrics
from streams.engine.sink import Envelope, SendResult, Sink
from streams.errors import DecodeError, SinkError

_log = logging.getLogger(__name__)
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


class Engine:
    """Reads the audit topic in a consumer group and drives one sink, lane by lane."""

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
        self._codec = codec or AuditEventCodec()
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
        self._paused = False
        self._slots = asyncio.Semaphore(self.cfg.max_concurrent_sends)
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_poll = time.monotonic()
        self.has_assignment = False
        self._progress: dict[int, tuple[int, float]] = {}
        self.stalled: set[int] = set()

    # ------------------------------------------------------------------ lifecycle

    def health(self) -> EngineHealth:
        """Liveness and readiness for /healthz and /readyz (safe to call from the loop)."""
        poll_age = time.monotonic() - self.last_poll
        # Alive while the poll loop turns; a loop stuck past max.poll.interval.ms is dead.
        live = self._consumer is not None and poll_age < self.cfg.max_poll_interval_ms / 2000
        ready = live and self.has_assignment and not self._stopping.is_set()
        return EngineHealth(
            live=live,
            ready=ready,
            poll_age_seconds=round(poll_age, 3),
            partitions=sorted(self._parts),
            stalled=sorted(self.stalled),
            buffered_events=self._buffered,
            in_flight_events=self._in_flight,
            stopping=self._stopping.is_set(),
        )

    def request_stop(self) -> None:
        """First call: drain and exit cleanly. Second call: stop at once."""
        if self._stopping.is_set():
            self._hard_stop = True
            for task in list(self._tasks):
                task.cancel()
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``request_stop``; returns after the final commit."""
        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(self._consumer_config())
        await self._call(
            self._consumer.subscribe,
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        background = [
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._watch_loop(), name="watchdog"),
        ]
        try:
            while not self._stopping.is_set():
                messages = await self._call(self._consume)
                self.last_poll = time.monotonic()
                self._adopt_new_partitions()
                if messages:
                    self._dispatch(messages)
                await self._flow_control()
        finally:
            for task in background:
                task.cancel()
            await self._shutdown()

    async def _shutdown(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # noqa: S101 - set in run()
        with contextlib.suppress(KafkaException):
            await self._call(self._pause_all)
        if not self._hard_stop:
            deadline = time.monotonic() + self.cfg.shutdown_grace_seconds
            while time.monotonic() < deadline and not self._hard_stop and self._busy():
                await asyncio.sleep(0.05)
            await self._commit_all()
        else:
            self._parts.clear()  # nothing more is committed on a hard stop
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._call(consumer.close)
        await asyncio.to_thread(self._dlq.close)
        await self.sink.close()
        self._executor.shutdown(wait=True)

    def _busy(self) -> bool:
        return any(
            lane.queue or lane.in_flight or lane.custody or lane.dead_lettering
            for part in self._parts.values()
            for lane in part.lanes.values()
        )

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _consumer_config(self) -> dict[str, Any]:
        return {
            **self.kafka.client_config(),
            "group.id": self.group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "max.poll.interval.ms": self.cfg.max_poll_interval_ms,
            "session.timeout.ms": self.cfg.session_timeout_ms,
            "enable.partition.eof": False,
            "queued.max.messages.kbytes": 32768,
        }

    def _consume(self) -> list[Message]:
        assert self._consumer is not None  # noqa: S101
        return self._consumer.consume(self.cfg.fetch_batch, timeout=0.2)

    # ------------------------------------------------------------------ rebalance (consumer thread)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = consumer.committed(partitions, timeout=30)
        fresh: list[PartitionLanes] = []
        positions: list[TopicPartition] = []
        for tp in committed:
            start = tp.offset
            if start < 0:  # no commit yet: the group's starting policy
                start = self._reset_offset(consumer, tp.partition, self.cfg.start_from)
            fresh.append(PartitionLanes(self.topic, tp.partition, start, tp.metadata))
            positions.append(TopicPartition(self.topic, tp.partition, start))
            _log.info("Partition assigned.", extra={"partition": tp.partition, "offset": start})
        # Assign with explicit positions: a committed offset, or the starting policy.
        consumer.incremental_assign(positions)
        self._new_parts.extend(fresh)
        self.metrics.rebalances.labels(self.sink.name, "assigned").inc(len(partitions))
        self.has_assignment = True

    def _reset_offset(self, consumer: Consumer, partition: int, where: str) -> int:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=30, cached=False
        )
        return int(low if where == "earliest" else high)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        loop = self._loop
        assert loop is not None  # noqa: S101
        owned = [self._parts[tp.partition] for tp in partitions if tp.partition in self._parts]
        for part in owned:
            part.revoked = True  # Stop dispatching and acknowledging into this partition.
        if owned and not self._hard_stop:
            waiting = asyncio.run_coroutine_threadsafe(self._settle(owned), loop)
            try:
                offsets = waiting.result(self.cfg.revoke_timeout_seconds + 5)
            except Exception:  # the loop is gone or too slow: commit nothing
                offsets = []
            self._commit_now(consumer, offsets)
        if owned:
            forgetting = asyncio.run_coroutine_threadsafe(self._forget_all(owned), loop)
            with contextlib.suppress(Exception):
                forgetting.result(5)
        self.metrics.rebalances.labels(self.sink.name, "revoked").inc(len(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [self._parts[tp.partition] for tp in partitions if tp.partition in self._parts]
        for part in lost:
            part.revoked = True
        if lost and self._loop is not None:
            forgetting = asyncio.run_coroutine_threadsafe(self._forget_all(lost), self._loop)
            with contextlib.suppress(Exception):
                forgetting.result(5)
        self.metrics.rebalances.labels(self.sink.name, "lost").inc(len(partitions))
        _log.warning(
            "Partitions lost without a clean revoke; nothing committed for them.",
            extra={"partitions": [tp.partition for tp in partitions]},
        )

    async def _settle(self, parts: Sequence[PartitionLanes]) -> list[TopicPartition]:
        """Wait (bounded) for in-flight sends of revoked partitions, then their offsets."""
        deadline = time.monotonic() + self.cfg.revoke_timeout_seconds
        while time.monotonic() < deadline and any(
            lane.in_flight or lane.custody or lane.dead_lettering
            for part in parts
            for lane in part.lanes.values()
        ):
            await asyncio.sleep(0.02)
        return [self._offsets_of(part) for part in parts]

    async def _forget_all(self, parts: Sequence[PartitionLanes]) -> None:
        """Drop revoked partitions (on the loop, which owns lane state)."""
        for part in parts:
            if self._parts.get(part.partition) is part:
                del self._parts[part.partition]
            for lane in part.lanes.values():
                self._buffered -= len(lane.queue)
                lane.queue.clear()
                if lane.task is not None:
                    lane.task.cancel()
            labels = (self.sink.name, self.topic, str(part.partition))
            for gauge in (self.metrics.lag, self.metrics.stalled):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
            self._progress.pop(part.partition, None)
            self.stalled.discard(part.partition)

    def _adopt_new_partitions(self) -> None:
        while self._new_parts:
            part = self._new_parts.pop()
            self._parts[part.partition] = part

    # ------------------------------------------------------------------ dispatch (loop)

    def _dispatch(self, messages: list[Message]) -> None:
        consumed = 0
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._on_consume_error(msg, err)
                continue
            part = self._parts.get(msg.partition() or 0)
            offset = msg.offset()
            if part is None or part.revoked or offset is None:
                continue
            consumed += 1
            self._take(part, msg, offset)
            part.advance(offset)
        if consumed:
            self.metrics.consumed.labels(self.sink.name, self.topic).inc(consumed)

    def _take(self, part: PartitionLanes, msg: Message, offset: int) -> None:
        key = msg.key()
        value = msg.value()
        tenant = key.decode("utf-8", "replace") if key else None
        keyed: Lane | None = None
        if tenant is not None:
            # Skip already-acknowledged records before paying for decoding them.
            keyed = part.wants(tenant, offset)
            if keyed is None:
                self.metrics.skipped.labels(self.sink.name).inc()
                return
        size = len(value or b"")
        problem: tuple[str, str] | None = None
        event = None
        if size > self.cfg.max_record_bytes:
            problem = (
                f"record of {size} bytes exceeds engine.max_record_bytes "
                f"({self.cfg.max_record_bytes})",
                "OversizedRecord",
            )
        else:
            try:
                event = self._codec.decode(value)
            except DecodeError as exc:
                problem = (str(exc), type(exc).__name__)
        if event is not None and tenant is not None and event["tenant_id"] != tenant:
            problem = (
                f"record key {tenant!r} does not match tenant_id {event['tenant_id']!r}",
                "TenantMismatch",
            )
        if problem is not None or event is None:
            reason, cls = problem or ("no event", "DecodeError")
            # A keyed record is tracked in its key's lane (so a restart finds it through
            # that tenant's lag); only keyless ones use the dead-letter pseudo-lane.
            owner = keyed if keyed is not None else part.wants(DLQ_LANE, offset)
            if owner is None:
                return
            owner.high_water = offset
            self._dead_letter(
                part,
                owner,
                DeadLetter(
                    self.topic,
                    part.partition,
                    offset,
                    _timestamp(msg),
                    key,
                    value,
                    reason,
                    cls,
                    tenant,
                ),
            )
            return
        tenant = event["tenant_id"]
        lane = part.wants(tenant, offset)
        if lane is None:
            self.metrics.skipped.labels(self.sink.name).inc()
            return
        lane.high_water = offset
        if len(lane.queue) >= self.cfg.lane_max_events:
            # The lane is full: keep what it holds, leave the rest in Kafka for later.
            part.park(lane, offset)
            return
        lane.queue.append(
            Envelope(
                self.topic,
                part.partition,
                offset,
                _timestamp(msg),
                tenant,
                event,
                size,
                value or b"",
            )
        )
        self._buffered += 1
        self._wake(part, lane)

    def _on_consume_error(self, msg: Message, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTO_OFFSET_RESET:  # noqa: SLF001
            self._schedule_offset_reset(msg.partition() or 0, err)
            return
        log = _log.error if err.fatal() else _log.warning
        log("Kafka consumer error.", extra={"error": err.str(), "retriable": err.retriable()})

    def _schedule_offset_reset(self, partition: int, err: KafkaError) -> None:
        task = asyncio.create_task(self._reset_out_of_range(partition, err))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reset_out_of_range(self, partition: int, err: KafkaError) -> None:
        try:
            await self._reposition(partition, err)
        except Exception:  # noqa: BLE001 - the next fetch error schedules it again
            _log.exception(
                "Could not reposition a partition after an offset reset error.",
                extra={"partition": partition},
            )

    async def _reposition(self, partition: int, err: KafkaError) -> None:
        """The committed offset no longer exists (retention): apply the policy, loudly."""
        part = self._parts.get(partition)
        consumer = self._consumer
        if part is None or consumer is None:
            return
        low, high = await self._call(
            consumer.get_watermark_offsets, TopicPartition(self.topic, partition), 30, False
        )
        target = int(low if self.cfg.on_offset_out_of_range == "earliest" else high)
        gap = max(0, target - part.read_pos)
        _log.error(
            "Committed offset no longer exists; events were deleted by retention before delivery.",
            extra={
                "partition": partition,
                "position": part.read_pos,
                "resume_at": target,
                "gap_records": gap,
                "policy": self.cfg.on_offset_out_of_range,
                "error": err.str(),
            },
        )
        self.metrics.offset_gap.labels(self.sink.name, self.topic, str(partition)).inc(gap)
        fresh = PartitionLanes(self.topic, partition, target, None)
        fresh.last_committed = target
        self._parts[partition] = fresh
        await self._call(self._reassign, consumer, TopicPartition(self.topic, partition, target))
        await self._call(
            self._commit_now, consumer, [TopicPartition(self.topic, partition, target)]
        )

    def _dead_letter(self, part: PartitionLanes, lane: Lane, letter: DeadLetter) -> None:
        lane.dead_lettering.add(letter.offset)
        future = self._dlq.send(letter)
        self.metrics.dead_lettered.labels(self.sink.name, letter.error_class).inc()
        _log.warning(
            "Record dead-lettered.",
            extra={
                "partition": letter.partition,
                "offset": letter.offset,
                "tenant": letter.tenant_id,
                "reason": letter.reason,
                "error_class": letter.error_class,
            },
        )

        def stored(fut: asyncio.Future[None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                # Not stored: keep the offset pending so it is never committed past.
                _log.error(
                    "Dead letter not stored; the partition stays behind it.",
                    extra={"partition": letter.partition, "offset": letter.offset},
                )
                return
            lane.dead_lettering.discard(letter.offset)

        future.add_done_callback(stored)

    # ------------------------------------------------------------------ lanes (loop)

    def _wake(self, part: PartitionLanes, lane: Lane) -> None:
        if lane.task is None and not self._hard_stop:
            task = asyncio.create_task(self._drive(part, lane))
            lane.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drive(self, part: PartitionLanes, lane: Lane) -> None:
        """Send one lane's events in order until its queue is empty; retry, never reorder."""
        try:
            while not part.revoked:
                if not lane.queue and not lane.in_flight:
                    if lane.parked_from is not None and not lane.custody:
                        await self._sleep_until(lane.retry_at)
                        if not part.revoked:
                            part.unpark(lane)
                    break
                if not lane.in_flight:
                    take = min(self.sink.max_batch, len(lane.queue))
                    lane.in_flight = [lane.queue.popleft() for _ in range(take)]
                    self._buffered -= take
                    self._in_flight += take
                await self._send(part, lane)
        finally:
            lane.task = None
            if lane.in_flight and part.revoked:
                self._in_flight -= len(lane.in_flight)
                lane.in_flight = []

    async def _send(self, part: PartitionLanes, lane: Lane) -> None:
        batch = lane.in_flight
        try:
            async with self._slots:
                result = await self.sink.send(lane.tenant_id, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill the lane
            error = (
                exc
                if isinstance(exc, SinkError)
                else SinkError(f"{type(exc).__name__}: {exc}", retriable=True)
            )
            await self._after_failure(part, lane, error)
            return
        if part.revoked:
            return
        self._settle_batch(part, lane, batch, result)

    def _settle_batch(
        self, part: PartitionLanes, lane: Lane, batch: list[Envelope], result: SendResult | None
    ) -> None:
        if lane.failures:
            _log.info(
                "Lane recovered.",
                extra={
                    "tenant": lane.tenant_id,
                    "partition": part.partition,
                    "failures": lane.failures,
                },
            )
        lane.failures = 0
        lane.failing_since = None
        rejected = result.rejected if result is not None else {}
        for index, reason in rejected.items():
            env = batch[index]
            self._dead_letter(
                part,
                lane,
                DeadLetter(
                    env.topic,
                    env.partition,
                    env.offset,
                    env.timestamp_ms,
                    env.tenant_id.encode(),
                    env.raw,
                    reason,
                    "Rejected",
                    env.tenant_id,
                ),
            )
        lane.in_flight = []
        self._in_flight -= len(batch)
        if result is not None and result.pending is not None:
            custody = Custody(batch[0].offset, batch[-1].offset, batch, result.pending)
            lane.custody.append(custody)
            result.pending.add_done_callback(lambda f: self._custody_done(part, lane, custody))
            return
        self._acknowledged(lane, [e for i, e in enumerate(batch) if i not in rejected])

    def _acknowledged(self, lane: Lane, events: list[Envelope]) -> None:
        if not events:
            return
        now = time.time()
        name = self.sink.name
        self.metrics.delivered.labels(name).inc(len(events))
        for env in events:
            self.metrics.latency.labels(name).observe(max(0.0, now - env.timestamp_ms / 1000))
        if self.cfg.tenant_labels:
            self.metrics.tenant_delivered.labels(name, lane.tenant_id).inc(len(events))

    def _custody_done(self, part: PartitionLanes, lane: Lane, custody: Custody) -> None:
        if part.revoked or custody not in lane.custody:
            return
        future = custody.future
        if future.cancelled() or future.exception() is not None:
            # Everything from this batch on is re-read from Kafka, in order.
            exc = None if future.cancelled() else future.exception()
            error = exc if isinstance(exc, SinkError) else SinkError(str(exc or "cancelled"))
            lane.custody.clear()
            self._buffered -= len(lane.queue)
            lane.queue.clear()
            lane.parked_from = custody.first_offset
            lane.high_water = custody.first_offset - 1
            lane.failures += 1
            lane.retry_at = time.monotonic() + self._backoff(lane, error)
            self.metrics.failed.labels(self.sink.name, "custody").inc()
            self._wake(part, lane)
            return
        # Acknowledge in order: a later batch waits for the ones before it.
        while (
            lane.custody
            and lane.custody[0].future.done()
            and not (lane.custody[0].future.cancelled() or lane.custody[0].future.exception())
        ):
            self._acknowledged(lane, lane.custody.popleft().events)

    async def _after_failure(self, part: PartitionLanes, lane: Lane, error: SinkError) -> None:
        lane.failures += 1
        if lane.failing_since is None:
            lane.failing_since = time.monotonic()
        kind = "retriable" if error.retriable else "paused"
        self.metrics.failed.labels(self.sink.name, kind).inc()
        delay = self._backoff(lane, error)
        _log.warning(
            "Delivery failed; the lane retries the same batch.",
            extra={
                "tenant": lane.tenant_id,
                "partition": part.partition,
                "failures": lane.failures,
                "retry_in_seconds": round(delay, 2),
                "error": str(error),
                "retriable": error.retriable,
            },
        )
        if lane.failures >= self.cfg.park_after_failures and (
            lane.queue or lane.parked_from is None
        ):
            # A failing destination holds only its in-flight batch in memory; the rest stays
            # in Kafka and is read again when the destination recovers.
            dropped = len(lane.queue)
            # Park above what the lane already took: during a re-read, read_pos may lie
            # below records it has in flight.
            first = lane.queue[0].offset if lane.queue else max(part.read_pos, lane.high_water + 1)
            part.park(lane, first)
            self._buffered -= dropped
        await self._sleep_until(time.monotonic() + delay)
        self.metrics.retried.labels(self.sink.name).inc()

    def _backoff(self, lane: Lane, error: SinkError) -> float:
        if error.retry_after is not None:
            return min(max(float(error.retry_after), 0.0), 3600.0)
        if not error.retriable:
            return self.cfg.paused_retry_seconds
        base = self.cfg.retry_initial_seconds * float(2 ** min(lane.failures - 1, 30))
        capped = min(base, self.cfg.retry_max_seconds)
        return capped * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security

    async def _sleep_until(self, when: float) -> None:
        while not self._hard_stop:
            left = when - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.5))

    # ------------------------------------------------------------------ flow control (loop)

    async def _flow_control(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # noqa: S101
        seeks = []
        for part in self._parts.values():
            target = part.apply_rewind()
            if target is not None:
                seeks.append(TopicPartition(self.topic, part.partition, target))
        for tp in seeks:
            await self._call(consumer.seek, tp)
        cap = self.cfg.process_max_events
        if not self._paused and self._buffered >= cap:
            self._paused = True
            await self._call(self._pause_all)
            self.metrics.paused.labels(self.sink.name).set(1)
            _log.warning(
                "Process buffer cap reached; fetching paused.",
                extra={"buffered": self._buffered, "cap": cap},
            )
        elif self._paused and self._buffered <= cap // 2 and not self._stopping.is_set():
            self._paused = False
            await self._call(self._resume_all)
            self.metrics.paused.labels(self.sink.name).set(0)
        self.metrics.buffered.labels(self.sink.name).set(self._buffered)
        self.metrics.in_flight.labels(self.sink.name).set(self._in_flight)

    def _reassign(self, consumer: Consumer, tp: TopicPartition) -> None:
        consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition)])
        consumer.incremental_assign([tp])
        if self._paused:
            consumer.pause([tp])

    def _pause_all(self) -> None:
        assert self._consumer is not None  # noqa: S101
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)

    def _resume_all(self) -> None:
        assert self._consumer is not None  # noqa: S101
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)

    # ------------------------------------------------------------------ commits

    def _offsets_of(self, part: PartitionLanes) -> TopicPartition:
        # Step 1 and Step 3: the commit point and the lagging tenants above it.
        point, metadata = part.commit_offsets(self.cfg.metadata_limit_bytes)
        if metadata:
            return TopicPartition(self.topic, part.partition, point, metadata)
        return TopicPartition(self.topic, part.partition, point)

    async def _commit_all(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        offsets = []
        for part in list(self._parts.values()):
            if part.revoked:
                continue
            tp = self._offsets_of(part)
            # Step 2: never go backwards.
            if tp.offset < part.last_committed:
                _log.error(
                    "Refusing to commit an offset lower than the last commit.",
                    extra={
                        "partition": part.partition,
                        "offset": tp.offset,
                        "last_committed": part.last_committed,
                    },
                )
                continue
            if tp.offset == part.last_committed and (tp.metadata or "") == part.last_metadata:
                continue
            offsets.append(tp)
        if offsets:
            await self._call(self._commit_now, consumer, offsets)
        for part in list(self._parts.values()):
            part.forget_idle()

    def _commit_now(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Steps 4 and 5 (consumer thread)."""
        owned = [tp for tp in offsets if tp.partition in self._parts]
        if not owned:
            return
        try:
            result = consumer.commit(offsets=owned, asynchronous=False)
        except KafkaException as exc:
            self.metrics.commits.labels(self.sink.name, "failed").inc()
            _log.warning("Commit failed; the next one retries.", extra={"error": str(exc)})
            return
        for tp in result or owned:
            part = self._parts.get(tp.partition)
            if tp.error is not None or part is None:
                continue
            part.last_committed = tp.offset
            part.last_metadata = tp.metadata or ""
        self.metrics.commits.labels(self.sink.name, "ok").inc()

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.commit_interval_seconds)
            try:
                await self._commit_all()
            except Exception:  # noqa: BLE001 - keep committing on the next tick
                _log.exception("Commit round failed.")

    # ------------------------------------------------------------------ watchdog

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.stall_seconds / 4))
            consumer = self._consumer
            if consumer is None:
                continue
            now = time.monotonic()
            lanes = {"active": 0, "failing": 0, "parked": 0}
            for part in list(self._parts.values()):
                for lane in part.lanes.values():
                    if lane.parked_from is not None:
                        lanes["parked"] += 1
                    elif lane.failures:
                        lanes["failing"] += 1
                    elif not lane.idle:
                        lanes["active"] += 1
                try:
                    _, high = consumer.get_watermark_offsets(
                        TopicPartition(self.topic, part.partition), cached=True
                    )
                except KafkaException:
                    continue
                if high is None or high < 0:
                    continue
                lag = max(0, int(high) - part.last_committed)
                labels = (self.sink.name, self.topic, str(part.partition))
                self.metrics.lag.labels(*labels).set(lag)
                last_offset, since = self._progress.get(part.partition, (-1, now))
                if part.last_committed != last_offset:
                    self._progress[part.partition] = (part.last_committed, now)
                    since = now
                stalled = lag > 0 and now - since >= self.cfg.stall_seconds
                self.metrics.stalled.labels(*labels).set(1 if stalled else 0)
                if stalled and part.partition not in self.stalled:
                    _log.error(
                        "Partition stalled: lag and no progress.",
                        extra={
                            "partition": part.partition,
                            "lag": lag,
                            "seconds": round(now - since),
                        },
                    )
                    self.stalled.add(part.partition)
                elif not stalled:
                    self.stalled.discard(part.partition)
            for state, count in lanes.items():
                self.metrics.lanes.labels(self.sink.name, state).set(count)


def _timestamp(msg: Message) -> int:
    _, ts = msg.timestamp()
    return int(ts) if ts and ts > 0 else int(time.time() * 1000)
