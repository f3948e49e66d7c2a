"""S3Writer against real S3 servers: SeaweedFS (``weed mini``) and moto's server.

SeaweedFS, a real S3 implementation, shows the write path: one PutObject with metadata, SSE-S3
and a SHA-256 the server checks; a multipart upload read back byte for byte; no object and no
pending upload after a failure half-way; a replay that overwrites; and the errors a sink must
tell apart (missing bucket, wrong credentials: permanent; server down or silent: transient,
quickly). moto shows what SeaweedFS cannot: SSE-KMS with a key id, and AssumeRole into a role
with an external id, its credentials signing the uploads and refreshed before they expire.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError
from moto.sts.models import sts_backends

from connectors.storage.s3 import MIB, S3Target, S3Writer
from connectors.storage.writer import StorageError
from tests.process_support import free_port
from tests.s3_support import (
    HOST,
    REGION,
    MotoServer,
    SeaweedFS,
    moto_server_fixture,  # noqa: F401 - the fixture "moto_server"
    seaweedfs_fixture,  # noqa: F401 - the fixture "seaweedfs"
    seaweedfs_private_fixture,  # noqa: F401 - "seaweedfs_private"
    unique_bucket,
)

pytestmark = pytest.mark.integration

MOTO_ACCOUNT = "123456789012"  # moto's default account: where its roles live


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def reader(data: bytes, log: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    def read_part(offset: int, size: int) -> bytes:
        if log is not None:
            log.append((offset, size))
        return data[offset : offset + size]

    return read_part


def session_with(access_key: str, secret_key: str) -> AioSession:
    session = AioSession()
    session.set_credentials(access_key, secret_key)
    return session


class Writers:
    """Makes writers for one test and closes them all after it."""

    def __init__(self) -> None:
        self.made: list[S3Writer] = []

    def __call__(self, target: S3Target, **options: Any) -> S3Writer:
        writer = S3Writer(target, **options)
        self.made.append(writer)
        return writer


@pytest.fixture
async def writers() -> AsyncIterator[Writers]:
    made = Writers()
    try:
        yield made
    finally:
        for writer in made.made:
            await writer.close()


def weed_writer(writers: Writers, server: SeaweedFS, bucket: str, **options: Any) -> S3Writer:
    target = S3Target(
        bucket=bucket, endpoint_url=server.endpoint_url, region=REGION, path_style=True
    )
    options.setdefault("session", session_with(server.access_key, server.secret_key))
    return writers(target, **options)


async def put(writer: S3Writer, key: str, data: bytes, **metadata: str) -> None:
    await writer.put(
        key,
        len(data),
        reader(data),
        metadata,
        "application/x-ndjson",
        None,
        sha256_hex(data),
    )


def assert_nothing_left(client: Any, bucket: str) -> None:
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --- SeaweedFS ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_small_put_has_metadata_sse_s3_and_checksum(
    seaweedfs: SeaweedFS, writers: Writers
) -> None:
    bucket = seaweedfs.create_bucket("small")
    session = session_with(seaweedfs.access_key, seaweedfs.secret_key)
    clients_made: list[str] = []
    session.register("creating-client-class.s3", lambda **_: clients_made.append("s3"))
    writer = weed_writer(writers, seaweedfs, bucket, session=session)
    data = b"".join(b'{"event_id":"evt_%d"}\n' % i for i in range(3))
    metadata = {"event_count": "3", "first_offset": "10", "sha256": sha256_hex(data)}

    await writer.put(
        "t/date=2026-03-15/a.jsonl.gz",
        len(data),
        reader(data),
        metadata,
        "application/x-ndjson",
        "gzip",
        sha256_hex(data),
    )
    await put(writer, "t/date=2026-03-15/b.jsonl", b"{}\n")

    client = seaweedfs.client()
    head = client.head_object(
        Bucket=bucket, Key="t/date=2026-03-15/a.jsonl.gz", ChecksumMode="ENABLED"
    )
    assert head["Metadata"] == metadata
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/x-ndjson"
    assert head["ContentEncoding"] == "gzip"
    assert head["ChecksumSHA256"] == sha256_b64(data)
    body = client.get_object(Bucket=bucket, Key="t/date=2026-03-15/a.jsonl.gz")["Body"].read()
    assert body == data
    assert client.head_object(Bucket=bucket, Key="t/date=2026-03-15/b.jsonl")["ContentLength"] == 3
    assert clients_made == ["s3"]  # one client for both puts, kept open


@pytest.mark.timeout(120)
async def test_multipart_upload_reads_back_byte_exact(
    seaweedfs: SeaweedFS, writers: Writers
) -> None:
    bucket = seaweedfs.create_bucket("multipart")
    session = session_with(seaweedfs.access_key, seaweedfs.secret_key)
    events: list[tuple[str, int]] = []
    session.register(
        "before-parameter-build.s3.UploadPart",
        lambda params, **_: events.append(("upload", params["PartNumber"])),
    )
    writer = weed_writer(
        writers, seaweedfs, bucket, session=session, multipart_threshold=5 * MIB, part_size=5 * MIB
    )
    data = os.urandom(20 * MIB + 12345)  # four full parts and a short one
    reads: list[tuple[int, int]] = []

    def read_part(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        events.append(("read", offset // (5 * MIB) + 1))
        return data[offset : offset + size]

    await writer.put(
        "big/file.jsonl",
        len(data),
        read_part,
        {"k": "v"},
        "application/x-ndjson",
        None,
        sha256_hex(data),
    )

    assert reads == [(n * 5 * MIB, 5 * MIB) for n in range(4)] + [(20 * MIB, 12345)]
    # Bounded memory: when part N goes out, at most part N+1 has been read beyond it.
    for index, (kind, number) in enumerate(events):
        if kind == "upload":
            read_so_far = sum(1 for k, _ in events[:index] if k == "read")
            assert read_so_far <= number + 1, events
    client = seaweedfs.client()
    head = client.head_object(Bucket=bucket, Key="big/file.jsonl", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"] == {"k": "v"}
    assert head["ETag"].endswith('-5"')
    assert head["ChecksumSHA256"].endswith("-5")  # composite: one SHA-256 per part, checked
    body = client.get_object(Bucket=bucket, Key="big/file.jsonl")["Body"].read()
    assert sha256_hex(body) == sha256_hex(data)
    assert body == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.timeout(60)
async def test_read_failure_mid_multipart_leaves_nothing(
    seaweedfs: SeaweedFS, writers: Writers
) -> None:
    bucket = seaweedfs.create_bucket("readfail")
    writer = weed_writer(writers, seaweedfs, bucket, multipart_threshold=5 * MIB, part_size=5 * MIB)
    data = os.urandom(16 * MIB)

    def read_part(offset: int, size: int) -> bytes:
        if offset >= 2 * 5 * MIB:
            raise OSError("spool file vanished")
        return data[offset : offset + size]

    with pytest.raises(OSError, match="spool file vanished"):
        await writer.put(
            "k/file.jsonl", len(data), read_part, {}, "application/x-ndjson", None, sha256_hex(data)
        )

    client = seaweedfs.client()
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=bucket, Key="k/file.jsonl")
    assert missing.value.response["Error"]["Code"] in {"404", "NoSuchKey"}
    assert_nothing_left(client, bucket)


@pytest.mark.timeout(60)
async def test_content_not_matching_its_digest_is_not_published(
    seaweedfs: SeaweedFS, writers: Writers
) -> None:
    bucket = seaweedfs.create_bucket("digest")
    writer = weed_writer(writers, seaweedfs, bucket, multipart_threshold=5 * MIB, part_size=5 * MIB)
    small, large = b"abc\n", os.urandom(11 * MIB)

    for key, data in (("small.jsonl", small), ("large.jsonl", large)):
        with pytest.raises(ValueError, match="does not match"):
            await writer.put(
                key, len(data), reader(data), {}, "application/x-ndjson", None, sha256_hex(b"other")
            )

    assert_nothing_left(seaweedfs.client(), bucket)


@pytest.mark.parametrize("checksums", [True, False], ids=["sha256", "content-md5"])
@pytest.mark.timeout(60)
async def test_server_refuses_a_body_damaged_after_hashing(
    seaweedfs: SeaweedFS, writers: Writers, checksums: bool
) -> None:
    bucket = seaweedfs.create_bucket("damaged")
    session = session_with(seaweedfs.access_key, seaweedfs.secret_key)

    def damage(request: Any, **_: Any) -> None:
        # After the checksum header was made, before signing: what arrives differs from
        # what was hashed (as a flipped bit in transit would, where TLS did not catch it).
        raw = request.body.getvalue()
        if len(raw) < 5 * MIB or raw[:1] == b"2":  # the small file, and part 2 of the large
            request.data = io.BytesIO(bytes([raw[0] ^ 1]) + raw[1:])

    session.register("before-sign.s3.PutObject", damage)
    session.register("before-sign.s3.UploadPart", damage)
    writer = weed_writer(
        writers,
        seaweedfs,
        bucket,
        session=session,
        checksums=checksums,
        multipart_threshold=5 * MIB,
        part_size=5 * MIB,
    )
    small = b"1 small file\n"
    large = b"1" * 5 * MIB + b"2" * 5 * MIB + b"3" * 1000

    for key, data in (("small.jsonl", small), ("large.jsonl", large)):
        with pytest.raises(StorageError) as failure:
            await put(writer, key, data)
        assert failure.value.code == "BadDigest", (key, failure.value)
        assert not failure.value.permanent
    assert_nothing_left(seaweedfs.client(), bucket)


@pytest.mark.timeout(60)
async def test_replay_overwrites_the_same_key(seaweedfs: SeaweedFS, writers: Writers) -> None:
    bucket = seaweedfs.create_bucket("replay")
    writer = weed_writer(writers, seaweedfs, bucket, multipart_threshold=5 * MIB, part_size=5 * MIB)
    first, second = os.urandom(6 * MIB), b'{"event_id":"evt_replayed"}\n'

    await put(writer, "t/T-0-100.jsonl", first, attempt="1")
    await put(writer, "t/T-0-100.jsonl", second, attempt="2")

    client = seaweedfs.client()
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("t/T-0-100.jsonl", len(second))]
    obj = client.get_object(Bucket=bucket, Key="t/T-0-100.jsonl")
    assert obj["Body"].read() == second
    assert obj["Metadata"] == {"attempt": "2"}


@pytest.mark.timeout(60)
async def test_missing_bucket_is_permanent(seaweedfs: SeaweedFS, writers: Writers) -> None:
    bucket = unique_bucket("absent")
    writer = weed_writer(writers, seaweedfs, bucket, multipart_threshold=5 * MIB, part_size=5 * MIB)

    for data in (b"x\n", os.urandom(6 * MIB)):  # PutObject, then CreateMultipartUpload
        with pytest.raises(StorageError) as failure:
            await put(writer, "k/file.jsonl", data)
        assert failure.value.permanent
        assert failure.value.code == "NoSuchBucket"
        assert str(failure.value).startswith(f"s3://{bucket}/k/file.jsonl: ")
    assert bucket not in [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]


@pytest.mark.timeout(60)
async def test_wrong_credentials_are_permanent(seaweedfs: SeaweedFS, writers: Writers) -> None:
    bucket = seaweedfs.create_bucket("creds")
    wrong_secret = session_with(seaweedfs.access_key, "not-the-secret-0123456789")
    unknown_key = session_with("AKIAUNKNOWNKEY000000", "whatever-secret-0123456789")

    for session, code in (
        (wrong_secret, "SignatureDoesNotMatch"),
        (unknown_key, "InvalidAccessKeyId"),
    ):
        writer = weed_writer(writers, seaweedfs, bucket, session=session)
        with pytest.raises(StorageError) as failure:
            await put(writer, "k/file.jsonl", b"x\n")
        assert failure.value.permanent, failure.value
        assert failure.value.code == code
        assert "secret" not in str(failure.value)
    assert_nothing_left(seaweedfs.client(), bucket)


@pytest.mark.timeout(60)
async def test_server_down_is_transient_and_quick(writers: Writers) -> None:
    target = S3Target(
        bucket="any-bucket",
        endpoint_url=f"http://{HOST}:{free_port()}",
        region=REGION,
        path_style=True,
    )
    writer = writers(target, session=session_with("AKIAEXAMPLE000000000", "secret-0123456789"))

    started = time.monotonic()
    with pytest.raises(StorageError) as failure:
        await put(writer, "k/file.jsonl", b"x\n")
    elapsed = time.monotonic() - started

    assert not failure.value.permanent
    assert failure.value.code == "EndpointConnectionError"
    assert elapsed < 10, elapsed


@pytest.mark.timeout(60)
async def test_silent_server_is_cut_off_by_the_timeout(writers: Writers) -> None:
    # Accepts connections (the kernel's backlog does) and never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((HOST, 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        target = S3Target(
            bucket="any-bucket",
            endpoint_url=f"http://{HOST}:{port}",
            region=REGION,
            path_style=True,
        )
        writer = writers(
            target, timeout=2.0, session=session_with("AKIAEXAMPLE000000000", "secret-0123456789")
        )

        started = time.monotonic()
        with pytest.raises(StorageError) as failure:
            await put(writer, "k/file.jsonl", b"x\n")
        elapsed = time.monotonic() - started

    assert not failure.value.permanent
    assert 1.5 < elapsed < 6, elapsed


@pytest.mark.timeout(120)
async def test_server_stopped_mid_multipart_shows_no_object(
    seaweedfs_private: SeaweedFS, writers: Writers, caplog: pytest.LogCaptureFixture
) -> None:
    server = seaweedfs_private
    bucket = server.create_bucket("stopped")
    writer = weed_writer(
        writers, server, bucket, multipart_threshold=5 * MIB, part_size=5 * MIB, timeout=30.0
    )
    data = os.urandom(16 * MIB)

    def read_part(offset: int, size: int) -> bytes:
        if offset >= 2 * 5 * MIB and server.running:
            server.stop()  # the server goes away while parts 2 and 3 are under way
        return data[offset : offset + size]

    with (
        caplog.at_level(logging.WARNING, logger="connectors.storage.s3"),
        pytest.raises(StorageError) as failure,
    ):
        await writer.put(
            "k/file.jsonl", len(data), read_part, {}, "application/x-ndjson", None, sha256_hex(data)
        )
    assert not failure.value.permanent

    server.start()
    client = server.client()
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    # The abort could not reach the server: the parts wait, invisible, as an incomplete upload
    # (a bucket lifecycle rule AbortIncompleteMultipartUpload removes such leftovers).
    assert any("Could not abort" in r.getMessage() for r in caplog.records)
    pending = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in pending] == ["k/file.jsonl"]
    client.abort_multipart_upload(
        Bucket=bucket, Key="k/file.jsonl", UploadId=pending[0]["UploadId"]
    )
    assert_nothing_left(client, bucket)


# --- moto: SSE-KMS and AssumeRole --------------------------------------------------------


def moto_target(moto: MotoServer, bucket: str, **settings: Any) -> S3Target:
    return S3Target(
        bucket=bucket, endpoint_url=moto.endpoint_url, region=REGION, path_style=True, **settings
    )


@pytest.mark.timeout(60)
async def test_sse_kms_names_the_key_on_every_object(
    moto_server: MotoServer, writers: Writers
) -> None:
    bucket = moto_server.create_bucket("kms")
    key_id = moto_server.client("kms").create_key(Description="customer key")["KeyMetadata"][
        "KeyId"
    ]
    writer = writers(
        moto_target(moto_server, bucket, kms_key_id=key_id),
        session=session_with(moto_server.access_key, moto_server.secret_key),
        multipart_threshold=5 * MIB,
        part_size=5 * MIB,
    )
    small, large = b'{"event_id":"evt_1"}\n', os.urandom(11 * MIB)

    await put(writer, "small.jsonl", small, count="1")
    await put(writer, "large.jsonl", large, count="many")

    client = moto_server.client("s3")
    for key, data in (("small.jsonl", small), ("large.jsonl", large)):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith(key_id)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


class Clock:
    """A wall clock the test moves; only the credentials' refresh decisions read it."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def customer_account(moto: MotoServer) -> tuple[str, str, str]:
    """An IAM user that may only assume a role, and the role, which may write to S3."""
    iam = moto.client("iam")
    iam.create_user(UserName="exporter")
    key = iam.create_access_key(UserName="exporter")["AccessKey"]
    iam.put_user_policy(
        UserName="exporter",
        PolicyName="assume-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            }
        ),
    )
    role = iam.create_role(
        RoleName="siem-writer",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{MOTO_ACCOUNT}:user/exporter"},
                        "Action": "sts:AssumeRole",
                        "Condition": {"StringEquals": {"sts:ExternalId": "ext-7g8h9i0j"}},
                    }
                ],
            }
        ),
    )["Role"]
    iam.put_role_policy(
        RoleName="siem-writer",
        PolicyName="write-exports",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
        ),
    )
    return key["AccessKeyId"], key["SecretAccessKey"], role["Arn"]


