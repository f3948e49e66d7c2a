"""The consumer-group runner every connector plugs into: it owns Kafka, a sink owns delivery.

Who calls it: ``siem-export run <method>`` builds a sink and calls ``Engine(...).run()``.

Threads. librdkafka's consumer is driven from ONE worker thread (every consume, seek, pause,
commit and close goes through a single-thread executor, so they never interleave); rebalance
callbacks therefore also run there. Everything else (dispatching records to lanes, sending,
acknowledging) runs on the asyncio loop. The poll loop never waits for a destination: a slow
sink only fills lane queues, which are bounded, so polls stay far inside max.poll.interval.ms.

Commit order: see ``commits.py`` (the numbered steps of the at-least-once contract).

Shutdown (SIGTERM/SIGINT via ``request_stop``): stop fetching, let lanes drain for
``shutdown_grace_seconds``, commit (steps above), close the consumer (its revoke commits
again), close the sink. A second signal stops at once, committing nothing new.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.engine.core import EngineHealth, _log
from streams.engine.delivery import Delivering

__all__ = ["Engine", "EngineHealth"]


class Engine(Delivering):
    """Reads the audit topic in a consumer group and drives one sink, lane by lane."""

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
        thresholds = gc.get_threshold()
        if self.cfg.gc_young_threshold:
            gc.set_threshold(self.cfg.gc_young_threshold, *thresholds[1:])
        try:
            await self._run()
        finally:
            gc.set_threshold(*thresholds)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(self._consumer_config())
        await self._call(
            self._consumer.subscribe,
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        if self._decoder is not None:
            self._decoder.start()
        background = [
            asyncio.create_task(self._commit_loop(), name="commit"),
            asyncio.create_task(self._watch_loop(), name="watchdog"),
        ]
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                fetch = asyncio.ensure_future(self._call(self._consume))
                await asyncio.wait((fetch, stop), return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    # A stop during a fetch (an idle one waits up to 0.2 s for a record): the
                    # drain starts now. What the fetch brings is not dispatched: the read
                    # position, hence every commit, stays before it (read again on restart).
                    fetch.add_done_callback(_ignore_outcome)
                    break
                messages = fetch.result()
                self.last_poll = time.monotonic()
                self._adopt_new_partitions()
                if messages:
                    self._dispatch(messages)
                await self._flow_control()
        finally:
            stop.cancel()
            for task in background:
                task.cancel()
            await self._shutdown()

    async def _shutdown(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # noqa: S101 - set in run()
        # Runs after the fetch in progress, if any; the sink may flush meanwhile (nothing more
        # is dispatched).
        pausing = asyncio.ensure_future(self._call(self._pause_all))
        if not self._hard_stop:
            deadline = time.monotonic() + self.cfg.shutdown_grace_seconds
            while time.monotonic() < deadline and not self._hard_stop and self._busy(custody=False):
                await asyncio.sleep(0.05)
            # Everything was handed to the sink: let it close what it holds open (files).
            self._sink_hook("flush", None)
            while time.monotonic() < deadline and not self._hard_stop and self._busy():
                await asyncio.sleep(0.05)
            await self._commit_all()
        else:
            self._parts.clear()  # nothing more is committed on a hard stop
        with contextlib.suppress(KafkaException):
            await pausing
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._call(consumer.close)
        await asyncio.to_thread(self._dlq.close)
        if self._decoder is not None:
            self._decoder.close()
            await asyncio.to_thread(self._decoder.join)
        await self.sink.close()
        self._executor.shutdown(wait=True)

    def _busy(self, custody: bool = True) -> bool:
        """Whether events wait to be sent or acknowledged (``custody``: count the sink's too)."""
        return any(
            lane.queue or lane.in_flight or (custody and lane.custody) or lane.dead_lettering
            for part in self._parts.values()
            for lane in part.lanes.values()
        )

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
            # The prefetch queue is most of the process's memory (see the setting).
            "queued.max.messages.kbytes": self.cfg.queued_max_messages_kbytes,
            "fetch.max.bytes": self.cfg.fetch_max_bytes,
            # librdkafka pauses fetching for fetch.queue.backoff.ms (1 s by default) whenever
            # that queue is full; at our drain rate that idles the poll loop.
            "fetch.queue.backoff.ms": 10,
        }

    def _consume(self) -> list[Message]:
        assert self._consumer is not None  # noqa: S101
        # Take what is already fetched at once. When nothing is, wait (briefly) for ONE
        # record, then take whatever else is there: a blocking batch call would hold the
        # first record until the batch filled or the timeout passed (up to 0.2 s of latency
        # per event at low rates).
        messages = self._consumer.consume(self.cfg.fetch_batch, timeout=0)
        if messages:
            return messages
        first = self._consumer.consume(1, timeout=0.2)
        if not first or self.cfg.fetch_batch == 1:
            return first
        return first + self._consumer.consume(self.cfg.fetch_batch - 1, timeout=0)

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
        self._buffered_gauge.set(self._buffered)
        self._in_flight_gauge.set(self._in_flight)
        self._rereading_gauge.set(
            sum(part.parked + part.catching_up_lanes for part in self._parts.values())
        )

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


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned future's exception, so that asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()
