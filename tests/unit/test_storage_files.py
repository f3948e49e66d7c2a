"""FileBuilder and FinishedFile: content, digests, metadata, spilling, and resource release."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from connectors.storage.compression import GZIP_SLICE_BYTES, CompressionWorker, FileOutput
from connectors.storage.config import StorageDestination, StorageSettings
from connectors.storage.files import (
    SCHEMA_VERSION,
    WORKER_CHUNK_BYTES,
    FileBuilder,
    FinishedFile,
)
from streams.catalogue import schemas_dir
from streams.event import AuditEvent, to_json_bytes, validate_event
from streams.synthetic import EventFactory

pytestmark = pytest.mark.unit

FORMATS = [("jsonl", "gzip"), ("jsonl", "none"), ("json", "gzip"), ("json", "none")]
PROC_FD = Path("/proc/self/fd")


def events(count: int, seed: int = 1) -> list[AuditEvent]:
    return [validate_event(e) for e in EventFactory(3, seed=seed).events(count)]


def fill(builder: FileBuilder, items: list[AuditEvent], start: int = 100) -> None:
    for index, event in enumerate(items):
        builder.add(to_json_bytes(event), start + 2 * index, 1773564137003 + index)


def content_of(finished: FinishedFile) -> bytes:
    with finished.open() as reader:
        return reader.read()


def parse(data: bytes, file_format: str, compression: str) -> list[Any]:
    text = gzip.decompress(data) if compression == "gzip" else data
    if file_format == "json":
        parsed = json.loads(text)
        assert isinstance(parsed, list)
        return parsed
    assert text.endswith(b"\n")
    return [json.loads(line) for line in text.split(b"\n")[:-1]]


def open_fds() -> int:
    return len(os.listdir(PROC_FD))


@pytest.fixture
def spill_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "spill"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == [], "nothing may be left in the spill directory"


@pytest.mark.parametrize(("file_format", "compression"), FORMATS)
def test_content_round_trips(file_format: Any, compression: Any) -> None:
    items = events(250)
    builder = FileBuilder(file_format=file_format, compression=compression)
    fill(builder, items)
    assert (builder.count, builder.first_offset, builder.last_offset) == (250, 100, 598)
    with builder.finish() as finished:
        data = content_of(finished)
        assert parse(data, file_format, compression) == items
        assert finished.size == len(data) and not finished.spilled
        assert finished.sha256 == hashlib.sha256(data).hexdigest()
        plain = gzip.decompress(data) if compression == "gzip" else data
        assert finished.uncompressed_bytes == len(plain)
        assert (finished.count, finished.first_offset, finished.last_offset) == (250, 100, 598)
        assert finished.first_timestamp_ms == 1773564137003
        assert finished.metadata() == {
            "eventcount": "250",
            "firstoffset": "100",
            "lastoffset": "598",
            "sha256": finished.sha256,
            "schemaversion": "1",
        }
        expected_type = {"jsonl": "application/x-ndjson", "json": "application/json"}
        assert finished.content_type == (
            "application/gzip" if compression == "gzip" else expected_type[file_format]
        )
        parts = b"".join(finished.read_part(o, 1000) for o in range(0, finished.size, 1000))
        assert parts == data


def test_exact_bytes_and_gzip_determinism() -> None:
    jsonl = FileBuilder(compression="none")
    array = FileBuilder(file_format="json", compression="none")
    for builder in (jsonl, array):
        builder.add(b'{"a":1}', 0, 0)
        builder.add(b'{"b":2}', 1, 0)
    assert content_of(jsonl.finish()) == b'{"a":1}\n{"b":2}\n'
    assert content_of(array.finish()) == b'[{"a":1},{"b":2}]'
    # The same events give the same gzip bytes: a replayed file is identical to the first.
    digests = set()
    for _ in range(2):
        builder = FileBuilder()
        fill(builder, events(50))
        digests.add(builder.finish().sha256)
    assert len(digests) == 1


def test_metadata_names_suit_every_provider() -> None:
    builder = FileBuilder()
    builder.add(b"{}", 7, 0)
    names = builder.finish().metadata()
    for name, value in names.items():
        assert name.isascii() and name.isalnum() and name.islower()  # Azure: C# identifiers
        assert value.isascii() and value.isprintable()
    assert names["schemaversion"] == str(SCHEMA_VERSION)


def test_schema_version_matches_the_json_schema() -> None:
    text = schemas_dir().joinpath("audit_event.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    assert schema["$id"] == f"urn:zaita:siem-export:audit-event:{SCHEMA_VERSION}"


# -- spilling ------------------------------------------------------------------------------


def test_spills_at_the_threshold(spill_dir: Path) -> None:
    event = b'{"x":"' + b"a" * 91 + b'"}'  # 99 bytes + "\n": 100 stored bytes per event
    builder = FileBuilder(compression="none", spill_threshold_bytes=1000, spill_dir=spill_dir)
    for offset in range(10):
        builder.add(event, offset, 0)
    assert not builder.spilled and builder.memory_bytes == builder.stored_bytes == 1000
    builder.add(event, 10, 0)
    assert builder.spilled and builder.memory_bytes == 0 and builder.stored_bytes == 1100
    assert list(spill_dir.iterdir()) == [], "the temporary file has no name to leave behind"
    for offset in range(11, 500):
        builder.add(event, offset, 0)
    assert builder.memory_bytes == 0
    with builder.finish() as finished:
        assert finished.spilled and finished.size == 50_000
        data = content_of(finished)
        assert data == (event + b"\n") * 500
        assert finished.sha256 == hashlib.sha256(data).hexdigest()
        assert finished.read_part(49_990, 100) == (event + b"\n")[-10:]
        assert finished.read_part(50_000, 100) == b"" and finished.read_part(60_000, 1) == b""


@pytest.mark.parametrize(("file_format", "compression"), FORMATS)
def test_spilled_content_round_trips(spill_dir: Path, file_format: Any, compression: Any) -> None:
    items = events(400, seed=5)
    builder = FileBuilder(
        file_format=file_format,
        compression=compression,
        spill_threshold_bytes=4096,
        spill_dir=spill_dir,
    )
    fill(builder, items)
    # gzip: what is in memory is the uncompressed start of the next slice, nothing stored
    held = builder.memory_bytes
    assert builder.spilled and (0 < held < GZIP_SLICE_BYTES if compression == "gzip" else held == 0)
    with builder.finish() as finished:
        data = b"".join(finished.read_part(o, 5000) for o in range(0, finished.size, 5000))
        assert parse(data, file_format, compression) == items
        assert finished.sha256 == hashlib.sha256(data).hexdigest()


def test_zero_threshold_keeps_nothing_in_memory(spill_dir: Path) -> None:
    builder = FileBuilder(compression="none", spill_threshold_bytes=0, spill_dir=spill_dir)
    builder.add(b"{}", 0, 0)
    assert builder.spilled and builder.memory_bytes == 0
    builder.discard()


@pytest.mark.parametrize(("compression", "limit"), [("none", 256 * 1024), ("gzip", 512 * 1024)])
def test_memory_stays_small_while_writing_a_large_file(
    spill_dir: Path, compression: Any, limit: int
) -> None:
    line = json.dumps({"blob": os.urandom(3000).hex()}).encode()  # ~6 KB, poorly compressible
    builder = FileBuilder(
        compression=compression, spill_threshold_bytes=64 * 1024, spill_dir=spill_dir
    )
    tracemalloc.start()
    try:
        for offset in range(4000):  # ~24 MB of content
            builder.add(line, offset, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert builder.uncompressed_bytes > 20_000_000
    assert peak < limit, f"peak {peak} bytes"
    builder.discard()


# -- releasing resources -------------------------------------------------------------------


@pytest.mark.skipif(not PROC_FD.is_dir(), reason="needs /proc/self/fd")
def test_temporary_files_are_closed_on_release_and_discard(spill_dir: Path) -> None:
    before = open_fds()
    # more than one slice of gzip input each: their output has started, on disk
    finished_builder = FileBuilder(spill_threshold_bytes=0, spill_dir=spill_dir)
    fill(finished_builder, events(100))
    discarded = FileBuilder(spill_threshold_bytes=0, spill_dir=spill_dir)
    fill(discarded, events(100))
    assert open_fds() == before + 2
    finished = finished_builder.finish()
    finished_builder.discard()  # after finish: does nothing, the FinishedFile owns the file
    assert finished.read_part(0, 2) == b"\x1f\x8b"
    discarded.discard()
    discarded.discard()
    assert open_fds() == before + 1
    reader = finished.open()
    assert open_fds() == before + 2  # a reader has its own descriptor
    finished.release()
    finished.release()
    assert gzip.decompress(reader.read())  # and keeps working after release
    reader.close()
    assert open_fds() == before
    with pytest.raises(ValueError, match="released"):
        finished.read_part(0, 1)
    with pytest.raises(ValueError, match="released"):
        finished.open()


def test_readers_are_independent() -> None:
    builder = FileBuilder(compression="none", spill_threshold_bytes=10)
    for offset in range(100):
        builder.add(b'{"n":%d}' % offset, offset, 0)
    with builder.finish() as finished:
        assert finished.spilled
        first, second = finished.open(), finished.open()
        assert first.read(8) == b'{"n":0}\n'
        assert second.read(4) == b'{"n"'
        assert finished.read_part(0, 3) == b'{"n'
        assert first.read(8) == b'{"n":1}\n'
        second.seek(-8, os.SEEK_END)
        assert second.read() == b'{"n":99}\n'[-8:]
        assert second.tell() == finished.size
        first.close()
        second.close()


def test_parts_read_from_threads() -> None:
    builder = FileBuilder(spill_threshold_bytes=1024)
    fill(builder, events(300))
    with builder.finish() as finished:
        whole = content_of(finished)
        offsets = range(0, finished.size, 777)
        with ThreadPoolExecutor(4) as pool:
            parts = list(pool.map(lambda o: finished.read_part(o, 777), offsets))
        assert b"".join(parts) == whole


# -- rules and edge cases ------------------------------------------------------------------


def test_empty_builder() -> None:
    builder = FileBuilder()
    assert (builder.count, builder.first_offset, builder.last_offset) == (0, None, None)
    assert builder.opened_at is None and builder.deadline(60) is None
    assert not builder.should_close(1e12, 1, 1, 0.001)
    with pytest.raises(ValueError, match="no events"):
        builder.finish()
    builder.discard()
    with pytest.raises(ValueError, match="discarded"):
        builder.add(b"{}", 0, 0)


def test_closing_rules() -> None:
    now = [0.0]
    builder = FileBuilder(compression="none", clock=lambda: now[0])
    builder.add(b'{"a":1}', 0, 0)  # 8 bytes with the newline
    assert builder.opened_at == 0.0 and builder.deadline(300) == 300.0
    assert not builder.should_close(299.9, 10, 1000, 300)
    assert builder.should_close(300.0, 10, 1000, 300), "the interval counts from the first event"
    assert builder.should_close(0.0, 1, 1000, 300), "max_events"
    assert builder.should_close(0.0, 10, 8, 300), "max_bytes (uncompressed)"
    now[0] = 50.0
    builder.add(b'{"a":2}', 1, 0)
    assert builder.deadline(300) == 300.0, "later events do not move the deadline"


def test_add_rules() -> None:
    builder = FileBuilder()
    builder.add(b"{}", 5, 0)
    for offset in (5, 4):
        with pytest.raises(ValueError, match="does not follow 5"):
            builder.add(b"{}", offset, 0)
    for bad in (b"", b'{"a":\n1}'):
        with pytest.raises(ValueError, match="one line"):
            builder.add(bad, 6, 0)
    builder.add(b"{}", 6, 0)  # refused events left nothing behind
    finished = builder.finish()
    assert finished.count == 2 and gzip.decompress(content_of(finished)) == b"{}\n{}\n"
    with pytest.raises(ValueError, match="finished"):
        builder.add(b"{}", 7, 0)
    with pytest.raises(ValueError, match="finished"):
        builder.finish()
    with pytest.raises(ValueError, match="negative"):
        finished.read_part(-1, 1)


def test_a_failed_spill_breaks_the_builder(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    builder = FileBuilder(compression="none", spill_threshold_bytes=10, spill_dir=gone)
    builder.add(b"{}", 0, 0)
    gone.rmdir()
    with pytest.raises(OSError):
        builder.add(b'{"long":"enough to spill"}', 1, 0)
    with pytest.raises(ValueError, match="broken"):
        builder.add(b"{}", 2, 0)
    builder.discard()


def test_for_destination() -> None:
    dest = StorageDestination(url="s3://audit-logs", format="json", compression="none")
    settings = StorageSettings(spill_threshold_bytes=0, compression_level=1)
    builder = FileBuilder.for_destination(dest, settings)
    assert (builder.file_format, builder.compression) == ("json", "none")
    builder.add(b"{}", 0, 0)
    assert builder.spilled
    with builder.finish() as finished:
        assert content_of(finished) == b"[{}]"


@pytest.mark.parametrize(
    "sizes",
    [
        [1, 7, 4093],
        [GZIP_SLICE_BYTES - 1, 1, 2],
        [GZIP_SLICE_BYTES, GZIP_SLICE_BYTES + 1],
        [100_000],
        [65_536, 262_144],
    ],
    ids=["tiny", "slice-1", "slice", "large", "chunks"],
)
def test_gzip_output_depends_on_the_content_only(sizes: list[int]) -> None:
    """zlib-ng's deflate gives other bytes for other input pieces; a file's output must not
    (a replayed file, handed over in other chunks, must be the same object)."""
    content = b"".join(line + b"\n" for line in many_lines(1500))  # ~650 KB
    whole = FileOutput(6, 1 << 30, None)
    whole.end(content, gzip=True)
    pieces = FileOutput(6, 1 << 30, None)
    at, turn = 0, 0
    while at < len(content) - sizes[-1]:
        size = sizes[turn % len(sizes)]
        pieces.compress(content[at : at + size])
        at, turn = at + size, turn + 1
    pieces.end(content[at:], gzip=True)
    assert bytes(pieces.memory) == bytes(whole.memory)
    assert pieces.hash.hexdigest() == whole.hash.hexdigest()
    assert gzip.decompress(bytes(whole.memory)) == content


def test_a_gzip_file_under_one_slice_holds_no_compressor_until_it_ends() -> None:
    out = FileOutput(6, 1 << 30, None)
    out.compress(b"x" * (GZIP_SLICE_BYTES - 1))
    assert (out.stored, out.unsliced) == (0, GZIP_SLICE_BYTES - 1)
    out.compress(b"y")  # a whole slice: compressed
    assert out.unsliced == 0 and out.stored > 0
    out.end(b"z", gzip=True)
    assert gzip.decompress(bytes(out.memory)) == b"x" * (GZIP_SLICE_BYTES - 1) + b"yz"


@pytest.mark.parametrize("count", [3, 40, 400])
def test_a_small_gzip_file_starts_compressing_late_and_gives_the_same_bytes(
    count: int, spill_dir: Path
) -> None:
    """Small files keep their start uncompressed (no ~150 KiB zlib state per open file);
    the object is byte for byte what compressing from the first event gives."""
    items = events(count)
    eager = FileBuilder(spill_threshold_bytes=0, spill_dir=spill_dir)  # compresses at once
    lazy = FileBuilder()
    fill(eager, items)
    fill(lazy, items)
    if lazy.uncompressed_bytes < 32 * 1024:
        assert lazy.stored_bytes == 0 and lazy.memory_bytes == lazy.uncompressed_bytes
    with eager.finish() as a, lazy.finish() as b:
        assert (a.sha256, a.size) == (b.sha256, b.size)
        content = b.read_part(0, b.size)
        assert [json.loads(line) for line in gzip.decompress(content).splitlines()] == [
            json.loads(to_json_bytes(e)) for e in items
        ]


def test_thousands_of_open_small_files_hold_about_their_content(spill_dir: Path) -> None:
    items = events(20)
    content = sum(len(to_json_bytes(e)) + 1 for e in items)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        builders = [FileBuilder(spill_dir=spill_dir) for _ in range(300)]
        for builder in builders:
            fill(builder, items)
        per_file = (tracemalloc.get_traced_memory()[0] - before) / len(builders)
    finally:
        tracemalloc.stop()
    assert per_file < 3 * content + 4096, f"{per_file:.0f} bytes per open file"
    for builder in builders:
        builder.discard()


def test_a_finished_file_moves_to_disk_with_the_same_content(spill_dir: Path) -> None:
    builder = FileBuilder()
    fill(builder, events(30))
    finished = builder.finish()
    in_memory = content_of(finished)
    assert not finished.spilled and finished.memory_bytes == finished.size == len(in_memory)
    before = open_fds()
    finished.spill(spill_dir)
    assert finished.spilled and finished.memory_bytes == 0 and open_fds() == before + 1
    finished.spill(spill_dir)  # already on disk: nothing happens
    assert open_fds() == before + 1
    assert content_of(finished) == in_memory
    assert finished.read_part(5, 40) == in_memory[5:45]
    assert hashlib.sha256(in_memory).hexdigest() == finished.sha256
    finished.release()
    assert open_fds() == before


def test_a_finished_file_that_cannot_move_to_disk_stays_in_memory(tmp_path: Path) -> None:
    builder = FileBuilder()
    fill(builder, events(5))
    finished = builder.finish()
    with pytest.raises(OSError):
        finished.spill(tmp_path / "gone")
    assert not finished.spilled and finished.memory_bytes == finished.size
    assert gzip.decompress(content_of(finished))
    finished.release()


# -- batches and the compression worker ----------------------------------------------------


def many_lines(count: int, seed: int = 3) -> list[bytes]:
    return [to_json_bytes(e) for e in events(count, seed=seed)]


def add_in_batches(builder: FileBuilder, lines: list[bytes], size: int, start: int = 0) -> None:
    for at in range(0, len(lines), size):
        part = lines[at : at + size]
        builder.add_batch(part, start + at, start + at + len(part) - 1, 1773564137003)


@pytest.fixture
def worker() -> Iterator[CompressionWorker]:
    running = CompressionWorker(max_pending_bytes=WORKER_CHUNK_BYTES * 2)
    yield running
    running.close()


@pytest.mark.parametrize("threshold", [0, 64 * 1024, 8 * 1024 * 1024])
@pytest.mark.parametrize("file_format", ["jsonl", "json"])
def test_the_worker_gives_the_bytes_of_one_thread(
    spill_dir: Path, worker: CompressionWorker, threshold: int, file_format: Any
) -> None:
    """Chunks compressed in the worker (several per file, files interleaved) give byte for byte
    the file a builder without a worker gives, and the digest of exactly those bytes."""
    lines = many_lines(3000)  # ~1.3 MB: several worker chunks
    alone = FileBuilder(
        file_format=file_format, spill_threshold_bytes=threshold, spill_dir=spill_dir
    )
    add_in_batches(alone, lines, 97)
    threaded = [
        FileBuilder(
            file_format=file_format,
            spill_threshold_bytes=threshold,
            spill_dir=spill_dir,
            worker=worker,
        )
        for _ in range(3)
    ]
    for at in range(0, len(lines), 250):  # the three files take turns
        for builder in threaded:
            part = lines[at : at + 250]
            builder.add_batch(part, at, at + len(part) - 1, 1773564137003)
    with alone.finish() as expected:
        want = content_of(expected)
        assert hashlib.sha256(want).hexdigest() == expected.sha256
        for builder in threaded:
            with builder.finish_async().result(timeout=30) as got:
                assert (got.size, got.sha256, got.count) == (expected.size, expected.sha256, 3000)
                assert got.spilled == expected.spilled
                assert content_of(got) == want
    assert parse(want, file_format, "gzip") == [json.loads(line) for line in lines]


def test_a_batch_is_the_same_file_as_its_events_one_by_one() -> None:
    lines = many_lines(50)
    for file_format in ("jsonl", "json"):
        one = FileBuilder(file_format=file_format)  # type: ignore[arg-type]
        for offset, line in enumerate(lines):
            one.add(line, offset, 0)
        batched = FileBuilder(file_format=file_format)  # type: ignore[arg-type]
        add_in_batches(batched, lines, 7)
        assert batched.uncompressed_bytes == one.uncompressed_bytes
        assert (batched.count, batched.first_offset, batched.last_offset) == (50, 0, 49)
        with one.finish() as a, batched.finish() as b:
            assert (a.sha256, a.size, a.uncompressed_bytes) == (
                b.sha256,
                b.size,
                b.uncompressed_bytes,
            )


def test_batch_rules() -> None:
    builder = FileBuilder()
    builder.add_batch([b"{}", b"{}"], 5, 6, 0)
    with pytest.raises(ValueError, match="does not follow 6"):
        builder.add_batch([b"{}"], 6, 6, 0)
    with pytest.raises(ValueError, match="before the first"):
        builder.add_batch([b"{}", b"{}"], 9, 8, 0)
    for bad in ([b"{}", b""], [b"{}", b'{"a":\n1}'], [b"\n"]):
        with pytest.raises(ValueError, match="one line"):
            builder.add_batch(bad, 7, 8, 0)
    builder.add_batch([], 7, 7, 0)  # nothing to add
    builder.add_batch([b"{}"], 7, 7, 0)  # refused batches left nothing behind
    finished = builder.finish()
    assert (finished.count, finished.last_offset) == (3, 7)
    assert gzip.decompress(content_of(finished)) == b"{}\n{}\n{}\n"


def test_small_pieces_are_compressed_at_once_unless_the_worker_has_the_file(
    spill_dir: Path, worker: CompressionWorker
) -> None:
    """A spill threshold below a chunk hands every batch over; small ones are not worth a
    hand-off (each costs the worker a wait for the GIL), except behind the file's own."""
    builder = FileBuilder(spill_threshold_bytes=0, spill_dir=spill_dir, worker=worker)
    builder.add_batch(many_lines(100), 0, 99, 0)  # over one slice, under the idle chunk
    assert builder.spilled and worker.pending_bytes == 0, "compressed here, at once"
    gate = threading.Event()
    worker.submit(gate.wait, 0)
    builder.add_batch(many_lines(200), 100, 299, 0)  # to the worker, held at the gate
    builder.add_batch(many_lines(20), 300, 319, 0)  # small, but must follow: to the worker
    assert worker.pending_bytes > 0
    done = builder.finish_async()
    assert not done.done(), "the file's end waits for its chunks"
    gate.set()
    with done.result(timeout=30) as finished:
        lines = gzip.decompress(content_of(finished)).splitlines()
        assert len(lines) == finished.count == 320