def assumed_roles() -> list[Any]:
    return list(sts_backends[MOTO_ACCOUNT]["aws"].assumed_roles)


@pytest.mark.timeout(90)
async def test_assume_role_signs_uploads_and_refreshes_before_expiry(
    moto_server: MotoServer, writers: Writers
) -> None:
    bucket = moto_server.create_bucket("role")
    access_key, secret_key, role_arn = customer_account(moto_server)
    moto_server.require_auth()  # from here on moto checks signatures and IAM policies

    # The user itself may not write: an upload that works was signed with the role's keys.
    direct = writers(moto_target(moto_server, bucket), session=session_with(access_key, secret_key))
    with pytest.raises(StorageError) as denied:
        await put(direct, "direct.jsonl", b"x\n")
    assert denied.value.permanent and denied.value.code == "AccessDenied"

    session = session_with(access_key, secret_key)
    asked: list[dict[str, Any]] = []
    issued: list[str] = []
    session.register("before-call.sts.AssumeRole", lambda params, **_: asked.append(params["body"]))
    session.register(
        "after-call.sts.AssumeRole",
        lambda parsed, **_: issued.append(parsed["Credentials"]["AccessKeyId"]),
    )
    clock = Clock()
    writer = writers(
        moto_target(moto_server, bucket, role_arn=role_arn, external_id="ext-7g8h9i0j"),
        session=session,
        sts_endpoint_url=moto_server.endpoint_url,
        clock=clock,
    )

    # Step 1. The first upload assumes the role, with the external id, and is signed with it.
    await put(writer, "one.jsonl", b"1\n")
    assert len(asked) == 1
    assert asked[0]["RoleArn"] == role_arn
    assert asked[0]["ExternalId"] == "ext-7g8h9i0j"
    assert asked[0]["RoleSessionName"] == "siem-export"
    [first] = assumed_roles()
    assert (first.access_key_id, first.external_id, first.session_name) == (
        issued[0],
        "ext-7g8h9i0j",
        "siem-export",
    )

    # Step 2. Withdraw the first keys at the server, as their expiry would. While the clock
    # says they are fresh the writer keeps them (no second AssumeRole) and is refused.
    sts_backends[MOTO_ACCOUNT]["aws"].assumed_roles.remove(first)
    clock.now += timedelta(minutes=30)
    with pytest.raises(StorageError) as refused:
        await put(writer, "two.jsonl", b"2\n")
    assert refused.value.permanent
    assert len(asked) == 1

    # Step 3. 55 minutes into the hour the credentials are due: the next request assumes the
    # role again before signing, and the new keys are accepted.
    clock.now += timedelta(minutes=25)
    await put(writer, "three.jsonl", b"3\n")
    assert len(asked) == 2
    assert asked[1]["ExternalId"] == "ext-7g8h9i0j"
    assert issued[1] != issued[0]
    assert [r.access_key_id for r in assumed_roles()] == [issued[1]]

    moto_server.allow_all()
    listed = moto_server.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["one.jsonl", "three.jsonl"]


@pytest.mark.timeout(60)
async def test_role_that_cannot_be_assumed_is_permanent(
    moto_server: MotoServer, writers: Writers
) -> None:
    bucket = moto_server.create_bucket("norole")
    iam = moto_server.client("iam")
    iam.create_user(UserName="stranger")  # no policy at all: may not assume anything
    key = iam.create_access_key(UserName="stranger")["AccessKey"]
    moto_server.require_auth()
    writer = writers(
        moto_target(
            moto_server,
            bucket,
            role_arn=f"arn:aws:iam::{MOTO_ACCOUNT}:role/siem-writer",
            external_id="ext-7g8h9i0j",
        ),
        session=session_with(key["AccessKeyId"], key["SecretAccessKey"]),
        sts_endpoint_url=moto_server.endpoint_url,
    )

    with pytest.raises(StorageError) as failure:
        await put(writer, "one.jsonl", b"1\n")

    assert failure.value.permanent
    assert failure.value.code == "AccessDenied"
    assert "AssumeRole failed" in str(failure.value)
    assert key["SecretAccessKey"] not in str(failure.value)
