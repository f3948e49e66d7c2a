"""The index connector: real broker -> engine -> IndexSink -> a real store (SQLite, PostgreSQL).

Every event is indexed once, with its delivered JSON; a replay of the whole topic (a fresh
consumer group, as after losing the offsets) inserts nothing twice; sends of many lanes share
transactions (group commit); retention deletes only what is past the window.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from connectors.index.config import StoreSettings
from connectors.index.model import EventFilter
from connectors.index.sink import IndexSink
from connectors.index.store import AuditStore, open_store
from streams.config import KafkaConfig, TopicsConfig
from streams.engine import Engine, EngineConfig
from streams.event import parse_timestamp
from tests.engine_support import fresh_topics, publish
from tests.postgres_support import (
    postgres_cluster_fixture,  # noqa: F401 - the fixture "postgres_cluster"
    postgres_url_fixture,  # noqa: F401 - the fixture "postgres_url"
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'audit.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.1)


async def _index(
    bootstrap: str, topics: TopicsConfig, store: AuditStore, group: str, want: int
) -> CollectorRegistry:
    await store.migrate()  # as run index does first
    registry = CollectorRegistry()
    sink = IndexSink(store, StoreSettings(), registry=registry)
    engine = Engine(
        KafkaConfig(bootstrap_servers=bootstrap),
        topics,
        sink,
        EngineConfig(group_id=group, commit_interval_seconds=0.5),
        registry=registry,
    )
    run = asyncio.create_task(engine.run())
    delivered = ("siem_export_delivered_total", {"connector": "index"})
    try:
        await _until(lambda: (registry.get_sample_value(*delivered) or 0) >= want, 60, "indexed")
    finally:
        engine.request_stop()
        await run
    return registry


async def _all_rows(store: AuditStore, tenant: str) -> list[tuple[str, bytes]]:
    return [
        (row.event_id, row.body) async for row in store.stream(tenant, EventFilter(), after=None)
    ]


async def test_every_event_is_indexed_once_and_a_replay_adds_nothing(
    kafka_bootstrap: str, store_url: str
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=3)
    events = publish(kafka_bootstrap, topics.events, 2000, 25, seed=71)
    registry = await _index(kafka_bootstrap, topics, open_store(store_url), "index-1", 2000)
    # (That lanes share transactions is shown in tests/unit/test_index_sink.py.)
    transactions = registry.get_sample_value(
        "siem_export_index_transactions_total", {"result": "ok"}
    )
    assert transactions is not None and transactions > 0
    assert registry.get_sample_value("siem_export_index_rows_total", {"result": "inserted"}) == 2000
    # The whole topic again, as after losing the committed offsets: nothing inserted twice.
    store = open_store(store_url)
    replay = await _index(kafka_bootstrap, topics, store, "index-2", 2000)
    assert replay.get_sample_value("siem_export_index_rows_total", {"result": "present"}) == 2000
    assert replay.get_sample_value("siem_export_index_rows_total", {"result": "inserted"}) in (
        None,
        0.0,
    )
    store = open_store(store_url)
    try:
        by_tenant: dict[str, list[dict[str, object]]] = {}
        for event in events:
            by_tenant.setdefault(event["tenant_id"], []).append(event)
        for tenant, mine in by_tenant.items():
            rows = await _all_rows(store, tenant)
            assert sorted(r[0] for r in rows) == sorted(str(e["event_id"]) for e in mine)
            for _, body in rows:
                assert json.loads(body)["tenant_id"] == tenant
    finally:
        await store.close()


async def test_retention_deletes_only_events_past_the_window(
    kafka_bootstrap: str, store_url: str
) -> None:
    topics = fresh_topics(kafka_bootstrap, partitions=1)
    events = publish(kafka_bootstrap, topics.events, 300, 3, seed=5)
    await _index(kafka_bootstrap, topics, open_store(store_url), "index-ret", 300)
    tenants = {str(e["tenant_id"]) for e in events}
    oldest = min(parse_timestamp(e["timestamp"]) for e in events)
    age_days = (time.time() * 1000 - oldest) / 86_400_000
    assert age_days > 2  # the synthetic events are dated in the past

    async def retention_pass(days: int) -> tuple[float, int]:
        store = open_store(store_url)
        registry = CollectorRegistry()
        settings = StoreSettings(retention_days=days, retention_batch=100)
        sink = IndexSink(store, settings, registry=registry)
        task = asyncio.create_task(sink.run_retention())
        try:
            series = "siem_export_index_retention_deleted_rows_total"
            await _until(lambda: registry.get_sample_value(series) is not None, 30, "a pass")
            await asyncio.sleep(0.2)
            left = sum([len(await _all_rows(store, t)) for t in tenants])
            return registry.get_sample_value(series) or 0.0, left
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.close()

    # A window longer than the events' age keeps everything; a shorter one deletes them all.
    assert await retention_pass(int(age_days) + 30) == (0.0, 300)
    assert await retention_pass(max(1, int(age_days) - 1)) == (300.0, 0)