def test_a_small_file_finishes_at_once_and_a_large_one_in_the_worker(
    worker: CompressionWorker,
) -> None:
    small = FileBuilder(worker=worker)
    add_in_batches(small, many_lines(20), 20)
    done = small.finish_async()
    assert done.done(), "no hand-off for a small file"
    done.result().release()
    ordered = FileBuilder(worker=worker)
    add_in_batches(ordered, many_lines(20), 20)
    gate = threading.Event()
    worker.submit(gate.wait, 0)  # hold the worker: what goes through it waits
    behind = ordered.finish_async(in_worker=True)
    large = FileBuilder(worker=worker)
    add_in_batches(large, many_lines(1000), 100)  # ~430 KB: a chunk went to the worker
    later = large.finish_async()
    assert not behind.done() and not later.done()
    gate.set()
    with behind.result(timeout=30) as first, later.result(timeout=30) as second:
        assert first.count == 20 and second.count == 1000
        assert gzip.decompress(content_of(second)).count(b"\n") == 1000


def test_a_failure_in_the_worker_reaches_the_builder(
    tmp_path: Path, worker: CompressionWorker
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    builder = FileBuilder(spill_threshold_bytes=1, spill_dir=gone, worker=worker)
    gone.rmdir()
    builder.add_batch(many_lines(200), 0, 199, 0)  # 64 KiB+: handed over, cannot be spilled
    worker.submit(lambda: None, 1)
    deadline = time.monotonic() + 30
    while worker.pending_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OSError):
        builder.add_batch([b"{}"], 200, 200, 0)
    with pytest.raises(ValueError, match="broken"):
        builder.add_batch([b"{}"], 201, 201, 0)
    builder.discard()
    # Completing such a file fails through its future, its resources released.
    failing = FileBuilder(spill_threshold_bytes=1, spill_dir=gone, worker=worker)
    failing.add_batch(many_lines(200), 0, 199, 0)
    with pytest.raises(OSError):
        failing.finish_async().result(timeout=30)


