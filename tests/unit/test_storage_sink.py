"""The storage sink's file lifecycle against an in-memory object store (a fake writer).

The real stores (S3, Azure, GCS servers) are in the integration tests; here only what the sink
decides: when files close, what goes into them and under which key, how failures reach the
engine (and the resend guard), the engine hooks, and cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.destinations import Destinations, load_destinations
from connectors.health import DestinationHealth, HealthThresholds
from connectors.storage.config import StorageDestination, StorageSettings
from connectors.storage.sink import StorageSink
from connectors.storage.writer import StorageError, make_writer
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from tests.syslog_support import synthetic_envelopes

pytestmark = pytest.mark.unit
TENANT = "tnt_store0001"


class MemoryStore:
    """A fake ObjectWriter: objects in a dict; fails or holds on command."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str], str]] = {}
        self.puts: list[str] = []
        self.fail: StorageError | None = None
        self.hold: asyncio.Event | None = None
        self.closed = False

    async def put(
        self,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        metadata: Mapping[str, str],
        content_type: str,
        content_encoding: str | None,
        sha256_hex: str,
    ) -> None:
        self.puts.append(key)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        content = b"".join(read_part(offset, 7) for offset in range(0, size, 7))
        assert len(content) == size and content_encoding is None
        self.objects[key] = (content, dict(metadata), content_type)

    async def close(self) -> None:
        self.closed = True


def lane(count: int, start: int = 0, partition: int = 3) -> list[Envelope]:
    """``count`` events of TENANT at offsets start, start+2, ... of one partition."""
    out = []
    for i, env in enumerate(synthetic_envelopes(count, seed=start + 1)):
        event = {**env.event, "tenant_id": TENANT}
        out.append(
            Envelope("t", partition, start + 2 * i, 1_773_562_937_003 + i, TENANT, event, 0, b"")
        )
    return out


class Rig:
    def __init__(self, tmp: Path, entry: dict[str, Any], **settings: Any) -> None:
        self.tmp = tmp
        self.store = MemoryStore()
        self.alerts: list[dict[str, Any]] = []
        self.registry = CollectorRegistry()
        self.settings = StorageSettings(**settings)
        self.health = DestinationHealth(
            "storage",
            HealthThresholds(failing_after_failures=3),
            lambda _t, body: self.alerts.append(json.loads(body)),
            registry=self.registry,
        )
        self.sink = StorageSink(
            self.settings,
            self.destinations(entry),
            self.health,
            writer_factory=lambda _d, _s: self.store,
            registry=self.registry,
        )

    def destinations(self, entry: dict[str, Any]) -> Destinations:
        path = self.tmp / f"d{len(list(self.tmp.iterdir()))}.json"
        path.write_text(json.dumps({"tenants": {"*": {"storage": entry}}}))
        return load_destinations(path)

    async def send(self, batch: list[Envelope]) -> SendResult:
        result = await self.sink.send(TENANT, batch)
        assert result is not None and result.pending is not None
        return result

    def lines(self, key: str) -> list[dict[str, Any]]:
        content = self.store.objects[key][0]
        return [json.loads(line) for line in gzip.decompress(content).splitlines()]


S3 = {"url": "s3://audit-bucket/zaita", "interval": "1h"}


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path, {**S3, "max_events": 5})


async def test_a_file_closes_at_max_events_and_a_batch_across_it_is_split(rig: Rig) -> None:
    batch = lane(8)
    first = await rig.send(batch)
    assert first.settled == 5  # the rest comes next, into a new file
    await asyncio.wait_for(first.pending, 5)  # type: ignore[arg-type]
    second = await rig.send(batch[5:])
    assert second.settled is None and not second.pending.done()  # type: ignore[union-attr]
    [key] = rig.store.objects
    assert key == f"zaita/tenant_id={TENANT}/date=2026-03-15/hour=08/{TENANT}-3-0.jsonl.gz"
    assert [e["event_id"] for e in rig.lines(key)] == [e.event["event_id"] for e in batch[:5]]
    _, metadata, content_type = rig.store.objects[key]
    assert metadata["eventcount"] == "5" and metadata["firstoffset"] == "0"
    assert metadata["lastoffset"] == "8" and content_type == "application/gzip"
    # The open file is written on flush; its key starts at its own first offset.
    rig.sink.flush(None)
    await asyncio.wait_for(second.pending, 5)  # type: ignore[arg-type]
    assert f"zaita/tenant_id={TENANT}/date=2026-03-15/hour=08/{TENANT}-3-10.jsonl.gz" in (
        rig.store.objects
    )
    assert (
        rig.registry.get_sample_value(
            "siem_export_storage_files_closed_total", {"reason": "events"}
        )
        == 1
    )


