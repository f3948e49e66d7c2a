"""Test doubles and helpers for the engine tests: a sink that records and fails on command."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import CollectorRegistry

from streams.config import KafkaConfig, TopicsConfig
from streams.engine.config import EngineConfig
from streams.engine.lanes import PartitionLanes
from streams.engine.runner import Engine
from streams.engine.sink import RELEASED, Envelope, SendResult, Sink
from streams.errors import SinkError
from streams.publisher import Publisher
from streams.synthetic import EventFactory


@dataclass
class FakeMessage:
    """The part of confluent_kafka.Message that the engine's dispatch (``_dispatch``) reads,
    for unit tests that hand it fetched batches built in memory."""

    _partition: int
    _offset: int
    _key: bytes | None
    _value: bytes = b"avro"
    _timestamp: int = 1_700_000_000_000

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp)


@contextlib.contextmanager
def unit_engine(sink: Sink, topic: str = "audit.events") -> Iterator[Engine]:
    """An engine that owns partition 0 (from offset 0) of ``topic`` and is never started: unit
    tests hand ``_dispatch`` fetched batches and drive lanes themselves (``_wake`` does
    nothing). Nothing listens at its bootstrap address; its dead-letter producer is unused."""
    engine = Engine(
        KafkaConfig(bootstrap_servers="127.0.0.1:9"),
        TopicsConfig(events=topic),
        sink,
        EngineConfig(group_id="unit"),
        registry=CollectorRegistry(),
    )
    engine._wake = lambda part, lane: None  # type: ignore[method-assign]  # noqa: SLF001
    engine._parts[0] = PartitionLanes(topic, 0, 0, None)  # noqa: SLF001
    try:
        yield engine
    finally:
        engine._dlq.close()  # noqa: SLF001
        engine._executor.shutdown()  # noqa: SLF001


class RecordingSink:
    """Records every delivered event per tenant; tenants in ``failing`` get SinkErrors."""

    name = "test"

    def __init__(
        self, max_batch: int = 50, delay: float = 0.0, settle_at_most: int | None = None
    ) -> None:
        self.max_batch = max_batch
        self.delay = delay
        self.settle_at_most = settle_at_most  # answer for only the first N events of a batch
        self.batch_sizes: list[int] = []
        self.delivered: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        self.failing: set[str] = set()
        self.reject: set[str] = set()  # event ids refused for good
        self.attempts = 0
        self.closed = False

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        self.attempts += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if tenant_id in self.failing:
            raise SinkError(f"destination of {tenant_id} is down", retriable=True)
        self.batch_sizes.append(len(batch))
        settled: int | None = None
        if self.settle_at_most is not None and len(batch) > self.settle_at_most:
            settled = self.settle_at_most
            batch = batch[:settled]
        events = [self.event_of(env) for env in batch]
        refused = self.reject
        rejected = {i: "refused by test" for i, e in enumerate(events) if e["event_id"] in refused}
        for i, (env, event) in enumerate(zip(batch, events, strict=True)):
            assert env.tenant_id == tenant_id == event["tenant_id"]
            if i not in rejected:
                self.delivered[tenant_id].append((env.partition, env.offset, event["event_id"]))
        if rejected or settled is not None:
            return SendResult(rejected=rejected, settled=settled)
        return None

    def event_of(self, env: Envelope) -> Mapping[str, Any]:
        return env.event

    async def close(self) -> None:
        self.closed = True

    def delivered_all(self) -> list[tuple[int, int, str]]:
        """Every delivery of every tenant, by partition and offset."""
        return sorted(d for v in self.delivered.values() for d in v)

    def count(self) -> int:
        return sum(len(v) for v in self.delivered.values())


class JsonRecordingSink(RecordingSink):
    """A ``RecordingSink`` that reads only each event's JSON (``json_only``): the engine decodes
    its records on worker processes; ``released`` counts envelopes that came without a decoded
    event (all of them, when the workers did the decoding)."""

    json_only = True

    def __init__(self, max_batch: int = 50, delay: float = 0.0) -> None:
        super().__init__(max_batch, delay)
        self.released = 0

    def event_of(self, env: Envelope) -> Mapping[str, Any]:
        if env.event is RELEASED:
            self.released += 1
        event: dict[str, Any] = orjson.loads(env.json)
        return event


def fresh_topics(bootstrap: str, partitions: int = 6) -> TopicsConfig:
    suffix = uuid.uuid4().hex[:8]
    topics = TopicsConfig(
        events=f"eng{suffix}.events",
        dlq=f"eng{suffix}.dlq",
        alerts=f"eng{suffix}.alerts",
        config=f"eng{suffix}.config",
    )
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topics.events, partitions, 1), NewTopic(topics.dlq, 1, 1)]
    )
    for f in futures.values():
        f.result(timeout=30)
    return topics


def publish(bootstrap: str, topic: str, count: int, tenants: int, seed: int = 1) -> list[dict]:
    events = list(EventFactory(tenants, seed=seed).events(count))
    with Publisher(KafkaConfig(bootstrap_servers=bootstrap), topic) as pub:
        futures = [pub.publish(e) for e in events]
        for f in futures:
            f.result(timeout=60)
    return events


def read_messages(bootstrap: str, topic: str, want: int, timeout: float = 20.0) -> list[Message]:
    """Up to ``want`` messages of ``topic`` from its start (headers and all), within ``timeout``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                found.append(msg)
    finally:
        consumer.close()
    return found


ROOT = Path(__file__).resolve().parents[1]


def spawn_connector(
    method: str, env: dict[str, str], destinations: Path, log: Path
) -> subprocess.Popen[bytes]:
    """``siem-export run METHOD --destinations FILE`` as its own process, output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connectors",
                "run",
                method,
                "--destinations",
                str(destinations),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