@pytest.mark.skipif(not PROC_FD.is_dir(), reason="needs /proc/self/fd")
def test_discarding_a_file_in_the_worker_closes_its_temporary_file(
    spill_dir: Path, worker: CompressionWorker
) -> None:
    before = open_fds()
    gate = threading.Event()
    builder = FileBuilder(spill_threshold_bytes=0, spill_dir=spill_dir, worker=worker)
    builder.add_batch(many_lines(200), 0, 199, 0)  # 64 KiB+: to the worker
    worker.submit(gate.wait, 0)
    builder.add_batch(many_lines(30), 200, 229, 0)  # small, but behind the first: waits
    builder.discard()
    builder.discard()
    gate.set()
    worker.close()  # runs what was submitted: the chunk is skipped, the file closed
    assert open_fds() == before


def test_the_worker_runs_jobs_in_order_and_bounds_what_waits() -> None:
    worker = CompressionWorker(max_pending_bytes=100)
    ran: list[int] = []
    most = [0]

    def job(number: int) -> None:
        most[0] = max(most[0], worker.pending_bytes)
        time.sleep(0.001)
        ran.append(number)

    for number in range(50):
        worker.submit(functools.partial(job, number), 40)

    def broken() -> None:
        raise ZeroDivisionError

    worker.submit(broken, 40)  # logged; the thread goes on
    worker.submit(functools.partial(job, 50), 40)
    worker.close()
    worker.close()
    assert ran == list(range(51))
    assert most[0] <= 120, "a job is submitted only while what waits stays within the bound"
    assert worker.pending_bytes == 0
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(lambda: None, 0)


