"""Rebalance callbacks and offset commits: the at-least-once contract of the engine.

Rebalance callbacks run in the consumer thread (inside ``consume``); lane state belongs to
the asyncio loop, so they hand work to the loop and wait for it, bounded.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.engine.core import EngineCore, _log
from streams.engine.lanes import PartitionLanes


class Committing(EngineCore):
    """Partition assignment, revocation, loss, and commits."""

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
            part.revoked = True  # Stop dispatching into this partition.
        if owned and not self._hard_stop:
            # A sink holding events open (files being assembled) hands them over now, so
            # that what it writes within the wait below is committed by this revoke.
            loop.call_soon_threadsafe(self._sink_hook, "flush", [p.partition for p in owned])
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

    def _sink_hook(self, name: str, partitions: list[int] | None) -> None:
        """Call the sink's optional ``flush``/``forget`` (see streams.engine.sink); never raise."""
        hook = getattr(self.sink, name, None)
        if hook is None:
            return
        try:
            hook(partitions)
        except Exception:  # noqa: BLE001 - a sink bug must not break a rebalance
            _log.exception("The sink's %s hook failed.", name, extra={"partitions": partitions})

    async def _forget_all(self, parts: Sequence[PartitionLanes]) -> None:
        """Drop revoked partitions (on the loop, which owns lane state)."""
        self._sink_hook("forget", [part.partition for part in parts])
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

    def _reassign(self, consumer: Consumer, tp: TopicPartition) -> None:
        consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition)])
        consumer.incremental_assign([tp])
        if self._paused:
            consumer.pause([tp])

    def _offsets_of(self, part: PartitionLanes) -> TopicPartition:
        # Step 1 and Step 3: the commit point and the lagging tenants above it.
        # The broker refuses metadata of exactly offset.metadata.max.bytes (Kafka 4.3: 4,096
        # bytes is OFFSET_METADATA_TOO_LARGE, 4,095 is fine): stay one byte below.
        point, metadata = part.commit_offsets(self.cfg.metadata_limit_bytes - 1)
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
        # Step 4. Only partitions this process still holds, by its own state and by the
        # consumer's assignment (during a revoke callback both still include them).
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == self.topic}
        owned = [tp for tp in offsets if tp.partition in self._parts and tp.partition in assigned]
        if len(owned) < len(offsets):
            self.metrics.commits.labels(self.sink.name, "refused_not_owned").inc(
                len(offsets) - len(owned)
            )
        if not owned:
            return
        # Step 5.
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
