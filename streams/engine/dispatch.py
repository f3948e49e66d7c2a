"""Turning fetched records into lane work: skip, decode, dead-letter, or queue.

Also the explicit policy for a committed offset that retention deleted: logged with the size
of the gap, counted, never a silent jump.
"""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import KafkaError, Message, TopicPartition

from streams.engine.commits import Committing
from streams.engine.core import _log
from streams.engine.dlq import DeadLetter
from streams.engine.lanes import DLQ_LANE, Lane, PartitionLanes
from streams.errors import DecodeError

_TENANT_CACHE = 100_000
"""Distinct record keys remembered (then forgotten all at once) by ``_dispatch``."""


class Dispatching(Committing):
    """Records → lanes (loop side)."""

    def _dispatch(self, messages: list[Message]) -> None:
        """Queue each record in its tenant's lane, skip it, or dead-letter it.

        The engine's hottest path: one pass per fetched batch, lookups held in locals. A keyed
        record is queued as fetched; its lane decodes it when it takes it into a batch
        (``Delivering._open``), so decoding, and the memory of a decoded event, are paid only
        for records on their way to the sink. Keyless records are decoded here to find their
        tenant. Records come in runs of one partition: the partition is looked up, and its
        read position advanced, once per run.
        """
        parts = self._parts
        max_bytes = self.cfg.max_record_bytes
        lane_max = self.cfg.lane_max_events
        tenants = self._tenants
        part: PartitionLanes | None = None
        number: int | None = -1
        last = prev = -1  # the current run's last offset taken, and the one before it
        consumed = skipped = queued = 0
        try:
            for msg in messages:
                err = msg.error()
                if err is not None:
                    self._on_consume_error(msg, err)
                    continue
                if msg.partition() != number:
                    if part is not None and last >= 0:
                        part.advance(last)
                    number, last, prev = msg.partition(), -1, -1
                    part = parts.get(number) if number is not None else None
                    if part is not None and part.revoked:
                        part = None
                offset = msg.offset()
                if part is None or offset is None:
                    continue
                consumed += 1
                prev, last = last, offset
                key = msg.key()
                if key:
                    tenant = tenants.get(key)
                    if tenant is None:
                        if len(tenants) >= _TENANT_CACHE:
                            tenants.clear()
                        tenant = tenants[key] = key.decode("utf-8", "replace")
                    lane = part.lanes.get(tenant) or part.lane(tenant)
                    # Skip already-acknowledged records (re-reads), and those of a parked lane.
                    if offset <= lane.high_water or (
                        lane.parked_from is not None and offset >= lane.parked_from
                    ):
                        skipped += 1
                        continue
                    value = msg.value() or b""
                    if len(value) > max_bytes:
                        lane.high_water = offset
                        problem = _oversized(len(value), max_bytes)
                        letter = self._letter(part, msg, offset, tenant, problem)
                        self._dead_letter(part, lane, letter)
                        continue
                else:
                    value = msg.value() or b""
                    found = self._keyless_lane(part, msg, offset, len(value))
                    if found is None:
                        continue
                    lane = found
                lane.high_water = offset
                queue = lane.queue
                if len(queue) >= lane_max:
                    # The lane is full: keep what it holds, leave the rest in Kafka for later.
                    part.park(lane, offset)
                    continue
                _, ts = msg.timestamp()
                queue.append((offset, ts if ts > 0 else int(time.time() * 1000), value, key))
                queued += 1
                if lane.task is None:
                    self._wake(part, lane)
        except BaseException:
            last = prev  # the record being taken when this was raised was not taken
            raise
        finally:
            if part is not None and last >= 0:
                part.advance(last)
            self._buffered += queued
            if consumed:
                self._consumed_total.inc(consumed)
            if skipped:
                self._skipped_total.inc(skipped)

    def _keyless_lane(
        self, part: PartitionLanes, msg: Message, offset: int, size: int
    ) -> Lane | None:
        """The lane of a record without a key (decoded for its tenant_id), or None if the
        record was skipped or dead-lettered (through the dead-letter pseudo-lane)."""
        problem: tuple[str, str] | None = None
        tenant = None
        if size > self.cfg.max_record_bytes:
            problem = _oversized(size, self.cfg.max_record_bytes)
        else:
            try:
                tenant = self._codec.decode(msg.value())["tenant_id"]
            except DecodeError as exc:
                problem = (str(exc), type(exc).__name__)
        if tenant is None:
            owner = part.wants(DLQ_LANE, offset)
            if owner is not None:
                owner.high_water = offset
                reason, cls = problem or ("no event", "DecodeError")
                self._dead_letter(part, owner, self._letter(part, msg, offset, None, (reason, cls)))
            return None
        lane = part.wants(tenant, offset)
        if lane is None:
            self._skipped_total.inc()
        return lane

    def _letter(
        self,
        part: PartitionLanes,
        msg: Message,
        offset: int,
        tenant: str | None,
        problem: tuple[str, str],
    ) -> DeadLetter:
        return DeadLetter(
            self.topic,
            part.partition,
            offset,
            _timestamp(msg),
            msg.key(),
            msg.value() or b"",
            problem[0],
            problem[1],
            tenant,
        )

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


def _oversized(size: int, limit: int) -> tuple[str, str]:
    return (
        f"record of {size} bytes exceeds engine.max_record_bytes ({limit})",
        "OversizedRecord",
    )


def _timestamp(msg: Message) -> int:
    _, ts = msg.timestamp()
    return int(ts) if ts and ts > 0 else int(time.time() * 1000)