async def test_the_interval_closes_a_file_without_new_events(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {**S3, "interval": "1s"})
    result = await rig.send(lane(3))
    assert not result.pending.done()  # type: ignore[union-attr]
    await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert len(rig.store.objects) == 1
    assert (
        rig.registry.get_sample_value(
            "siem_export_storage_files_closed_total", {"reason": "interval"}
        )
        == 1
    )


async def test_a_failed_upload_fails_the_file_and_the_lane_restarts_from_its_first_event(
    rig: Rig,
) -> None:
    rig.store.fail = StorageError("503 SlowDown", bucket="audit-bucket", permanent=False)
    batch = lane(12)
    full = await rig.send(batch[:5])  # closes at 5: upload starts and fails
    newer = await rig.send(batch[5:8])  # a newer open file of the same lane
    with pytest.raises(SinkError) as failed:
        await asyncio.wait_for(full.pending, 5)  # type: ignore[arg-type]
    assert failed.value.retriable and "503 SlowDown" in str(failed.value)
    with pytest.raises(SinkError):  # the newer file is dropped: its events come again
        await asyncio.wait_for(newer.pending, 5)  # type: ignore[arg-type]
    # Events after the failed file's first one are refused until that one comes back.
    with pytest.raises(SinkError, match="earlier file"):
        await rig.sink.send(TENANT, batch[8:])
    rig.store.fail = None
    again = await rig.send(batch[:5])
    await asyncio.wait_for(again.pending, 5)  # type: ignore[arg-type]
    assert [e["event_id"] for e in rig.lines(rig.store.puts[-1])] == [
        e.event["event_id"] for e in batch[:5]
    ]
    assert rig.store.puts[0] == rig.store.puts[-1]  # the same key: the replay overwrites


async def test_a_permanent_failure_is_not_retriable_and_alerts_at_once(rig: Rig) -> None:
    rig.store.fail = StorageError("AccessDenied", bucket="audit-bucket", permanent=True)
    result = await rig.send(lane(5))
    with pytest.raises(SinkError) as failed:
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert not failed.value.retriable
    [alert] = rig.alerts
    assert alert["state"] == "failing" and alert["method"] == "storage"
    assert alert["endpoint"] == "s3://audit-bucket/zaita"
    assert "AccessDenied" in alert["reason"]


async def test_flush_and_forget_act_on_their_partitions_only(rig: Rig) -> None:
    on_3 = await rig.send(lane(2, partition=3))
    on_4 = await rig.send(lane(2, start=100, partition=4))
    rig.sink.flush([3])
    await asyncio.wait_for(on_3.pending, 5)  # type: ignore[arg-type]
    assert not on_4.pending.done()  # type: ignore[union-attr]
    rig.sink.forget([4])
    with pytest.raises(SinkError, match="revoked"):
        await asyncio.wait_for(on_4.pending, 5)  # type: ignore[arg-type]
    assert len(rig.store.objects) == 1  # nothing written for the forgotten partition


async def test_forget_cancels_an_upload_in_progress(rig: Rig) -> None:
    rig.store.hold = asyncio.Event()
    result = await rig.send(lane(5))  # full: the upload starts and waits
    while not rig.store.puts:
        await asyncio.sleep(0.01)
    rig.sink.forget([3])
    with pytest.raises(SinkError, match="cancelled"):
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert not rig.store.objects


async def test_forget_settles_an_upload_cancelled_before_it_ran(rig: Rig) -> None:
    result = await rig.send(lane(5))  # full: its upload task exists but has not run yet
    rig.sink.forget([3])
    with pytest.raises(SinkError, match="cancelled"):
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert not rig.store.puts
    assert gauge(rig, "uploads_in_progress") == 0


async def test_unrouted_tenants_are_acknowledged_without_a_file(tmp_path: Path) -> None:
    rig = Rig(tmp_path, S3)
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"tenants": {"tnt_other": {"storage": S3}}}))
    rig.sink.update_destinations(rig.sink._destinations, load_destinations(path))
    assert await rig.sink.send(TENANT, lane(3)) is None
    assert rig.registry.get_sample_value("siem_export_storage_unrouted_events_total") == 3


