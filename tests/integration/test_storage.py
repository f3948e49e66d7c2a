"""The storage connector end to end: real broker, real S3 server (SeaweedFS), real files.

(1) In process: engine + StorageSink through the production writer factory. Every event lands
in exactly one object; each object's bytes match its SHA-256 and metadata, its key follows the
Hive template from its first event, and each (tenant, partition) series of objects is
contiguous and in partition order; JSON Lines+gzip and JSON without compression both.
(2) ``siem-export run storage`` as a real process, killed with -9 twice mid-stream and
restarted (its decoding workers die with it), then one of its decoding workers killed: every
event is in the bucket afterwards; replays overwrite their own objects.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.destinations import load_destinations
from connectors.health import DestinationHealth
from connectors.storage.config import StorageSettings
from connectors.storage.sink import StorageSink
from streams.config import KafkaConfig
from streams.engine import Engine, EngineConfig
from streams.tail import read_records
from tests.azurite_support import (
    Azurite,
    azurite_fixture,  # noqa: F401 - the fixture "azurite"
)
from tests.engine_support import ROOT, fresh_topics, publish, spawn_connector
from tests.gcs_support import (
    GcsEmulator,
    gcs_emulator_fixture,  # noqa: F401 - the fixture "gcs_emulator"
)
from tests.s3_support import (
    SeaweedFS,
    seaweedfs_fixture,  # noqa: F401 - the fixture "seaweedfs"
)

pytestmark = pytest.mark.integration


def _aws_env(seaweedfs: SeaweedFS) -> dict[str, str]:
    """The standard AWS chain's variables for the test server (no profile, no metadata)."""
    return {
        "AWS_ACCESS_KEY_ID": seaweedfs.access_key,
        "AWS_SECRET_ACCESS_KEY": seaweedfs.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _objects(seaweedfs: SeaweedFS, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    client = seaweedfs.client()
    found: dict[str, tuple[bytes, dict[str, str]]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            got = client.get_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = (got["Body"].read(), got["Metadata"])
    return found


def _events_of(key: str, body: bytes) -> list[dict[str, Any]]:
    if key.endswith(".gz"):
        body = gzip.decompress(body)
    if key.endswith((".json", ".json.gz")):
        events: list[dict[str, Any]] = json.loads(body)
        return events
    return [json.loads(line) for line in body.splitlines()]


def _topic_order(bootstrap: str, topic: str) -> dict[str, tuple[int, list[int], list[str]]]:
    """Per tenant: its partition, its offsets and event ids in partition order."""
    out: dict[str, tuple[int, list[int], list[str]]] = {}
    for r in sorted(
        read_records(KafkaConfig(bootstrap_servers=bootstrap), topic, idle_timeout=5),
        key=lambda r: (r.partition, r.offset),
    ):
        assert r.event is not None
        part, offsets, ids = out.setdefault(r.event["tenant_id"], (r.partition, [], []))
        offsets.append(r.offset)
        ids.append(r.event["event_id"])
    return out


def _check_objects(
    objects: dict[str, tuple[bytes, dict[str, str]]],
    order: dict[str, tuple[int, list[int], list[str]]],
    prefix: str,
) -> dict[str, int]:
    """Every object is sound; return how often each event id was stored."""
    stored: dict[str, int] = defaultdict(int)
    for key, (body, meta) in objects.items():
        assert hashlib.sha256(body).hexdigest() == meta["sha256"], key
        events = _events_of(key, body)
        assert len(events) == int(meta["eventcount"]) > 0, key
        tenant = events[0]["tenant_id"]
        partition, offsets, ids = order[tenant]
        first = offsets.index(int(meta["firstoffset"]))
        # The object holds the tenant's events from its first offset on, in order, no gap.
        assert [e["event_id"] for e in events] == ids[first : first + len(events)], key
        assert offsets[first + len(events) - 1] == int(meta["lastoffset"]), key
        date, hour = events[0]["timestamp"][:10], events[0]["timestamp"][11:13]
        expected_key = (
            f"{prefix}/tenant_id={tenant}/date={date}/hour={hour}/"
            f"{tenant}-{partition}-{meta['firstoffset']}"
        )
        assert key.startswith(expected_key + "."), (key, expected_key)
        for event in events:
            stored[event["event_id"]] += 1
    return stored


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what}")
        await asyncio.sleep(0.25)


def _gcs_objects(emulator: GcsEmulator, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    found: dict[str, tuple[bytes, dict[str, str]]] = {}
    for name in emulator.names(bucket):
        resource = emulator.resource(bucket, name)
        assert resource is not None
        found[name] = (emulator.download(bucket, name), resource.get("metadata", {}))
    return found


def _azure_objects(azurite: Azurite, container: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    found: dict[str, tuple[bytes, dict[str, str]]] = {}
    with azurite.service() as service:
        client = service.get_container_client(container)
        for blob in client.list_blobs(include=["metadata"]):
            found[blob.name] = (client.download_blob(blob.name).readall(), dict(blob.metadata))
    return found


async def test_every_event_lands_in_exactly_one_sound_object(
    kafka_bootstrap: str,
    seaweedfs: SeaweedFS,
    gcs_emulator: GcsEmulator,
    azurite: Azurite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in _aws_env(seaweedfs).items():
        monkeypatch.setenv(name, value)
    bucket = seaweedfs.create_bucket("e2e")
    topics = fresh_topics(kafka_bootstrap, partitions=3)
    events = publish(kafka_bootstrap, topics.events, 3000, 12, seed=31)
    tenants = sorted({e["tenant_id"] for e in events})
    base = {"endpoint_url": seaweedfs.endpoint_url, "interval": "2s", "max_events": 150}
    plain_json = {
        **base,
        "url": f"s3://{bucket}/plain",
        "format": "json",
        "compression": "none",
        "max_events": 1000,  # its files grow past the budget for open files (below)
    }
    gcs_bucket = gcs_emulator.create_bucket("e2e")
    on_gcs = {**base, "url": f"gs://{gcs_bucket}/gcs", "endpoint_url": gcs_emulator.endpoint}
    container = azurite.create_container("e2e")
    on_azure = {
        **{k: v for k, v in base.items() if k != "endpoint_url"},
        "url": f"azure://{container}/az",
        "connection_string": azurite.connection_string(),
    }
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps(
            {
                "tenants": {
                    "*": {"storage": {**base, "url": f"s3://{bucket}/audit"}},
                    tenants[0]: {"storage": plain_json},
                    tenants[1]: {"storage": on_gcs},
                    tenants[2]: {"storage": on_azure},
                    tenants[3]: {"storage": {**base, "url": "s3://no-such-bucket/x"}},
                }
            }
        )
    )
    registry = CollectorRegistry()
    # A small budget for open files: some move to local disk while open (sound objects all).
    settings = StorageSettings(allow_http=True, open_memory_bytes=4096)
    alerts: list[tuple[str, dict[str, Any]]] = []
    health = DestinationHealth(
        "storage",
        settings.health,
        lambda tenant, body: alerts.append((tenant, json.loads(body))),
        registry=registry,
    )
    sink = StorageSink(settings, load_destinations(path), health, registry=registry)
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap)
    engine = Engine(
        kafka,
        topics,
        sink,
        EngineConfig(group_id="storage-e2e", commit_interval_seconds=0.5),
        registry=registry,
    )
    run = asyncio.create_task(engine.run())
    delivered = ("siem_export_delivered_total", {"connector": "storage"})
    try:
        # Everything but the tenant whose bucket does not exist: its events stay in Kafka.
        missing = sum(1 for e in events if e["tenant_id"] == tenants[3])
        want = len(events) - missing
        await _until(lambda: (registry.get_sample_value(*delivered) or 0) >= want, 90, "all")
    finally:
        engine.request_stop()
        await run
    objects = await asyncio.to_thread(_objects, seaweedfs, bucket)
    order = _topic_order(kafka_bootstrap, topics.events)
    audit = {k: v for k, v in objects.items() if k.startswith("audit/")}
    plain = {k: v for k, v in objects.items() if k.startswith("plain/")}
    assert len(audit) + len(plain) == len(objects)
    stored = _check_objects(audit, order, "audit")
    stored.update(_check_objects(plain, order, "plain"))
    in_gcs = await asyncio.to_thread(_gcs_objects, gcs_emulator, gcs_bucket)
    assert in_gcs and {
        e["tenant_id"] for k, (b, _) in in_gcs.items() for e in _events_of(k, b)
    } == {tenants[1]}
    stored.update(_check_objects(in_gcs, order, "gcs"))
    in_azure = await asyncio.to_thread(_azure_objects, azurite, container)
    assert in_azure and {
        e["tenant_id"] for k, (b, _) in in_azure.items() for e in _events_of(k, b)
    } == {tenants[2]}
    stored.update(_check_objects(in_azure, order, "az"))
    assert set(stored) == {e["event_id"] for e in events if e["tenant_id"] != tenants[3]}
    assert set(stored.values()) == {1}, "no event is stored twice without a crash"
    assert (registry.get_sample_value(*delivered) or 0) == want  # none of the missing bucket's
    # A missing bucket is a misconfiguration: one "failing" alert at once, nothing else.
    failing = [a for t, a in alerts if t == tenants[3]]
    assert [a["state"] for a in failing] == ["failing"], alerts
    assert failing[0]["method"] == "storage" and "NoSuchBucket" in failing[0]["reason"]
    assert failing[0]["endpoint"] == f"s3://no-such-bucket/x via {seaweedfs.endpoint_url}"
    assert {t for t, _ in alerts} == {tenants[3]}
    assert plain and all(k.endswith(".json") for k in plain)
    assert all(k.endswith(".jsonl.gz") for k in audit)
    assert all(v[0].startswith(b"\x1f\x8b") for v in audit.values())  # really gzip
    # Files closed on max_events and on the interval (the tail of each lane).
    closed = {
        reason: registry.get_sample_value(
            "siem_export_storage_files_closed_total", {"reason": reason}
        )
        for reason in ("events", "interval", "flush")
    }
    assert (closed["events"] or 0) > 0 and (closed["interval"] or 0) + (closed["flush"] or 0) > 0
    assert (registry.get_sample_value("siem_export_storage_budget_spills_total") or 0) > 0


def _decoding_workers(pid: int) -> list[int]:
    """The connector's decoding worker processes (spawned children running spawn_main)."""
    found = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in listing.read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


async def _until_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Every process in ``pids`` has exited (gone, or a zombie nobody reaped yet)."""

    def running(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat[stat.rindex(")") + 2] != "Z"

    deadline = time.monotonic() + timeout
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes still running: {pids}"
        await asyncio.sleep(0.1)


async def test_run_storage_survives_kill_9_and_every_event_is_stored(
    kafka_bootstrap: str, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    bucket = seaweedfs.create_bucket("kill")
    topics = fresh_topics(kafka_bootstrap, partitions=6)
    dest_file = tmp_path / "d.yaml"
    dest_file.write_text(
        json.dumps(
            {
                "tenants": {
                    "*": {
                        "storage": {
                            "url": f"s3://{bucket}/audit",
                            "endpoint_url": seaweedfs.endpoint_url,
                            "interval": "1s",
                            "max_events": 100,
                        }
                    }
                }
            }
        )
    )
    env = {
        **os.environ,
        **_aws_env(seaweedfs),
        "SIEM_EXPORT_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "SIEM_EXPORT_TOPICS__EVENTS": topics.events,
        "SIEM_EXPORT_TOPICS__DLQ": topics.dlq,
        "SIEM_EXPORT_TOPICS__ALERTS": topics.alerts,
        "SIEM_EXPORT_ENGINE__GROUP_ID": "storage-kill",
        "SIEM_EXPORT_ENGINE__COMMIT_INTERVAL_SECONDS": "0.5",
        "SIEM_EXPORT_ENGINE__RETRY_MAX_SECONDS": "1",
        "SIEM_EXPORT_OPS__ENABLED": "false",
        "SIEM_EXPORT_STORAGE__ALLOW_HTTP": "true",
    }
    total = 6000
    generate = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "connectors", "generate", "--count", str(total), "--tenants", "40"),
        *("--seed", "17", "--rate", "1000", "--quiet"),
        cwd=ROOT,
        env=env,
    )
    log = tmp_path / "connector.log"
    proc = spawn_connector("storage", env, dest_file, log)

    def stored_count() -> int:
        return sum(int(meta["eventcount"]) for _, meta in _objects(seaweedfs, bucket).values())

    async def stored_at_least(count: int) -> None:
        deadline = time.monotonic() + 90
        while await asyncio.to_thread(stored_count) < count:
            assert time.monotonic() < deadline, f"{count} not stored in time"
            await asyncio.sleep(0.5)

    kills = 0
    try:
        for threshold in (total // 5, total // 2):
            await stored_at_least(threshold)
            workers = _decoding_workers(proc.pid)
            assert len(workers) == 2  # engine.decode_processes: the storage sink is json_only
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
            # The kernel stops the workers with their parent (PR_SET_PDEATHSIG).
            await _until_gone(workers)
            proc = spawn_connector("storage", env, dest_file, log)
        # A decoding worker dies: its batches are decoded in the connector, a new one starts.
        await stored_at_least(total * 3 // 5)
        deadline = time.monotonic() + 30
        while len(workers := _decoding_workers(proc.pid)) < 2:  # the new process starts them
            assert time.monotonic() < deadline, "the restarted connector has no decoding workers"
            await asyncio.sleep(0.1)
        os.kill(workers[0], signal.SIGKILL)
        assert await asyncio.wait_for(generate.wait(), 120) == 0
        order = _topic_order(kafka_bootstrap, topics.events)
        wanted = {i for _, _, ids in order.values() for i in ids}
        assert len(wanted) == total

        def all_stored() -> bool:
            objects = _objects(seaweedfs, bucket)
            got = {e["event_id"] for k, (b, _) in objects.items() for e in _events_of(k, b)}
            return wanted <= got

        deadline = time.monotonic() + 120
        while not await asyncio.to_thread(all_stored):
            assert time.monotonic() < deadline, "not every event stored in time"
            await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]
        assert "A decoding worker process stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        if generate.returncode is None:
            generate.kill()
    assert kills == 2
    objects = await asyncio.to_thread(_objects, seaweedfs, bucket)
    stored = _check_objects(objects, order, "audit")
    assert set(stored) == wanted
    duplicates = sum(n - 1 for n in stored.values())
    print(f"\nkill -9 x2 over {total} events: {len(objects)} objects, {duplicates} stored twice")