# --- moving an open file to disk early (the sink's memory budget of all open files) -------


def wait_idle(worker: CompressionWorker) -> None:
    deadline = time.monotonic() + 30
    while worker.pending_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not worker.pending_bytes


def test_spill_moves_the_stored_content_to_disk_before_the_threshold(spill_dir: Path) -> None:
    event = b'{"x":"' + b"a" * 91 + b'"}'  # 100 stored bytes per event
    builder = FileBuilder(compression="none", spill_threshold_bytes=10_000, spill_dir=spill_dir)
    assert builder.spill() == 0 and not builder.spilled  # nothing stored: nothing to move
    for offset in range(10):
        builder.add(event, offset, 0)
    assert builder.stored_memory_bytes == builder.memory_bytes == 1000
    assert builder.spill() == 1000
    assert builder.spilled and builder.memory_bytes == builder.stored_memory_bytes == 0
    assert builder.disk_bytes == 1000 and builder.spill() == 0
    for offset in range(10, 20):  # what comes later follows it to disk
        builder.add(event, offset, 0)
    assert builder.memory_bytes == 0 and builder.disk_bytes == 2000
    with builder.finish() as finished:
        assert finished.spilled and content_of(finished) == (event + b"\n") * 20
        assert finished.sha256 == hashlib.sha256((event + b"\n") * 20).hexdigest()