async def test_close_discards_open_files_and_closes_the_writer(rig: Rig) -> None:
    written = await rig.send(lane(5))  # full: written, so the sink holds a writer
    await asyncio.wait_for(written.pending, 5)  # type: ignore[arg-type]
    still_open = await rig.send(lane(2, start=100))
    await rig.sink.close()
    with pytest.raises(SinkError, match="stopping"):
        await asyncio.wait_for(still_open.pending, 1)  # type: ignore[arg-type]
    assert rig.store.closed
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("storage-")]


def test_plain_http_endpoints_need_allow_http() -> None:
    dest = StorageDestination.model_validate(
        {"url": "s3://audit-bucket/x", "endpoint_url": "http://127.0.0.1:8333"}
    )
    with pytest.raises(StorageError) as refused:
        make_writer(dest, StorageSettings())
    assert refused.value.permanent and "ALLOW_HTTP" in str(refused.value)
    make_writer(dest, StorageSettings(allow_http=True))  # builds (connects lazily)


# --- waiting for upload slots: memory, backpressure, drain order -------------------------


def tenant_events(tenant: str, count: int, start: int, partition: int) -> list[Envelope]:
    """``count`` events of ``tenant`` at offsets start, start+1, ... of one partition."""
    return [
        Envelope("t", partition, start + i, 1_773_562_937_003 + i, tenant, event, 0, b"")
        for i, env in enumerate(synthetic_envelopes(count, seed=start + 7))
        for event in [{**env.event, "tenant_id": tenant}]
    ]


