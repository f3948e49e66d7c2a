"""The delivery engine against the real broker, in process: isolation, restarts without
re-delivery to healthy tenants, recovery in order, poison records, retention gaps."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from streams.codec import AuditEventCodec
from streams.config import KafkaConfig, TopicsConfig
from streams.engine import Engine, EngineConfig
from streams.engine.sink import Envelope, SendResult
from streams.event import validate_event
from tests.engine_support import JsonRecordingSink, RecordingSink, fresh_topics, publish

pytestmark = pytest.mark.integration


def _engine(
    bootstrap: str, topics: TopicsConfig, sink: RecordingSink, group: str, **cfg: object
) -> Engine:
    config = EngineConfig(
        group_id=group,
        commit_interval_seconds=0.3,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
        **cfg,
    )  # type: ignore[arg-type]
    return Engine(
        KafkaConfig(bootstrap_servers=bootstrap), topics, sink, config, registry=CollectorRegistry()
    )


async def _until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> list[TopicPartition]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        c.close()


def _offsets_in_order(deliveries: list[tuple[int, int, str]]) -> bool:
    last: dict[int, int] = {}
    for partition, offset, _ in deliveries:
        if offset <= last.get(partition, -1):
            return False
        last[partition] = offset
    return True


_SINKS = pytest.mark.parametrize(
    "sink_class", [RecordingSink, JsonRecordingSink], ids=["decoded-in-loop", "json-from-workers"]
)


def _decoded_by_workers(sink: RecordingSink) -> None:
    """A ``json_only`` sink got every event from the decoding workers (none decoded in the
    event loop: those would not be released)."""
    if isinstance(sink, JsonRecordingSink):
        assert sink.released >= sink.count() > 0


@_SINKS
async def test_failing_tenant_is_isolated_and_healthy_tenants_are_not_redelivered(
    kafka_bootstrap: str, sink_class: type[RecordingSink]
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=3)
    events = publish(kafka_bootstrap, topics.events, 3000, 20, seed=21)
    by_tenant: dict[str, list[str]] = {}
    for e in events:
        by_tenant.setdefault(e["tenant_id"], []).append(e["event_id"])
    dead = max(by_tenant, key=lambda t: len(by_tenant[t]))  # the busiest tenant fails
    healthy_total = len(events) - len(by_tenant[dead])
    group = f"eng-isolation-{sink_class.__name__}"

    # 1. The dead tenant fails throughout; every other tenant is fully delivered.
    sink = sink_class(max_batch=20)
    sink.failing.add(dead)
    engine = _engine(kafka_bootstrap, topics, sink, group, lane_max_events=50)
    run = asyncio.create_task(engine.run())
    await _until(lambda: sink.count() >= healthy_total)
    assert dead not in sink.delivered
    for tenant, ids in by_tenant.items():
        if tenant != dead:
            assert [d[2] for d in sink.delivered[tenant]] == ids
    assert engine.health().buffered_events <= 50  # the dead lane holds little in memory
    engine.request_stop()
    await run
    committed = _committed(kafka_bootstrap, topics.events, group, 3)
    assert any(tp.metadata for tp in committed), "lagging tenant recorded in commit metadata"

    # 2. Restart, still failing: no re-delivery to healthy tenants.
    again = sink_class(max_batch=20)
    again.failing.add(dead)
    engine = _engine(kafka_bootstrap, topics, again, group, lane_max_events=50)
    run = asyncio.create_task(engine.run())
    await _until(lambda: engine.health().partitions == [0, 1, 2])
    await _until(lambda: again.attempts > 3)  # the dead tenant is being retried
    await asyncio.sleep(1.0)
    redelivered = again.count()
    logging.getLogger(__name__).info("re-deliveries to healthy tenants: %d", redelivered)
    assert redelivered == 0

    # 3. The destination recovers: the whole backlog arrives, in order, exactly once.
    again.failing.clear()
    await _until(lambda: len(again.delivered.get(dead, [])) >= len(by_tenant[dead]))
    assert [d[2] for d in again.delivered[dead]] == by_tenant[dead]
    assert _offsets_in_order(again.delivered[dead])
    _decoded_by_workers(sink)
    _decoded_by_workers(again)
    engine.request_stop()
    await run
    for tp in _committed(kafka_bootstrap, topics.events, group, 3):
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "probe"})
        _, high = c.get_watermark_offsets(tp, timeout=10)
        c.close()
        assert tp.offset == high


@_SINKS
async def test_poison_records_reach_the_dlq_with_headers_and_the_partition_moves_on(
    kafka_bootstrap: str, sink_class: type[RecordingSink]
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    good = publish(kafka_bootstrap, topics.events, 50, 3, seed=5)
    tenant = good[0]["tenant_id"]
    codec = AuditEventCodec()
    other = dict(validate_event(good[1]))
    big = dict(validate_event(good[2]))
    big["metadata"] = {"blob": "x" * 5000}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    poison = [
        (tenant.encode(), b"\x00not avro at all"),  # corrupt
        (tenant.encode(), b"\xc3\x01" + b"\x11" * 8 + b"body"),  # unknown fingerprint
        (b"tnt_someoneelse", codec.encode(other)),  # key does not match tenant_id
        (big["tenant_id"].encode(), codec.encode(big)),  # oversized
    ]
    for key, value in poison:
        producer.produce(topics.events, key=key, value=value)
    producer.flush(10)
    more = publish(kafka_bootstrap, topics.events, 50, 3, seed=6)
    sink = sink_class()
    refused = more[10]["event_id"]
    sink.reject.add(refused)
    group = f"eng-poison-{sink_class.__name__}"
    engine = _engine(kafka_bootstrap, topics, sink, group, max_record_bytes=4096)
    run = asyncio.create_task(engine.run())
    await _until(lambda: sink.count() >= len(good) + len(more) - 1)
    await asyncio.sleep(1.0)
    engine.request_stop()
    await run

    delivered = {d[2] for v in sink.delivered.values() for d in v}
    assert delivered == {e["event_id"] for e in good + more} - {refused}
    _decoded_by_workers(sink)
    dlq = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": "dlq-reader",
            "auto.offset.reset": "earliest",
        }
    )
    dlq.subscribe([topics.dlq])
    letters = []
    deadline = time.monotonic() + 20
    while len(letters) < 5 and time.monotonic() < deadline:
        msg = dlq.poll(0.5)
        if msg is not None and msg.error() is None:
            letters.append(msg)
    dlq.close()
    assert len(letters) == 5
    classes = []
    originals = {value: key for key, value in poison}
    for msg in letters:
        headers = {k: v.decode() for k, v in msg.headers() or []}
        if headers["dlq.error.class"] != "Rejected":
            # The record as it was on the topic, key and value byte for byte.
            assert originals[msg.value()] == msg.key()
        assert headers["dlq.connector"] == "test"
        assert headers["dlq.original.topic"] == topics.events
        assert headers["dlq.original.partition"] == "0"
        assert int(headers["dlq.original.offset"]) >= 50
        assert int(headers["dlq.original.timestamp"]) > 0
        assert headers["dlq.reason"]
        classes.append(headers["dlq.error.class"])
    assert sorted(classes) == sorted(
        [
            "CorruptRecordError",
            "UnknownSchemaError",
            "TenantMismatch",
            "OversizedRecord",
            "Rejected",
        ]
    )
    (tp,) = _committed(kafka_bootstrap, topics.events, group, 1)
    assert tp.offset == len(good) + len(poison) + len(more)


async def test_offsets_deleted_by_retention_are_reported_with_the_gap(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    publish(kafka_bootstrap, topics.events, 100, 2, seed=8)
    sink = RecordingSink()
    engine = _engine(kafka_bootstrap, topics, sink, "eng-gap")
    run = asyncio.create_task(engine.run())
    await _until(lambda: sink.count() == 100)
    engine.request_stop()
    await run
    later = publish(kafka_bootstrap, topics.events, 100, 2, seed=9)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(topics.events, 0, 150)])
    for f in futures.values():
        f.result(timeout=30)
    sink = RecordingSink()
    engine = _engine(kafka_bootstrap, topics, sink, "eng-gap")
    run = asyncio.create_task(engine.run())
    with caplog.at_level(logging.ERROR, logger="streams.engine.runner"):
        await _until(lambda: sink.count() == 50)
        await asyncio.sleep(0.5)
    engine.request_stop()
    await run
    assert [d[2] for d in sink.delivered_all()] == [e["event_id"] for e in later[50:]]
    records = [r for r in caplog.records if "no longer exists" in r.getMessage()]
    assert records and records[0].__dict__["gap_records"] == 50


async def test_stall_watchdog_flags_a_partition_with_lag_and_no_progress(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    events = publish(kafka_bootstrap, topics.events, 40, 1, seed=12)
    sink = RecordingSink()
    sink.failing.add(events[0]["tenant_id"])  # the only tenant: nothing can progress
    registry = CollectorRegistry()
    config = EngineConfig(
        group_id="eng-stall",
        commit_interval_seconds=0.2,
        stall_seconds=1.0,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
    )
    engine = Engine(
        KafkaConfig(bootstrap_servers=kafka_bootstrap), topics, sink, config, registry=registry
    )
    run = asyncio.create_task(engine.run())
    labels = {"connector": "test", "topic": topics.events, "partition": "0"}
    with caplog.at_level(logging.ERROR, logger="streams.engine.runner"):
        await _until(lambda: engine.health().stalled == [0], timeout=30)
    assert registry.get_sample_value("siem_export_partition_stalled", labels) == 1
    assert registry.get_sample_value("siem_export_partition_lag", labels) == 40
    assert any("stalled" in r.getMessage() for r in caplog.records)
    sink.failing.clear()  # the destination recovers: progress clears the stall
    await _until(lambda: sink.count() == 40)
    await _until(lambda: engine.health().stalled == [], timeout=30)
    assert registry.get_sample_value("siem_export_partition_stalled", labels) == 0
    engine.request_stop()
    await run


async def test_a_sink_that_settles_part_of_a_batch_gets_the_rest_next_in_order(
    kafka_bootstrap: str,
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=2)
    events = publish(kafka_bootstrap, topics.events, 600, 4, seed=31)
    sink = RecordingSink(max_batch=40, settle_at_most=3)
    sink.reject.add(events[5]["event_id"])
    engine = _engine(kafka_bootstrap, topics, sink, "eng-partial")
    run = asyncio.create_task(engine.run())
    await _until(lambda: sink.count() >= len(events) - 1)
    await asyncio.sleep(0.5)
    engine.request_stop()
    await run

    delivered = [d[2] for v in sink.delivered.values() for d in v]
    assert sorted(delivered) == sorted(e["event_id"] for e in events[:5] + events[6:])
    assert len(delivered) == len(set(delivered)), "a settled event was offered again"
    for tenant, deliveries in sink.delivered.items():
        assert _offsets_in_order(deliveries), tenant
    # The engine offered more than the sink took at once, and offered the remainder again.
    assert max(sink.batch_sizes) > 3
    committed = _committed(kafka_bootstrap, topics.events, "eng-partial", 2)
    assert sum(tp.offset for tp in committed) == len(events)


async def test_a_stop_during_a_fetch_starts_the_drain_without_waiting_for_it(
    kafka_bootstrap: str,
) -> None:
    """An idle fetch waits up to 0.2 s for a record: a stop meanwhile flushes the sink at once,
    and what that fetch brings is not dispatched (nothing is committed past it)."""
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    events = publish(kafka_bootstrap, topics.events, 50, 2, seed=43)
    sink = RecordingSink(max_batch=10)
    engine = _engine(kafka_bootstrap, topics, sink, "eng-stop-fetch")
    gate, fetching = threading.Event(), threading.Event()
    consume = engine._consume  # noqa: SLF001

    def held_once_all_are_delivered() -> list[Message]:
        if sink.count() >= len(events) and not gate.is_set():
            fetching.set()
            gate.wait(30)
        return consume()

    engine._consume = held_once_all_are_delivered  # type: ignore[method-assign]  # noqa: SLF001
    flushed: list[bool] = []  # per flush (the stop's, then the revoke's): fetch still held?
    sink.flush = lambda partitions: flushed.append(not gate.is_set())  # type: ignore[attr-defined]
    run = asyncio.create_task(engine.run())
    try:
        await _until(fetching.is_set)
        engine.request_stop()
        await _until(lambda: bool(flushed), timeout=10)
    finally:
        gate.set()
    await run

    assert flushed[0] is True
    assert sorted(d[2] for v in sink.delivered.values() for d in v) == sorted(
        e["event_id"] for e in events
    )
    committed = _committed(kafka_bootstrap, topics.events, "eng-stop-fetch", 1)
    assert committed[0].offset == len(events)


@pytest.mark.parametrize("configured", [0, 12_345])
async def test_the_collector_threshold_holds_while_the_engine_runs_and_is_restored(
    kafka_bootstrap: str, configured: int
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    events = publish(kafka_bootstrap, topics.events, 50, 2, seed=41)
    sink = RecordingSink(max_batch=10)
    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    send = sink.send

    async def watching(tenant: str, batch: list[Envelope]) -> SendResult | None:
        seen.append(gc.get_threshold())
        return await send(tenant, batch)

    sink.send = watching  # type: ignore[method-assign]
    engine = _engine(
        kafka_bootstrap, topics, sink, f"eng-gc-{configured}", gc_young_threshold=configured
    )
    run = asyncio.create_task(engine.run())
    await _until(lambda: sink.count() >= len(events))
    engine.request_stop()
    await run

    assert seen
    expected = before if configured == 0 else (configured, *before[1:])
    assert set(seen) == {expected}
    assert gc.get_threshold() == before


def test_the_broker_refuses_metadata_of_exactly_the_limit_so_the_engine_stays_below(
    kafka_bootstrap: str,
) -> None:
    """Why commits pass ``metadata_limit_bytes - 1`` (streams/engine/commits.py): with the
    default offset.metadata.max.bytes of 4096, the broker takes 4,095 bytes and refuses 4,096."""
    from confluent_kafka import KafkaException

    from streams.engine.lanes import encode_metadata

    topics = fresh_topics(kafka_bootstrap, partitions=1)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "metadata-limit"})
    try:
        # What the engine writes for many lagging tenants, at its largest for the default.
        lagging = {f"tnt_{n:08d}": 10 + n for n in range(400)}
        text = encode_metadata(0, 1000, lagging, EngineConfig().metadata_limit_bytes - 1)
        assert 4000 < len(text.encode()) <= 4095
        consumer.commit(offsets=[TopicPartition(topics.events, 0, 0, text)], asynchronous=False)
        with pytest.raises(KafkaException, match="OFFSET_METADATA_TOO_LARGE"):
            consumer.commit(
                offsets=[TopicPartition(topics.events, 0, 0, "x" * 4096)], asynchronous=False
            )
    finally:
        consumer.close()


class LimitingSink(RecordingSink):
    """A sink that takes at most ``limits[tenant]`` events per send (``batch_limit``); a tenant
    without a limit makes ``batch_limit`` raise."""

    def __init__(self, limits: dict[str, int]) -> None:
        super().__init__(max_batch=50, delay=0.02)
        self.limits = limits
        self.sizes: dict[str, list[int]] = {}

    def batch_limit(self, tenant_id: str) -> int:
        if tenant_id not in self.limits:
            raise RuntimeError(f"no limit for {tenant_id}")
        return self.limits[tenant_id]

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        self.sizes.setdefault(tenant_id, []).append(len(batch))
        return await super().send(tenant_id, batch)


async def test_a_sinks_batch_limit_bounds_what_a_lane_decodes_into_a_batch(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    events = publish(kafka_bootstrap, topics.events, 600, 3, seed=12)
    by_tenant: dict[str, list[str]] = {}
    for event in events:
        by_tenant.setdefault(event["tenant_id"], []).append(event["event_id"])
    three, zero, broken = sorted(by_tenant)
    sink = LimitingSink({three: 3, zero: 0})
    engine = _engine(kafka_bootstrap, topics, sink, "eng-limit")
    run = asyncio.create_task(engine.run())
    await _until(lambda: sink.count() >= len(events))
    engine.request_stop()
    await run

    for tenant, ids in by_tenant.items():
        assert [d[2] for d in sink.delivered[tenant]] == ids  # all of them, in order
    assert max(sink.sizes[three]) == 3
    assert set(sink.sizes[zero]) == {1}  # clamped to at least one event
    # A failing batch_limit falls back to max_batch (the backlog builds during the delays).
    assert 3 < max(sink.sizes[broken]) <= 50
    assert any("batch_limit failed" in r.getMessage() for r in caplog.records)
