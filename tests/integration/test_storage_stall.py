"""A bucket that stops answering: real broker, real S3 server (SeaweedFS) frozen with SIGSTOP.

While the server is frozen, the files that close wait for an upload slot on disk (anonymous
temporary files in the spill directory), not in memory, as the buffered_bytes gauge and the
process's descriptors show; once too many files are not written yet, the sink refuses new
files (backpressure) and the events stay in Kafka. After the server resumes, every event is in
the bucket exactly once and every partition is committed to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from connectors.destinations import load_destinations
from connectors.health import DestinationHealth
from connectors.storage.config import StorageSettings
from connectors.storage.sink import StorageSink
from streams.config import KafkaConfig
from streams.engine import Engine, EngineConfig
from tests.engine_support import fresh_topics, publish
from tests.s3_support import (
    SeaweedFS,
    seaweedfs_private_fixture,  # noqa: F401 - the fixture "seaweedfs_private"
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
TENANTS = 8
MAX_WAITING_FILES = 8
GROUP = "storage-stall"


def _spill_files(directory: Path) -> int:
    """Descriptors of this process on temporary files in ``directory``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith(f"{directory}/")
    return count


def _stored_ids(seaweedfs: SeaweedFS, bucket: str) -> Counter[str]:
    client = seaweedfs.client()
    ids: Counter[str] = Counter()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            ids.update(json.loads(line)["event_id"] for line in gzip.decompress(body).splitlines())
    return ids


def _committed_to_end(bootstrap: str, topic: str) -> bool:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
    finally:
        consumer.close()
    return [tp.offset for tp in committed] == ends


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.1)


async def test_a_frozen_bucket_holds_waiting_files_on_disk_and_loses_nothing(
    kafka_bootstrap: str,
    seaweedfs_private: SeaweedFS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seaweedfs = seaweedfs_private
    for name, value in {
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = seaweedfs.create_bucket("stall")
    topics = fresh_topics(kafka_bootstrap, partitions=PARTITIONS)
    events = publish(kafka_bootstrap, topics.events, 2000, TENANTS, seed=41)
    path = tmp_path / "d.json"
    storage = {"url": f"s3://{bucket}/audit", "endpoint_url": seaweedfs.endpoint_url}
    path.write_text(
        json.dumps({"tenants": {"*": {"storage": {**storage, "interval": "3s", "max_events": 40}}}})
    )
    spill = tmp_path / "spill"
    spill.mkdir()
    settings = StorageSettings(
        allow_http=True,
        spill_dir=spill,
        max_concurrent_uploads=2,
        drain_concurrent_uploads=2,
        waiting_memory_bytes=0,  # every waiting file on disk
        max_waiting_files=MAX_WAITING_FILES,
        upload_timeout_seconds=120,
    )
    registry = CollectorRegistry()
    health = DestinationHealth("storage", settings.health, lambda _t, _b: None, registry=registry)
    sink = StorageSink(settings, load_destinations(path), health, registry=registry)
    engine = Engine(
        KafkaConfig(bootstrap_servers=kafka_bootstrap),
        topics,
        sink,
        EngineConfig(group_id=GROUP, commit_interval_seconds=0.5, retry_max_seconds=1),
        registry=registry,
    )

    def metric(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def closed(where: str) -> float:
        return metric("siem_export_storage_buffered_bytes", where=where, files="closed")

    seaweedfs.freeze()
    run = asyncio.create_task(engine.run())
    try:
        # Files close (40 events each) and cannot be written: two hang in the frozen server,
        # the others wait; once MAX_WAITING_FILES are not written, new files are refused.
        await _until(lambda: metric("siem_export_storage_backpressure") == 1, 60, "refusals")
        await asyncio.sleep(3)  # the refused lanes retry (and park) meanwhile
        waiting = metric("siem_export_storage_uploads_waiting")
        unwritten = metric("siem_export_storage_uploads_in_progress")
        assert waiting == unwritten - 2 >= MAX_WAITING_FILES - 2
        # The bound is passed only by files still open when it was reached (one a lane).
        assert unwritten <= MAX_WAITING_FILES + TENANTS * PARTITIONS
        # Waiting files are on disk: one temporary file each; in memory only the two that
        # were handed to the hanging requests.
        assert _spill_files(spill) == waiting
        assert closed("disk") > 0 and 0 < closed("memory") < 2 * 16 * 1024
        assert closed("disk") > closed("memory")
        assert metric("siem_export_delivered_total", connector="storage") == 0
        assert metric("siem_export_send_failures_total", connector="storage", kind="retriable")
    finally:
        seaweedfs.thaw()
    try:
        delivered = ("siem_export_delivered_total", {"connector": "storage"})
        await _until(
            lambda: (registry.get_sample_value(*delivered) or 0) >= len(events), 120, "delivery"
        )
    finally:
        engine.request_stop()
        await run
    assert metric("siem_export_storage_backpressure") == 0
    assert closed("memory") == closed("disk") == 0 and _spill_files(spill) == 0
    stored = await asyncio.to_thread(_stored_ids, seaweedfs, bucket)
    assert set(stored) == {e["event_id"] for e in events}
    assert set(stored.values()) == {1}, "every event exactly once"
    assert await asyncio.to_thread(_committed_to_end, kafka_bootstrap, topics.events)
