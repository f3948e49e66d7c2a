"""GcsWriter against the real ``gcp-storage-emulator`` and an in-process recording stand-in.

The emulator shows the write path end to end: a multipart upload with custom metadata read
back; a 20 MiB resumable upload sent in 4 MiB chunks (one PUT each, seen in the emulator's
access log), invisible until its last chunk and byte-exact after; nothing left after a failure
half-way; a replay that overwrites; and the errors a sink must tell apart (missing bucket:
permanent; emulator stopped or silent: transient, quickly). The writer talks to it over
``http://`` and therefore sends no credentials at all.

The emulator ignores ``kmsKeyName`` and ``X-Goog-Hash``, so ``RecordingGcs`` (an aiohttp server
in the test process, standing in as ``api_root``) shows what the writer sends: the KMS key on
every upload request, the whole object's MD5 on the final chunk, no token over http, and a
chunk resumed after a 503 or a short write.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.storage.gcs import MIB, GcsTarget, GcsWriter
from connectors.storage.writer import StorageError
from tests.gcs_support import (
    HOST,
    GcsEmulator,
    RecordingGcs,
    gcs_emulator_fixture,  # noqa: F401 - the fixture "gcs_emulator"
    gcs_emulator_private_fixture,  # noqa: F401 - the fixture "gcs_emulator_private"
    recording_gcs_fixture,  # noqa: F401 - the fixture "recording_gcs"
    unique_bucket,
)

pytestmark = pytest.mark.integration

KMS_KEY = "projects/p1/locations/europe-west1/keyRings/audit/cryptoKeys/export"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def reader(data: bytes, log: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    def read_part(offset: int, size: int) -> bytes:
        if log is not None:
            log.append((offset, size))
        return data[offset : offset + size]

    return read_part


class Writers:
    """Makes writers for one test and closes them all after it."""

    def __init__(self) -> None:
        self.made: list[GcsWriter] = []

    def __call__(self, target: GcsTarget, **options: Any) -> GcsWriter:
        writer = GcsWriter(target, **options)
        self.made.append(writer)
        return writer

    def on(self, server: GcsEmulator | RecordingGcs, bucket: str, **options: Any) -> GcsWriter:
        kms = options.pop("kms_key_name", None)
        return self(GcsTarget(bucket=bucket, kms_key_name=kms, api_root=server.endpoint), **options)


@pytest.fixture
async def writers() -> AsyncIterator[Writers]:
    made = Writers()
    try:
        yield made
    finally:
        for writer in made.made:
            await writer.close()


async def put(writer: GcsWriter, key: str, data: bytes, **metadata: str) -> None:
    await writer.put(
        key, len(data), reader(data), metadata, "application/x-ndjson", None, sha256_hex(data)
    )


def events(count: int) -> bytes:
    return b"".join(
        b'{"event_id":"evt_%d","action":"certificate.issue"}\n' % i for i in range(count)
    )


# --- the emulator ------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_small_put_has_metadata_content_type_and_encoding(
    gcs_emulator: GcsEmulator, writers: Writers
) -> None:
    bucket = gcs_emulator.create_bucket("small")
    writer = writers.on(gcs_emulator, bucket)
    data = gzip.compress(events(50))
    metadata = {
        "event_count": "50",
        "first_offset": "10",
        "last_offset": "59",
        "sha256": sha256_hex(data),
        "schema_version": "1",
    }
    key = "zaita/tenant_id=tnt_1/date=2026-03-15/hour=08/tnt_1-0-10.jsonl.gz"

    await writer.put(
        key, len(data), reader(data), metadata, "application/gzip", None, metadata["sha256"]
    )
    await writer.put(
        "zaita/plain.jsonl",
        3,
        reader(b"{}\n"),
        {},
        "application/x-ndjson",
        "gzip",
        sha256_hex(b"{}\n"),
    )

    resource = gcs_emulator.resource(bucket, key)
    assert resource is not None
    assert resource["metadata"] == metadata
    assert resource["contentType"] == "application/gzip"
    assert "contentEncoding" not in resource
    assert resource["size"] == str(len(data))
    assert resource["md5Hash"] == md5_b64(data)
    assert gcs_emulator.download(bucket, key) == data
    plain = gcs_emulator.resource(bucket, "zaita/plain.jsonl")
    assert plain is not None
    assert plain["contentEncoding"] == "gzip"
    assert plain["contentType"] == "application/x-ndjson"
    assert plain["metadata"] == {}
    # Both went as one multipart upload each: no resumable session was opened.
    assert gcs_emulator.request_lines(f"/upload/storage/v1/b/{bucket}/o?uploadType=multipart")
    assert not gcs_emulator.request_lines(f"/upload/storage/v1/b/{bucket}/o?uploadType=resumable")


@pytest.mark.timeout(120)
async def test_20_mib_in_4_mib_chunks_is_byte_exact_and_invisible_until_the_last(
    gcs_emulator: GcsEmulator, writers: Writers
) -> None:
    bucket = gcs_emulator.create_bucket("chunks")
    writer = writers.on(gcs_emulator, bucket, chunk_size=4 * MIB, resumable_threshold=16 * MIB)
    data = os.urandom(20 * MIB)
    key = "zaita/big.jsonl.gz"
    reads: list[tuple[int, int]] = []
    seen_while_uploading: list[dict[str, Any] | None] = []

    def read_part(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        if offset >= 8 * MIB:  # at least the first chunk was accepted by now
            seen_while_uploading.append(gcs_emulator.resource(bucket, key))
        return data[offset : offset + size]

    await writer.put(
        key, len(data), read_part, {"event_count": "1"}, "application/gzip", None, sha256_hex(data)
    )

    assert reads == [(i * 4 * MIB, 4 * MIB) for i in range(5)]
    assert seen_while_uploading == [None, None, None]
    stored = gcs_emulator.download(bucket, key)
    assert len(stored) == len(data)
    assert hashlib.sha256(stored).hexdigest() == sha256_hex(data)
    resource = gcs_emulator.resource(bucket, key)
    assert resource is not None
    assert resource["metadata"] == {"event_count": "1"}
    assert resource["contentType"] == "application/gzip"
    assert resource["md5Hash"] == md5_b64(data)
    # One PUT per chunk: four answered 308 (Resume Incomplete), the last one 200.
    puts = gcs_emulator.request_lines(f'"PUT /upload/storage/v1/b/{bucket}/o?uploadType=resumable')
    assert [line.rsplit(" ", 2)[-2] for line in puts] == ["308", "308", "308", "308", "200"]


@pytest.mark.timeout(60)
async def test_failure_half_way_leaves_no_object(
    gcs_emulator: GcsEmulator, writers: Writers
) -> None:
    bucket = gcs_emulator.create_bucket("failure")
    writer = writers.on(gcs_emulator, bucket, chunk_size=4 * MIB, resumable_threshold=16 * MIB)
    data = os.urandom(20 * MIB)
    calls = 0

    def read_part(offset: int, size: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError("spill file vanished")
        return data[offset : offset + size]

    with pytest.raises(OSError, match="spill file vanished"):
        await writer.put(
            "zaita/broken.jsonl",
            len(data),
            read_part,
            {},
            "application/x-ndjson",
            None,
            sha256_hex(data),
        )

    assert gcs_emulator.names(bucket) == []
    # The writer is still usable, and the same key can be written afterwards.
    await put(writer, "zaita/broken.jsonl", b"{}\n")
    assert gcs_emulator.names(bucket) == ["zaita/broken.jsonl"]


@pytest.mark.timeout(60)
async def test_wrong_sha256_or_size_writes_nothing(
    gcs_emulator: GcsEmulator, writers: Writers
) -> None:
    bucket = gcs_emulator.create_bucket("digest")
    writer = writers.on(gcs_emulator, bucket, chunk_size=4 * MIB, resumable_threshold=16 * MIB)
    small, large = events(10), os.urandom(17 * MIB)

    with pytest.raises(ValueError, match="SHA-256"):
        await writer.put("s", len(small), reader(small), {}, "application/x-ndjson", None, "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        await writer.put("l", len(large), reader(large), {}, "application/x-ndjson", None, "0" * 64)
    with pytest.raises(ValueError, match="bytes"):
        await writer.put(
            "l", len(large) + 5, reader(large), {}, "application/x-ndjson", None, sha256_hex(large)
        )

    assert gcs_emulator.names(bucket) == []


@pytest.mark.timeout(90)
async def test_overwrite_leaves_the_new_content(
    gcs_emulator: GcsEmulator, writers: Writers
) -> None:
    bucket = gcs_emulator.create_bucket("overwrite")
    writer = writers.on(gcs_emulator, bucket, chunk_size=4 * MIB, resumable_threshold=16 * MIB)
    key = "zaita/tenant_id=t/date=2026-03-15/hour=08/t-0-100.jsonl"
    first, second, third = events(5), os.urandom(17 * MIB), events(7)

    await put(writer, key, first, event_count="5", first_offset="100")
    await put(writer, key, second, event_count="many")
    resource = gcs_emulator.resource(bucket, key)
    assert resource is not None
    assert resource["metadata"] == {"event_count": "many"}
    assert gcs_emulator.download(bucket, key) == second
    await put(writer, key, third, event_count="7")

    assert gcs_emulator.names(bucket) == [key]
    assert gcs_emulator.download(bucket, key) == third
    resource = gcs_emulator.resource(bucket, key)
    assert resource is not None
    assert resource["metadata"] == {"event_count": "7"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [100, 17 * MIB], ids=["multipart", "resumable"])
async def test_missing_bucket_is_permanent(
    gcs_emulator: GcsEmulator, writers: Writers, size: int
) -> None:
    bucket = unique_bucket("missing")
    writer = writers.on(gcs_emulator, bucket, chunk_size=4 * MIB, resumable_threshold=16 * MIB)
    data = os.urandom(size)

    with pytest.raises(StorageError) as caught:
        await put(writer, "zaita/a.jsonl", data)

    error = caught.value
    assert error.permanent and not error.retriable
    assert (error.provider, error.bucket, error.key) == ("gcs", bucket, "zaita/a.jsonl")
    assert "HTTP 404" in str(error)
    assert str(error).startswith(f"gcs://{bucket}/zaita/a.jsonl: ")


@pytest.mark.timeout(60)
async def test_emulator_stopped_is_transient_and_quick(
    gcs_emulator_private: GcsEmulator, writers: Writers
) -> None:
    bucket = gcs_emulator_private.create_bucket("stopped")
    writer = writers.on(gcs_emulator_private, bucket, timeout=20.0)
    await put(writer, "zaita/before.jsonl", events(1))
    gcs_emulator_private.stop()

    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        await put(writer, "zaita/after.jsonl", events(1))
    elapsed = time.monotonic() - started

    assert not caught.value.permanent and caught.value.retriable
    assert elapsed < 5, f"took {elapsed:.1f}s to notice a refused connection"


@pytest.mark.timeout(30)
async def test_silent_server_is_transient_within_the_timeout(writers: Writers) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen(8)  # accepts connections (the kernel does), never answers
        root = f"http://{HOST}:{sock.getsockname()[1]}"
        writer = writers(GcsTarget(bucket="silent", api_root=root), timeout=2.0)
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            await put(writer, "zaita/a.jsonl", events(1))
        elapsed = time.monotonic() - started

    assert not caught.value.permanent
    assert "gave up after 2s" in str(caught.value)
    assert elapsed < 4


# --- what the emulator cannot show: the requests themselves --------------------------------


@pytest.mark.timeout(60)
async def test_kms_key_name_goes_on_every_upload_request(
    recording_gcs: RecordingGcs, writers: Writers
) -> None:
    writer = writers.on(
        recording_gcs,
        "audit",
        kms_key_name=KMS_KEY,
        chunk_size=1 * MIB,
        resumable_threshold=2 * MIB,
    )
    small, large = events(20), os.urandom(3 * MIB + 5)

    await put(writer, "zaita/small.jsonl", small, event_count="20")
    await put(writer, "zaita/large.jsonl", large, event_count="x")

    posts = recording_gcs.of("POST")
    assert [p.query["uploadType"] for p in posts] == ["multipart", "resumable"]
    assert all(p.query.get("kmsKeyName") == KMS_KEY for p in posts)
    assert all(p.path == "/upload/storage/v1/b/audit/o" for p in posts)
    assert recording_gcs.part_types == ["application/x-ndjson"]
    stored_small, body = recording_gcs.objects["zaita/small.jsonl"]
    assert body == small
    assert stored_small["metadata"] == {"event_count": "20"}
    assert stored_small["md5Hash"] == md5_b64(small)  # what the writer announced, checked
    assert recording_gcs.objects["zaita/large.jsonl"][1] == large
    # Over http no token is ever sent.
    assert not any("Authorization" in r.headers for r in recording_gcs.requests)
    # Four chunk PUTs; only the last one carries the whole object's MD5.
    puts = recording_gcs.of("PUT")
    assert [p.headers["Content-Range"] for p in puts] == [
        f"bytes 0-{MIB - 1}/{len(large)}",
        f"bytes {MIB}-{2 * MIB - 1}/{len(large)}",
        f"bytes {2 * MIB}-{3 * MIB - 1}/{len(large)}",
        f"bytes {3 * MIB}-{len(large) - 1}/{len(large)}",
    ]
    assert [p.headers.get("X-Goog-Hash") for p in puts] == [
        None,
        None,
        None,
        f"md5={md5_b64(large)}",
    ]
    assert posts[1].headers["X-Upload-Content-Length"] == str(len(large))


@pytest.mark.timeout(60)
async def test_without_kms_key_no_kms_parameter(
    recording_gcs: RecordingGcs, writers: Writers
) -> None:
    writer = writers.on(recording_gcs, "audit", chunk_size=1 * MIB, resumable_threshold=2 * MIB)
    await put(writer, "a", events(1))
    await put(writer, "b", os.urandom(2 * MIB))
    assert all("kmsKeyName" not in p.query for p in recording_gcs.of("POST"))


@pytest.mark.timeout(60)
async def test_a_failed_chunk_is_resumed_from_what_the_session_holds(
    recording_gcs: RecordingGcs, writers: Writers
) -> None:
    writer = writers.on(recording_gcs, "audit", chunk_size=1 * MIB, resumable_threshold=2 * MIB)
    data = os.urandom(4 * MIB)
    recording_gcs.fail_once[MIB] = 503  # the second chunk's first attempt
    recording_gcs.keep_short[2 * MIB] = 1000  # the third chunk is only partly kept

    await put(writer, "zaita/resumed.jsonl", data)

    assert recording_gcs.objects["zaita/resumed.jsonl"][1] == data
    ranges = [p.headers["Content-Range"] for p in recording_gcs.of("PUT")]
    total = len(data)
    assert ranges == [
        f"bytes 0-{MIB - 1}/{total}",
        f"bytes {MIB}-{2 * MIB - 1}/{total}",  # answered 503
        f"bytes */{total}",  # status query: 1 MiB held
        f"bytes {MIB}-{2 * MIB - 1}/{total}",
        f"bytes {2 * MIB}-{3 * MIB - 1}/{total}",  # only 1000 bytes kept
        f"bytes {2 * MIB + 1000}-{3 * MIB - 1}/{total}",
        f"bytes {3 * MIB}-{4 * MIB - 1}/{total}",
    ]


@pytest.mark.timeout(60)
async def test_a_lost_answer_to_the_last_chunk_finds_the_object_done(
    recording_gcs: RecordingGcs, writers: Writers
) -> None:
    writer = writers.on(recording_gcs, "audit", chunk_size=1 * MIB, resumable_threshold=2 * MIB)
    data = os.urandom(2 * MIB + 10)
    recording_gcs.lose_answer.add(2 * MIB)

    await put(writer, "zaita/done.jsonl", data)

    assert recording_gcs.objects["zaita/done.jsonl"][1] == data
    ranges = [p.headers["Content-Range"] for p in recording_gcs.of("PUT")]
    assert ranges[-2:] == [f"bytes {2 * MIB}-{len(data) - 1}/{len(data)}", f"bytes */{len(data)}"]
    assert not recording_gcs.of("DELETE")


@pytest.mark.timeout(60)
async def test_a_chunk_refused_permanently_cancels_the_session(
    recording_gcs: RecordingGcs, writers: Writers
) -> None:
    writer = writers.on(recording_gcs, "audit", chunk_size=1 * MIB, resumable_threshold=2 * MIB)
    recording_gcs.fail_once[MIB] = 403

    with pytest.raises(StorageError) as caught:
        await put(writer, "zaita/denied.jsonl", os.urandom(3 * MIB))

    assert caught.value.permanent
    assert "upload_id" not in str(caught.value)
    assert [r.method for r in recording_gcs.requests] == ["POST", "PUT", "PUT", "DELETE"]
    assert recording_gcs.objects == {}


# --- credentials -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_unusable_credentials_file_is_permanent_and_quotes_nothing(
    tmp_path: Path, writers: Writers
) -> None:
    missing = tmp_path / "missing.json"
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "service_account", "private_key": "SECRET-KEY-MATERIAL"')
    untyped = tmp_path / "untyped.json"
    untyped.write_text(json.dumps({"private_key": "SECRET-KEY-MATERIAL"}))

    for path in (missing, broken, untyped):
        writer = writers(GcsTarget(bucket="audit", credentials_file=path))
        with pytest.raises(StorageError) as caught:
            await put(writer, "zaita/a.jsonl", events(1))
        assert caught.value.permanent
        assert caught.value.code == "InvalidCredentials"
        assert str(path) in str(caught.value)
        assert "SECRET" not in str(caught.value)


def test_credentials_are_never_sent_over_http(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="https"):
        GcsWriter(
            GcsTarget(
                bucket="audit", credentials_file=tmp_path / "k.json", api_root="http://127.0.0.1:1"
            )
        )


def test_chunk_size_must_be_a_multiple_of_256_kib() -> None:
    with pytest.raises(ValueError, match="multiple"):
        GcsWriter(GcsTarget(bucket="audit"), chunk_size=5 * MIB + 1)


def test_emulator_host_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")
    assert GcsWriter(GcsTarget(bucket="audit")).api_root == "http://127.0.0.1:9023"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    assert GcsWriter(GcsTarget(bucket="audit")).api_root == "https://storage.googleapis.com"