@pytest.mark.parametrize("worker_busy", [False, True])
def test_a_gzip_file_spilled_early_has_the_same_bytes(
    spill_dir: Path, worker: CompressionWorker, worker_busy: bool
) -> None:
    """Moved while the worker has none of the file (at once) or still has a chunk of it (the
    move waits for the chunk): the object is byte for byte the one never moved, and the
    uncompressed content collected so far is not compressed early."""
    lines = many_lines(2000)
    alone = FileBuilder(spill_dir=spill_dir)
    add_in_batches(alone, lines, 250)
    builder = FileBuilder(spill_dir=spill_dir, worker=worker)
    add_in_batches(builder, lines[:500], 250)  # ~100 KB each: handed to the idle worker
    wait_idle(worker)
    assert builder.stored_memory_bytes > 0 and not builder.spilled
    gate = threading.Event()
    try:
        if worker_busy:
            worker.submit(gate.wait, 0)
            add_in_batches(builder, lines[500:750], 250, start=500)  # handed over, waits
        collected = builder.collected_bytes
        stored = builder.stored_memory_bytes
        assert builder.spill() == stored > 0
        assert builder.spilled is not worker_busy  # behind the file's chunk in the worker
        assert builder.stored_memory_bytes == 0 and builder.spill() == 0  # asked once
    finally:
        gate.set()
    wait_idle(worker)
    assert builder.spilled and builder.stored_memory_bytes == 0
    assert builder.collected_bytes == collected  # not compressed early
    done = 750 if worker_busy else 500
    add_in_batches(builder, lines[done:], 250, start=done)
    with alone.finish() as expected, builder.finish_async().result(timeout=30) as got:
        assert not expected.spilled and got.spilled
        assert (got.size, got.sha256, got.count) == (expected.size, expected.sha256, 2000)
        assert content_of(got) == content_of(expected)


def test_a_failed_early_spill_breaks_the_builder(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    builder = FileBuilder(compression="none", spill_dir=gone)
    builder.add(b"{}", 0, 0)
    gone.rmdir()
    with pytest.raises(OSError):
        builder.spill()
    with pytest.raises(ValueError, match="broken"):
        builder.add(b"{}", 1, 0)
    builder.discard()
