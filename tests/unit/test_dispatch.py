"""The engine's fetch path (``Dispatching._dispatch``) on fetched batches built in memory,
and the consumer settings it fetches with.

The real-broker tests (tests/integration/test_engine*.py) cover the whole engine; these pin
the bookkeeping of one pass over a batch: runs of partitions, skips, the tenant-id cache, a
full lane, and what the read position says when taking a record raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from connectors.errors import SettingsError
from connectors.settings import load_settings
from streams.config import KafkaConfig, TopicsConfig
from streams.engine import dispatch
from streams.engine.config import EngineConfig
from streams.engine.lanes import Lane, PartitionLanes
from streams.engine.runner import Engine
from tests.engine_support import FakeMessage, RecordingSink

pytestmark = pytest.mark.unit

TOPIC = "audit.events"


class Harness:
    """An engine that owns partitions 0 and 1 (committed at 100) and is never started."""

    def __init__(self, config: EngineConfig | None = None, **cfg: Any) -> None:
        self.registry = CollectorRegistry()
        self.engine = Engine(
            # Nothing listens there: the dead-letter producer is never used here.
            KafkaConfig(bootstrap_servers="127.0.0.1:9"),
            TopicsConfig(events=TOPIC),
            RecordingSink(),
            config or EngineConfig(group_id="unit", **cfg),
            registry=self.registry,
        )
        self.woken: list[tuple[int, str]] = []
        self.engine._wake = self._wake  # type: ignore[method-assign]
        for partition in (0, 1):
            self.engine._parts[partition] = PartitionLanes(TOPIC, partition, 100, None)

    def _wake(self, part: PartitionLanes, lane: Lane) -> None:
        self.woken.append((part.partition, lane.tenant_id))

    def dispatch(self, records: list[FakeMessage]) -> None:
        self.engine._dispatch(cast(list[Message], records))

    def part(self, partition: int) -> PartitionLanes:
        return self.engine._parts[partition]

    def queued(self, partition: int, tenant: str) -> list[int]:
        return [q[0] for q in self.part(partition).lanes[tenant].queue]

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"connector": "test", **labels})
        return value or 0.0

    def close(self) -> None:
        self.engine._dlq.close()
        self.engine._executor.shutdown()


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(config: EngineConfig | None = None, **cfg: Any) -> Harness:
        made.append(Harness(config, **cfg))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_runs_of_partitions_queue_in_order_and_advance_each_partition(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    h.dispatch(
        [
            FakeMessage(0, 100, b"t-a"),
            FakeMessage(0, 101, b"t-b"),
            FakeMessage(1, 100, b"t-a"),
            FakeMessage(0, 102, b"t-a"),
            FakeMessage(1, 101, b"t-a"),
            FakeMessage(7, 5, b"t-a"),  # a partition this process does not own
        ]
    )
    assert h.queued(0, "t-a") == [100, 102]
    assert h.queued(0, "t-b") == [101]
    assert h.queued(1, "t-a") == [100, 101]
    assert (h.part(0).read_pos, h.part(0).high) == (103, 102)
    assert (h.part(1).read_pos, h.part(1).high) == (102, 101)
    assert h.engine._buffered == 5
    assert h.sample("siem_export_consumed_total", topic=TOPIC) == 5
    # A lane is woken once, when it gets its first record.
    assert sorted(h.woken) == [(0, "t-a"), (0, "t-a"), (0, "t-b"), (1, "t-a"), (1, "t-a")]


def test_records_already_taken_are_skipped_and_counted(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.dispatch([FakeMessage(0, 100, b"t-a"), FakeMessage(0, 101, b"t-a")])
    # A re-read (after a seek) delivers them again, then a new one.
    h.dispatch([FakeMessage(0, 100, b"t-a"), FakeMessage(0, 101, b"t-a")])
    h.dispatch([FakeMessage(0, 102, b"t-a")])
    assert h.queued(0, "t-a") == [100, 101, 102]
    assert h.sample("siem_export_skipped_total") == 2
    assert h.engine._buffered == 3


def test_tenant_ids_come_from_a_bounded_cache(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "_TENANT_CACHE", 2)
    h = harness()
    h.dispatch([FakeMessage(0, 100 + i, f"t-{i % 3}".encode()) for i in range(9)])
    assert sorted(h.part(0).lanes) == ["t-0", "t-1", "t-2"]
    assert h.queued(0, "t-2") == [102, 105, 108]
    assert len(h.engine._tenants) <= 2
    # A key that is not UTF-8 still names one lane, the same every time.
    h.dispatch([FakeMessage(0, 109, b"t-\xff"), FakeMessage(0, 110, b"t-\xff")])
    assert h.queued(0, "t-\N{REPLACEMENT CHARACTER}") == [109, 110]


def test_a_full_lane_parks_and_leaves_the_rest_in_kafka(harness: Callable[..., Harness]) -> None:
    h = harness(lane_max_events=2)
    h.dispatch([FakeMessage(0, 100 + i, b"t-a") for i in range(5)])
    lane = h.part(0).lanes["t-a"]
    assert h.queued(0, "t-a") == [100, 101]
    assert lane.parked_from == 102
    assert h.part(0).read_pos == 105  # read past, but the lane takes them again later
    assert h.engine._buffered == 2


def test_a_record_that_raises_is_not_counted_as_read(harness: Callable[..., Harness]) -> None:
    h = harness()
    calls = 0

    def wake(part: PartitionLanes, lane: Lane) -> None:
        nonlocal calls
        calls += 1
        if lane.tenant_id == "t-c":
            raise RuntimeError("boom")

    h.engine._wake = wake  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        h.dispatch(
            [
                FakeMessage(1, 100, b"t-a"),
                FakeMessage(0, 100, b"t-a"),
                FakeMessage(0, 101, b"t-b"),
                FakeMessage(0, 102, b"t-c"),
                FakeMessage(0, 103, b"t-d"),
            ]
        )
    # Partition 0 advanced to the record before the one that raised; partition 1 fully.
    assert h.part(0).read_pos == 102
    assert h.part(1).read_pos == 101
    assert h.sample("siem_export_consumed_total", topic=TOPIC) == 4
    assert calls == 4


def test_fetch_settings_reach_the_consumer(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SIEM_EXPORT_"):
            monkeypatch.delenv(name)
    assert harness().engine._consumer_config()["queued.max.messages.kbytes"] == 8192
    monkeypatch.setenv("SIEM_EXPORT_ENGINE__QUEUED_MAX_MESSAGES_KBYTES", "32768")
    monkeypatch.setenv("SIEM_EXPORT_ENGINE__FETCH_MAX_BYTES", "16777216")
    config = harness(load_settings().engine).engine._consumer_config()
    assert config["queued.max.messages.kbytes"] == 32768
    assert config["fetch.max.bytes"] == 16 * 1024 * 1024
    # What the engine's guarantees rest on stays the engine's.
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    monkeypatch.setenv("SIEM_EXPORT_ENGINE__QUEUED_MAX_MESSAGES_KBYTES", "100")
    with pytest.raises(SettingsError, match="queued_max_messages_kbytes"):
        load_settings()