def spill_files(directory: Path) -> int:
    """Descriptors of this process on (anonymous) temporary files in ``directory``."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith(f"{directory}/")
    return count


def buffered(rig: Rig, where: str, files: str) -> float:
    value = rig.registry.get_sample_value(
        "siem_export_storage_buffered_bytes", {"where": where, "files": files}
    )
    assert value is not None
    return value


def gauge(rig: Rig, name: str) -> float:
    value = rig.registry.get_sample_value(f"siem_export_storage_{name}")
    assert value is not None
    return value


async def started(rig: Rig, puts: int) -> None:
    while len(rig.store.puts) < puts:
        await asyncio.sleep(0.01)


def waiting_on_disk_rig(tmp_path: Path) -> tuple[Rig, Path]:
    """Files of 5 events, one upload at a time, and no memory for files waiting: every waiting
    file moves to the spill directory (returned with the rig)."""
    spill = tmp_path / "spill"
    spill.mkdir()
    rig = Rig(
        tmp_path,
        {**S3, "max_events": 5},
        max_concurrent_uploads=1,
        waiting_memory_bytes=0,
        spill_dir=spill,
    )
    return rig, spill


async def test_files_waiting_beyond_the_memory_budget_wait_on_disk(tmp_path: Path) -> None:
    rig, spill = waiting_on_disk_rig(tmp_path)
    rig.store.hold = asyncio.Event()
    results = [await rig.send(lane(5, partition=p)) for p in range(4)]  # each closes full
    await started(rig, 1)
    assert gauge(rig, "uploads_waiting") == 3 and gauge(rig, "uploads_in_progress") == 4
    # The running upload's content is in memory; the three waiting files are on disk.
    running = buffered(rig, "memory", "closed")
    assert 0 < running < 10_000
    assert buffered(rig, "disk", "closed") > 2 * running
    assert spill_files(spill) == 3
    assert buffered(rig, "memory", "open") == buffered(rig, "disk", "open") == 0
    rig.store.hold.set()
    for result in results:
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert len(rig.store.objects) == 4 and len(rig.store.puts) == 4
    for key in rig.store.objects:  # read back from the spill files intact
        assert len(rig.lines(key)) == 5
    assert buffered(rig, "memory", "closed") == buffered(rig, "disk", "closed") == 0
    assert gauge(rig, "uploads_waiting") == gauge(rig, "uploads_in_progress") == 0
    assert spill_files(spill) == 0


async def test_waiting_files_within_the_memory_budget_stay_in_memory(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    rig = Rig(tmp_path, {**S3, "max_events": 5}, max_concurrent_uploads=1, spill_dir=spill)
    rig.store.hold = asyncio.Event()
    results = [await rig.send(lane(5, partition=p)) for p in range(3)]
    await started(rig, 1)
    assert spill_files(spill) == 0 and buffered(rig, "disk", "closed") == 0
    rig.store.hold.set()
    await asyncio.wait_for(asyncio.gather(*(r.pending for r in results if r.pending)), 5)
    assert len(rig.store.objects) == 3


async def test_too_many_unwritten_files_stop_new_files_of_their_destination(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, {**S3, "max_events": 5}, max_concurrent_uploads=1, max_waiting_files=2)
    path = tmp_path / "two.json"
    other = {"url": "s3://other-bucket/x", "interval": "1h"}
    path.write_text(
        json.dumps(
            {
                "tenants": {
                    "*": {"storage": {**S3, "max_events": 5}},
                    "tnt_other": {"storage": other},
                }
            }
        )
    )
    rig.sink.update_destinations(rig.sink._destinations, load_destinations(path))
    rig.store.hold = asyncio.Event()
    still_open = await rig.send(lane(2, start=200, partition=9))
    full = [await rig.send(lane(5, partition=p)) for p in (1, 2)]  # 1 writing, 1 waiting
    await started(rig, 1)
    assert gauge(rig, "backpressure") == 0
    with pytest.raises(SinkError) as refused:
        await rig.sink.send(TENANT, lane(3, partition=3))  # would open a new file
    assert refused.value.retriable and refused.value.retry_after == 5.0
    assert "files are not written yet" in str(refused.value)
    assert gauge(rig, "backpressure") == 1
    # An open file still takes events (its memory is bounded on its own) ...
    more = await rig.send(lane(1, start=220, partition=9))
    assert more.pending is still_open.pending
    # ... and a destination with nothing waiting goes on.
    elsewhere = await rig.sink.send("tnt_other", tenant_events("tnt_other", 2, 0, 3))
    assert elsewhere is not None and elsewhere.pending is not None
    rig.store.hold.set()
    await asyncio.wait_for(asyncio.gather(*(r.pending for r in full if r.pending)), 5)
    assert gauge(rig, "backpressure") == 0
    accepted = await rig.send(lane(3, partition=3))
    assert accepted.pending is not None and not accepted.pending.done()


async def test_a_drain_writes_whole_partitions_first_each_from_its_first_offset(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, S3, max_concurrent_uploads=1, drain_concurrent_uploads=1)
    opened = [
        await rig.sink.send(tenant, tenant_events(tenant, 2, start, partition))
        for tenant, start, partition in (
            ("tnt_a", 20, 3),
            ("tnt_a", 50, 7),
            ("tnt_b", 10, 3),
            ("tnt_c", 30, 3),
        )
    ]
    rig.sink.flush(None)
    for result in opened:
        assert result is not None
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    # Partition 7 has the fewest files: it is finished first; partition 3 from its start.
    order = [key.rsplit("/", 1)[1].split(".")[0] for key in rig.store.puts]
    assert order == ["tnt_a-7-50", "tnt_b-3-10", "tnt_a-3-20", "tnt_c-3-30"]


async def test_a_failed_file_takes_back_the_lanes_waiting_files(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {**S3, "max_events": 5}, max_concurrent_uploads=1)
    rig.store.hold = asyncio.Event()
    batch = lane(10)
    first = await rig.send(batch[:5])
    await started(rig, 1)
    second = await rig.send(batch[5:])  # closed, waiting behind the first
    assert gauge(rig, "uploads_waiting") == 1
    rig.store.fail = StorageError("503 SlowDown", bucket="audit-bucket", permanent=False)
    rig.store.hold.set()
    for result in (first, second):
        with pytest.raises(SinkError, match="SlowDown"):
            await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert len(rig.store.puts) == 1  # the lane is read again from the first file: not written
    assert gauge(rig, "uploads_waiting") == gauge(rig, "uploads_in_progress") == 0


async def test_a_waiting_file_that_cannot_move_to_disk_fails_and_comes_again(
    tmp_path: Path,
) -> None:
    rig, spill = waiting_on_disk_rig(tmp_path)
    spill.rmdir()  # the disk goes away after start
    rig.store.hold = asyncio.Event()
    running = await rig.send(lane(5, partition=1))  # starts at once: stays in memory
    waiting = await rig.send(lane(5, partition=2))
    with pytest.raises(SinkError, match="local file for a waiting upload") as failed:
        await asyncio.wait_for(waiting.pending, 5)  # type: ignore[arg-type]
    assert failed.value.retriable
    with pytest.raises(SinkError, match="earlier file"):  # the lane re-reads from its start
        await rig.sink.send(TENANT, lane(2, start=20, partition=2))
    assert gauge(rig, "uploads_in_progress") == 1
    rig.store.hold.set()
    await asyncio.wait_for(running.pending, 5)  # type: ignore[arg-type]
    assert len(rig.store.objects) == 1


# -- gzip in the compression worker --------------------------------------------------------


def hold_worker(rig: Rig) -> threading.Event:
    """Keep the sink's compression worker busy until the returned event is set."""
    gate = threading.Event()
    rig.sink._worker.submit(gate.wait, 0)
    return gate


