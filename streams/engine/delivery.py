"""Driving lanes to the sink: batches in order, retries with backoff, parking, custody.

A lane sends one batch at a time and retries the same batch until it is acknowledged, so a
retry never reorders a tenant. After ``park_after_failures`` failures the lane keeps only its
batch in flight in memory; everything after it stays in Kafka and is read again once the
destination answers.
"""

from __future__ import annotations

import asyncio
import random
import time
from array import array
from collections.abc import Sequence
from itertools import islice
from operator import attrgetter

from streams.engine.core import _log
from streams.engine.decoding import Outcome, decode_batch
from streams.engine.dispatch import Dispatching
from streams.engine.dlq import DeadLetter
from streams.engine.lanes import Custody, Lane, PartitionLanes, Queued
from streams.engine.sink import RELEASED, Envelope, SendResult
from streams.errors import SinkError


class Delivering(Dispatching):
    """Lanes → sink (loop side)."""

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
                    if self._decoder is None:
                        batch = self._open(part, lane)
                    else:
                        opened = await self._open_decoded(part, lane)
                        if opened is None:
                            continue  # the lane's queue changed meanwhile: look again
                        batch = opened
                    lane.in_flight = batch
                    self._in_flight += len(batch)
                    if not batch:
                        continue  # every record taken was dead-lettered
                    if lane.parked_from is not None:
                        part.refill(lane, self.cfg.lane_max_events // 2)
                elif not self._json_only:
                    # Offered again (a retry, or the rest after a partial answer): the sink
                    # may have released some of these events after its last attempt.
                    for env in lane.in_flight:
                        env.restore()
                await self._send(part, lane)
        finally:
            lane.task = None
            if lane.in_flight and part.revoked:
                self._in_flight -= len(lane.in_flight)
                lane.in_flight = []

    def _open(self, part: PartitionLanes, lane: Lane) -> list[Envelope]:
        """Decode the lane's next queued records into a batch for the sink (``_batch``)."""
        queue = lane.queue
        take = min(self._take_limit(lane.tenant_id), len(queue))
        self._buffered -= take
        popleft = queue.popleft
        records = [popleft() for _ in range(take)]
        values = [record[2] for record in records]
        outcomes = decode_batch(self._codec, values, lane.tenant_id, to_json=False)
        return self._batch(part, lane, records, outcomes)

    async def _open_decoded(self, part: PartitionLanes, lane: Lane) -> list[Envelope] | None:
        """``_open`` with the decoding done by the worker processes (``streams.engine.decoding``).

        The records stay at the head of the lane's queue while they are decoded, so the commit
        point still sees them. Only this task takes records from the head; a park meanwhile
        (the lane failed, or was revoked) drops records from the tail or the whole queue.
        None if the batch is no longer at the head when it comes back: the caller looks again.
        """
        assert self._decoder is not None  # noqa: S101 - the caller checked
        queue = lane.queue
        take = min(self._take_limit(lane.tenant_id), len(queue))
        records = list(islice(queue, take))
        epoch = lane.epoch
        outcomes = await self._decoder.decode([r[2] for r in records], lane.tenant_id)
        if (
            part.revoked
            or lane.epoch != epoch
            or len(queue) < take
            or queue[0] is not records[0]
            or queue[take - 1] is not records[-1]
        ):
            return None
        if outcomes is None:  # the workers could not: decode here
            return self._open(part, lane)
        for _ in range(take):
            queue.popleft()
        self._buffered -= take
        return self._batch(part, lane, records, outcomes)

    def _batch(
        self,
        part: PartitionLanes,
        lane: Lane,
        records: Sequence[Queued],
        outcomes: Sequence[Outcome],
    ) -> list[Envelope]:
        """The envelopes of records taken from the lane, by their outcome (``decode_batch``):
        an event, an event's JSON (the event is ``RELEASED``), or the reason to dead-letter
        the record here, in its place in the lane (``lane.dead_lettering`` holds the commit
        point below it until the dead letter is stored)."""
        topic, partition, tenant = self.topic, part.partition, lane.tenant_id
        decode = self._codec.decode
        batch: list[Envelope] = []
        append = batch.append
        for (offset, timestamp_ms, value, key), outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, tuple):
                letter = DeadLetter(
                    topic, partition, offset, timestamp_ms, key, value, *outcome, tenant
                )
                self._dead_letter(part, lane, letter)
                continue
            event, json = (RELEASED, outcome) if isinstance(outcome, bytes) else (outcome, None)
            append(
                Envelope(
                    topic,
                    partition,
                    offset,
                    timestamp_ms,
                    tenant,
                    event,
                    len(value),
                    value,
                    decode,
                    json,
                )
            )
        return batch

    def _take_limit(self, tenant_id: str) -> int:
        """How many records a lane decodes into its next batch (``Sink.batch_limit``)."""
        most = self.sink.max_batch
        if self._batch_limit is None:
            return most
        try:
            limit = int(self._batch_limit(tenant_id))
        except Exception:  # noqa: BLE001 - a sink bug must not stop the lane
            _log.exception("The sink's batch_limit failed.", extra={"tenant": tenant_id})
            return most
        return min(max(limit, 1), most)

    async def _send(self, part: PartitionLanes, lane: Lane) -> None:
        batch = lane.in_flight
        epoch = lane.epoch
        try:
            async with self._slots:
                result = await self.sink.send(lane.tenant_id, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill the lane
            if lane.epoch != epoch:
                self._drop_stale(lane, batch, None)
                return
            error = (
                exc
                if isinstance(exc, SinkError)
                else SinkError(f"{type(exc).__name__}: {exc}", retriable=True)
            )
            await self._after_failure(part, lane, error)
            if lane.epoch != epoch:  # a batch in custody failed during the backoff
                self._drop_stale(lane, batch, None)
            return
        if part.revoked:
            return
        if lane.epoch != epoch:
            self._drop_stale(lane, batch, result)
            return
        problem = _contract_breach(batch, result)
        if problem is not None:
            # A sink bug: nothing of the batch counts as acknowledged.
            await self._after_failure(part, lane, SinkError(problem, retriable=True))
            return
        self._settle_batch(part, lane, batch, result)

    def _drop_stale(self, lane: Lane, batch: list[Envelope], result: SendResult | None) -> None:
        """A batch in custody failed while this one was being sent: forget this one's answer.

        The lane was parked at the failed batch; everything from there, this batch included,
        is read again from Kafka and offered again in order.
        """
        if lane.in_flight is batch:
            lane.in_flight = []
            self._in_flight -= len(batch)
        if result is not None and result.pending is not None:
            result.pending.add_done_callback(_consume_outcome)

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
        settled = len(batch)
        if result is not None and result.settled is not None:
            settled = result.settled
        done, rest = (batch, []) if settled == len(batch) else (batch[:settled], batch[settled:])
        rejected = result.rejected if result is not None else {}
        for index, reason in rejected.items():
            env = done[index]
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
        # Whatever was not settled stays in flight and goes first in the next send.
        lane.in_flight = rest
        self._in_flight -= len(done)
        if rejected:
            stamps = [e.timestamp_ms for i, e in enumerate(done) if i not in rejected]
        else:
            stamps = list(map(_timestamp_of, done))
        if result is not None and result.pending is not None:
            custody = Custody(done[0].offset, done[-1].offset, array("q", stamps), result.pending)
            lane.custody.append(custody)
            result.pending.add_done_callback(lambda f: self._custody_done(part, lane, custody))
            return
        self._acknowledged(lane, stamps)

    def _acknowledged(self, lane: Lane, timestamps: Sequence[int]) -> None:
        """Count events as delivered and observe their latency (record time to now)."""
        if not timestamps:
            return
        name = self.sink.name
        self._delivered_total.inc(len(timestamps))
        self.metrics.latency.observe_ages((name,), time.time() * 1000, timestamps)
        if self.cfg.tenant_labels:
            self.metrics.tenant_delivered.labels(name, lane.tenant_id).inc(len(timestamps))

    def _custody_done(self, part: PartitionLanes, lane: Lane, custody: Custody) -> None:
        if custody not in lane.custody:
            return  # forgotten: the lane failed from an earlier batch, or the partition is gone
        future = custody.future
        if future.cancelled() or future.exception() is not None:
            # Everything from this batch on is re-read from Kafka, in order.
            exc = None if future.cancelled() else future.exception()
            error = exc if isinstance(exc, SinkError) else SinkError(str(exc or "cancelled"))
            # From the oldest batch still in custody on (not just this one): a sink may fail
            # a later batch first.
            first = lane.custody[0].first_offset
            lane.custody.clear()
            lane.epoch += 1
            # Parked there: its queue (all later than the batches taken) is dropped, and a
            # re-read asked for earlier, which would start too high, no longer applies.
            self._buffered -= part.park(lane, first)
            lane.high_water = min(lane.high_water, first - 1)
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
            self._acknowledged(lane, lane.custody.popleft().timestamps)
        if lane.parked_from is not None and not lane.custody:
            # A parked lane's driver stops while batches are in custody: resume it now.
            self._wake(part, lane)

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
            first = lane.queue[0][0] if lane.queue else max(part.read_pos, lane.high_water + 1)
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


_timestamp_of = attrgetter("timestamp_ms")


def _consume_outcome(future: asyncio.Future[None]) -> None:
    """Mark a forgotten future's exception as retrieved (it would be logged otherwise)."""
    if not future.cancelled():
        future.exception()


def _contract_breach(batch: list[Envelope], result: SendResult | None) -> str | None:
    """What is wrong with a sink's answer, or None (see ``streams.engine.sink``)."""
    if result is None:
        return None
    settled = len(batch) if result.settled is None else result.settled
    if not 1 <= settled <= len(batch):
        return f"sink answered settled={result.settled} for a batch of {len(batch)}"
    wrong = [i for i in result.rejected if not 0 <= i < settled]
    if wrong:
        return f"sink rejected events {wrong[:5]} outside the {settled} it settled"
    return None