async def test_a_large_file_is_compressed_in_the_worker_and_written_whole(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {**S3, "max_events": 100_000})
    batch = lane(900)  # ~400 KB: chunks go to the worker
    results = [await rig.send(batch[at : at + 100]) for at in range(0, 900, 100)]
    rig.sink.flush(None)
    for result in results:
        await asyncio.wait_for(result.pending, 10)  # type: ignore[arg-type]
    [key] = rig.store.objects
    content, metadata, _ = rig.store.objects[key]
    assert [e["event_id"] for e in rig.lines(key)] == [e.event["event_id"] for e in batch]
    assert metadata["sha256"] == hashlib.sha256(content).hexdigest()
    assert (metadata["eventcount"], metadata["lastoffset"]) == ("900", "1798")
    await rig.sink.close()


async def test_max_bytes_closes_a_file_at_the_event_that_reaches_it(tmp_path: Path) -> None:
    batch = lane(12)
    sizes = list(itertools.accumulate(len(env.json) + 1 for env in batch))
    reach = next(i for i, total in enumerate(sizes) if total > 1100)  # max_bytes >= 1 KiB
    rig = Rig(tmp_path, {**S3, "max_bytes": sizes[reach] - 1})
    result = await rig.send(batch)
    assert result.settled == reach + 1, "the event that reaches max_bytes is the file's last"
    await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    [key] = rig.store.objects
    assert len(rig.lines(key)) == reach + 1
    assert (
        rig.registry.get_sample_value("siem_export_storage_files_closed_total", {"reason": "bytes"})
        == 1
    )


async def test_forget_drops_a_file_the_worker_is_still_completing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {**S3, "max_events": 100_000})
    gate = hold_worker(rig)
    result = await rig.send(lane(700))
    rig.sink.flush([3])  # closed: its completion waits in the worker
    rig.sink.forget([3])
    with pytest.raises(SinkError, match="revoked"):
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    gate.set()
    await asyncio.to_thread(rig.sink._worker.submit, lambda: None, 1)
    await asyncio.sleep(0.1)
    assert not rig.store.puts and not rig.sink._finishing
    await rig.sink.close()


async def test_a_lanes_small_file_is_queued_behind_its_larger_one(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {**S3, "max_events": 700})
    gate = hold_worker(rig)
    large = await rig.send(lane(700))  # closed at max_events, completed in the worker
    small = await rig.send(lane(5, start=1400))
    rig.sink.flush(None)  # small: it would be done at once, but must not overtake
    assert not rig.store.puts
    gate.set()
    for result in (large, small):
        await asyncio.wait_for(result.pending, 10)  # type: ignore[arg-type]
    order = [key.rsplit("/", 1)[1].split(".")[0] for key in rig.store.puts]
    assert order == [f"{TENANT}-3-0", f"{TENANT}-3-1400"]
    await rig.sink.close()


async def test_a_local_failure_in_the_worker_fails_the_file(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    rig = Rig(tmp_path, {**S3, "max_events": 200}, spill_threshold_bytes=1, spill_dir=spill)
    spill.rmdir()
    result = await rig.send(lane(200))  # 64 KiB+: to the worker, which cannot spill it
    with pytest.raises(SinkError, match="local file") as failed:
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert failed.value.retriable and not rig.store.puts
    with pytest.raises(SinkError, match="earlier file"):  # the lane re-reads from its start
        await rig.sink.send(TENANT, lane(2, start=20))
    await rig.sink.close()


# --- the memory budget of open files -------------------------------------------------------


def budget_spills(rig: Rig) -> float:
    value = rig.registry.get_sample_value("siem_export_storage_budget_spills_total")
    assert value is not None
    return value


def object_of(rig: Rig, partition: int, first: int) -> bytes:
    [key] = [k for k in rig.store.objects if k.endswith(f"/{TENANT}-{partition}-{first}.jsonl")]
    return rig.store.objects[key][0]


async def test_open_files_past_the_memory_budget_move_to_disk_largest_first(
    tmp_path: Path,
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    plain = {**S3, "compression": "none", "max_events": 1000}
    rig = Rig(tmp_path, plain, open_memory_bytes=20_000, spill_dir=spill)
    small = [await rig.send(lane(5, partition=p)) for p in (1, 2)]
    within = buffered(rig, "memory", "open")
    assert 0 < within < 15_000 and budget_spills(rig) == 0 and spill_files(spill) == 0
    large_batch = lane(100, partition=0)
    large = await rig.send(large_batch)  # passes the budget on its own
    # The file holding most moved; the small ones, within three quarters of it, stayed.
    assert budget_spills(rig) == 1 and spill_files(spill) == 1
    assert buffered(rig, "memory", "open") == within
    moved = buffered(rig, "disk", "open")
    assert moved > 20_000
    later_batch = lane(5, start=200, partition=0)
    later = await rig.send(later_batch)  # the moved file goes on, on disk
    assert buffered(rig, "memory", "open") == within and buffered(rig, "disk", "open") > moved
    assert budget_spills(rig) == 1
    rig.sink.flush(None)
    for result in [*small, large, later]:
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    content = object_of(rig, 0, 0)
    events = [json.loads(line) for line in content.splitlines()]
    assert [e["event_id"] for e in events] == [
        e.event["event_id"] for e in [*large_batch, *later_batch]
    ]
    assert rig.store.objects[next(iter(rig.store.objects))][1]["sha256"]  # metadata kept
    assert spill_files(spill) == 0
    await rig.sink.close()


async def test_a_file_the_budget_moved_to_disk_is_the_same_object(tmp_path: Path) -> None:
    async def written(rig: Rig) -> dict[str, bytes]:
        batch = lane(900)
        results = []
        for at in range(0, 900, 100):
            results.append(await rig.send(batch[at : at + 100]))
            while rig.sink._worker.pending_bytes:  # its chunks compressed: stored bytes
                await asyncio.sleep(0.005)
        rig.sink.flush(None)
        for result in results:
            await asyncio.wait_for(result.pending, 10)  # type: ignore[arg-type]
        await rig.sink.close()
        return {key: value[0] for key, value in rig.store.objects.items()}

    for name in ("kept", "moved", "spill"):
        (tmp_path / name).mkdir()
    entry = {**S3, "max_events": 100_000}
    kept = Rig(tmp_path / "kept", entry)
    moved = Rig(tmp_path / "moved", entry, open_memory_bytes=1, spill_dir=tmp_path / "spill")
    assert await written(moved) == await written(kept)
    assert budget_spills(moved) >= 1 and budget_spills(kept) == 0


async def test_a_file_that_cannot_move_to_disk_comes_again_from_kafka(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    plain = {**S3, "compression": "none", "max_events": 1000}
    rig = Rig(tmp_path, plain, open_memory_bytes=1000, spill_dir=gone)
    gone.rmdir()
    result = await rig.send(lane(5))  # ~2 KB: passes the budget; the move fails
    with pytest.raises(SinkError, match="cannot move the open file to local disk") as failed:
        await asyncio.wait_for(result.pending, 5)  # type: ignore[arg-type]
    assert failed.value.retriable and budget_spills(rig) == 0
    assert gauge(rig, "open_files") == 0 and buffered(rig, "memory", "open") == 0
    with pytest.raises(SinkError, match="earlier file"):  # the lane re-reads from its start
        await rig.sink.send(TENANT, lane(2, start=20))
    gone.mkdir()
    again = await rig.send(lane(5))  # from its first event: a new file, moved this time
    assert budget_spills(rig) == 1 and gauge(rig, "open_files") == 1
    rig.sink.flush(None)
    await asyncio.wait_for(again.pending, 5)  # type: ignore[arg-type]
    assert len(rig.store.objects) == 1
    await rig.sink.close()
