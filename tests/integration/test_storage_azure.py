"""AzureBlobWriter against a real Azure Blob service (Azurite, started by the tests).

Azurite shows the write path: one Put Blob with metadata, content settings and Content-MD5; a
20 MiB file staged in 4 MiB blocks and committed, read back byte for byte; no blob after a
failure half-way (and the old content kept when the key existed); a replay that overwrites;
SAS tokens; and the errors a sink must tell apart (missing container, wrong key, a SAS without
write permission: permanent, with no secret in the message; server stopped or silent:
transient, quickly).

Azurite accepts any encryption scope and stores none (checked below), so that encryption
scopes reach every request is shown with a fake client instead, as is the error
classification of service codes Azurite never sends (ServerBusy, OperationTimedOut…).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity.aio import DefaultAzureCredential
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from connectors.storage.azure import MIB, AzureBlobWriter, AzureTarget
from connectors.storage.writer import ObjectWriter, StorageError
from tests.azurite_support import (
    ACCOUNT_KEY,
    ACCOUNT_NAME,
    HOST,
    Azurite,
    azurite_fixture,  # noqa: F401 - the fixture "azurite"
    azurite_private_fixture,  # noqa: F401 - the fixture "azurite_private"
    unique_container,
)

pytestmark = [
    pytest.mark.integration,
    # aiohttp (3.12+) warns for every request body over 1 MiB given as bytes, as the Azure SDK
    # gives them (its own uploads too): the body is handed to the socket in one write and the
    # rest buffered, a memory copy, not a wait. Reading and hashing happen off the loop.
    pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning"),
]

NDJSON = "application/x-ndjson"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def reader(data: bytes, log: list[tuple[int, int]] | None = None) -> Callable[[int, int], bytes]:
    def read_part(offset: int, size: int) -> bytes:
        if log is not None:
            log.append((offset, size))
        return data[offset : offset + size]

    return read_part


def failing_reader(data: bytes, good_reads: int) -> Callable[[int, int], bytes]:
    calls = 0

    def read_part(offset: int, size: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls > good_reads:
            raise RuntimeError("spool file vanished")
        return data[offset : offset + size]

    return read_part


def sas_for(container: str, permission: ContainerSasPermissions) -> str:
    return generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=permission,
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


class Writers:
    """Makes writers for one test and closes them all after it."""

    def __init__(self) -> None:
        self.made: list[AzureBlobWriter] = []

    def __call__(self, target: AzureTarget, **options: Any) -> AzureBlobWriter:
        writer = AzureBlobWriter(target, **options)
        self.made.append(writer)
        return writer

    def for_azurite(self, server: Azurite, container: str, **options: Any) -> AzureBlobWriter:
        target = AzureTarget(container=container, connection_string=server.connection_string())
        return self(target, **options)


@pytest.fixture
async def writers() -> AsyncIterator[Writers]:
    made = Writers()
    try:
        yield made
    finally:
        for writer in made.made:
            await writer.close()


@pytest.fixture
def container(azurite: Azurite) -> str:
    return azurite.create_container()


async def put(
    writer: ObjectWriter,
    key: str,
    data: bytes,
    *,
    content_type: str = NDJSON,
    content_encoding: str | None = None,
    read_part: Callable[[int, int], bytes] | None = None,
    **metadata: str,
) -> None:
    await writer.put(
        key,
        len(data),
        read_part or reader(data),
        metadata,
        content_type,
        content_encoding,
        sha256_hex(data),
    )


def download(server: Azurite, container: str, key: str) -> bytes:
    with server.service() as service:
        return service.get_blob_client(container, key).download_blob().readall()


def blob_names(server: Azurite, container: str) -> list[str]:
    with server.service() as service:
        return [blob.name for blob in service.get_container_client(container).list_blobs()]


def uncommitted_block_count(server: Azurite, container: str, key: str) -> int:
    with server.service() as service:
        _, uncommitted = service.get_blob_client(container, key).get_block_list("uncommitted")
        return len(uncommitted)


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    for secret in secrets:
        assert secret
        for text in texts:
            assert secret not in text


# --- the write path ----------------------------------------------------------------------


async def test_small_put_stores_content_metadata_and_settings(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container)
    data = b'{"event_id": "evt_1"}\n{"event_id": "evt_2"}\n'
    key = "zaita/tenant_id=t1/date=2026-03-15/hour=08/t1-0-100.jsonl.gz"
    await put(
        writer,
        key,
        data,
        content_type="application/gzip",
        content_encoding="identity",
        event_count="2",
        first_offset="100",
        last_offset="101",
        sha256=sha256_hex(data),
    )
    with azurite.service() as service:
        props = service.get_blob_client(container, key).get_blob_properties()
    assert props.metadata == {
        "event_count": "2",
        "first_offset": "100",
        "last_offset": "101",
        "sha256": sha256_hex(data),
    }
    assert props.blob_type == "BlockBlob"
    assert props.size == len(data)
    assert props.content_settings.content_type == "application/gzip"
    assert props.content_settings.content_encoding == "identity"
    assert bytes(props.content_settings.content_md5) == md5(data)
    assert download(azurite, container, key) == data


async def test_empty_file_is_an_empty_blob(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container)
    await put(writer, "empty.jsonl", b"")
    assert download(azurite, container, "empty.jsonl") == b""


async def test_large_file_is_staged_in_blocks_and_read_back_exactly(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container, block_size=4 * MIB)
    data = os.urandom(20 * MIB)
    reads: list[tuple[int, int]] = []
    key = "big/t1-0-0.jsonl.gz"
    await put(
        writer,
        key,
        data,
        content_type="application/gzip",
        read_part=reader(data, reads),
        event_count="12345",
    )
    assert reads == [(i * 4 * MIB, 4 * MIB) for i in range(5)]
    got = download(azurite, container, key)
    assert len(got) == len(data)
    assert sha256_hex(got) == sha256_hex(data)
    with azurite.service() as service:
        blob = service.get_blob_client(container, key)
        props = blob.get_blob_properties()
        committed, uncommitted = blob.get_block_list("all")
    assert props.metadata == {"event_count": "12345"}
    assert props.content_settings.content_type == "application/gzip"
    assert bytes(props.content_settings.content_md5) == md5(data)
    assert [block.size for block in committed] == [4 * MIB] * 5
    assert uncommitted == []
    # Deterministic ids: the index and the block's MD5, all of one length.
    expected = [f"{i:05d}-{md5(data[i * 4 * MIB : (i + 1) * 4 * MIB]).hex()}" for i in range(5)]
    assert [block.id for block in committed] == expected


async def test_last_block_may_be_short(azurite: Azurite, container: str, writers: Writers) -> None:
    writer = writers.for_azurite(azurite, container, block_size=1 * MIB, single_put_threshold=0)
    data = os.urandom(2 * MIB + 12345)
    reads: list[tuple[int, int]] = []
    await put(writer, "odd.bin", data, read_part=reader(data, reads))
    assert reads == [(0, MIB), (MIB, MIB), (2 * MIB, 12345)]
    assert download(azurite, container, "odd.bin") == data


async def test_failure_mid_upload_leaves_no_blob(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container, block_size=4 * MIB)
    data = os.urandom(20 * MIB)
    with pytest.raises(RuntimeError, match="spool file vanished"):
        await put(writer, "half.jsonl", data, read_part=failing_reader(data, good_reads=2))
    assert blob_names(azurite, container) == []
    with azurite.service() as service, pytest.raises(HttpResponseError) as info:
        service.get_blob_client(container, "half.jsonl").get_blob_properties()
    assert info.value.status_code == 404
    # What was staged stays invisible; the next successful write of the key drops it.
    assert uncommitted_block_count(azurite, container, "half.jsonl") == 2
    await put(writer, "half.jsonl", data)
    assert download(azurite, container, "half.jsonl") == data
    assert uncommitted_block_count(azurite, container, "half.jsonl") == 0


async def test_failure_over_an_existing_blob_keeps_the_old_content(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container, block_size=4 * MIB)
    await put(writer, "k.jsonl", b"old content\n", version="1")
    new = os.urandom(20 * MIB)
    with pytest.raises(RuntimeError):
        await put(writer, "k.jsonl", new, read_part=failing_reader(new, good_reads=3), version="2")
    assert download(azurite, container, "k.jsonl") == b"old content\n"
    with azurite.service() as service:
        props = service.get_blob_client(container, "k.jsonl").get_blob_properties()
    assert props.metadata == {"version": "1"}


async def test_content_not_matching_its_sha256_writes_nothing(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container, block_size=1 * MIB, single_put_threshold=MIB)
    for size in (1000, 3 * MIB):
        data = os.urandom(size)
        with pytest.raises(ValueError, match="does not match its description"):
            await writer.put(f"bad-{size}", size, reader(data), {}, NDJSON, None, "00" * 32)
    # read_part giving fewer bytes than asked is refused as well.
    with pytest.raises(ValueError, match="read_part gave"):
        await writer.put("short", 100, lambda offset, size: b"x" * 10, {}, NDJSON, None, "0" * 64)
    assert blob_names(azurite, container) == []


async def test_writing_a_key_again_replaces_the_blob(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container, block_size=1 * MIB, single_put_threshold=MIB)
    key = "replay/t1-0-42.jsonl"
    first = os.urandom(3 * MIB)
    await put(writer, key, first, attempt="1")
    second = b"short replay\n"
    await put(writer, key, second, attempt="2")
    assert download(azurite, container, key) == second
    third = os.urandom(2 * MIB + 1)
    await put(writer, key, third, attempt="3")
    assert download(azurite, container, key) == third
    with azurite.service() as service:
        props = service.get_blob_client(container, key).get_blob_properties()
    assert props.metadata == {"attempt": "3"}
    assert blob_names(azurite, container) == [key]


async def test_one_client_serves_every_put(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    writer = writers.for_azurite(azurite, container)
    await asyncio.gather(*(put(writer, f"k{i}", f"{i}\n".encode()) for i in range(5)))
    client = writer._client
    assert client is not None
    await put(writer, "k5", b"5\n")
    assert writer._client is client
    assert sorted(blob_names(azurite, container)) == [f"k{i}" for i in range(6)]
    await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await put(writer, "k6", b"6\n")


async def test_encryption_scope_is_accepted_by_azurite_which_ignores_it(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    # Azurite implements no encryption scopes: any name is accepted and none is stored. The
    # fake-client test below shows the scope goes with every request.
    target = AzureTarget(
        container=container,
        connection_string=azurite.connection_string(),
        encryption_scope="customer-scope",
    )
    writer = writers(target, block_size=MIB, single_put_threshold=MIB)
    await put(writer, "small", b"x\n")
    await put(writer, "large", os.urandom(2 * MIB))
    with azurite.service() as service:
        props = service.get_blob_client(container, "large").get_blob_properties()
    assert props.encryption_scope is None


# --- credentials -------------------------------------------------------------------------


async def test_account_url_with_account_key(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    target = AzureTarget(
        container=container, account_url=azurite.account_url, account_key=ACCOUNT_KEY
    )
    writer = writers(target)
    await put(writer, "by-key", b"key\n")
    assert download(azurite, container, "by-key") == b"key\n"


async def test_sas_token_authorizes_writes(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    sas = sas_for(container, ContainerSasPermissions(write=True, create=True))
    target = AzureTarget(container=container, account_url=azurite.account_url, sas_token="?" + sas)
    writer = writers(target, block_size=MIB, single_put_threshold=MIB)
    await put(writer, "sas-small", b"sas\n")
    large = os.urandom(2 * MIB + 5)
    await put(writer, "sas-large", large)
    assert download(azurite, container, "sas-small") == b"sas\n"
    assert download(azurite, container, "sas-large") == large


async def test_sas_without_write_permission_is_permanent_and_not_quoted(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    sas = sas_for(container, ContainerSasPermissions(read=True, list=True))
    target = AzureTarget(container=container, account_url=azurite.account_url, sas_token=sas)
    writer = writers(target)
    with pytest.raises(StorageError) as info:
        await put(writer, "denied", b"x\n")
    error = info.value
    assert error.permanent and not error.retriable
    assert error.code == "AuthorizationPermissionMismatch"
    assert "HTTP 403" in str(error)
    sig = re.search(r"sig=([^&]+)", sas)
    assert sig is not None
    assert_no_secret(error, sas, sig.group(1))


async def test_forged_sas_is_permanent_and_not_quoted(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    sas = sas_for(container, ContainerSasPermissions(write=True, create=True))
    forged = re.sub(r"sig=[^&]+", "sig=Zm9yZ2VkLXNpZ25hdHVyZS12YWx1ZQ%3D%3D", sas)
    target = AzureTarget(container=container, account_url=azurite.account_url, sas_token=forged)
    writer = writers(target)
    with pytest.raises(StorageError) as info:
        await put(writer, "forged", b"x\n")
    assert info.value.permanent
    assert_no_secret(info.value, forged, "Zm9yZ2VkLXNpZ25hdHVyZS12YWx1ZQ")


async def test_wrong_account_key_is_permanent_and_not_quoted(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    wrong_key = "d3JvbmctYnV0LXdlbGwtZm9ybWVkLWFjY291bnQta2V5LWZvci10aGUtdGVzdHMhIQ=="
    connection_string = azurite.connection_string(account_key=wrong_key)
    by_string = writers(AzureTarget(container=container, connection_string=connection_string))
    by_key = writers(
        AzureTarget(container=container, account_url=azurite.account_url, account_key=wrong_key)
    )
    for writer in (by_string, by_key):
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            await put(writer, "k.jsonl", b"x\n")
        error = info.value
        assert error.permanent
        assert error.provider == "azure" and error.bucket == container and error.key == "k.jsonl"
        assert error.code in ("AuthenticationFailed", "AuthorizationFailure")  # Azure, Azurite
        assert str(error).startswith(f"azure://{container}/k.jsonl: PutBlob failed: ")
        assert error.__cause__ is None and error.__context__ is None
        assert_no_secret(error, wrong_key, connection_string)
        assert time.monotonic() - started < 5  # a 403 is not retried
    assert blob_names(azurite, container) == []


async def test_malformed_account_key_is_permanent_and_not_quoted(
    azurite: Azurite, container: str, writers: Writers
) -> None:
    not_base64 = "this-is-not-a-base64-account-key!"
    target = AzureTarget(
        container=container, account_url=azurite.account_url, account_key=not_base64
    )
    writer = writers(target)
    with pytest.raises(StorageError) as info:
        await put(writer, "k", b"x\n")
    assert info.value.permanent
    assert_no_secret(info.value, not_base64)


async def test_missing_container_is_permanent(azurite: Azurite, writers: Writers) -> None:
    missing = unique_container("missing")
    writer = writers.for_azurite(azurite, missing, block_size=MIB, single_put_threshold=MIB)
    for size, operation in ((10, "PutBlob"), (2 * MIB, "PutBlock")):
        with pytest.raises(StorageError) as info:
            await put(writer, "k.jsonl", os.urandom(size))
        error = info.value
        assert error.permanent
        assert error.code == "ContainerNotFound"
        assert str(error).startswith(
            f"azure://{missing}/k.jsonl: {operation} failed: ContainerNotFound (HTTP 404) "
        )
        assert "\n" not in str(error)


async def test_unusable_credentials_are_permanent_without_network(writers: Writers) -> None:
    # The account's name cannot be read from a custom domain: a key needs it.
    by_key = writers(
        AzureTarget(container="c1x", account_url="https://blobs.example.com", account_key="a2V5")
    )
    # The process's identity (a bearer token) is never sent over plain http.
    by_identity = writers(AzureTarget(container="c1x", account_url="http://127.0.0.1:9/acct"))
    broken = writers(AzureTarget(container="c1x", connection_string="not a connection string"))
    for writer in (by_key, by_identity, broken):
        with pytest.raises(StorageError) as info:
            await put(writer, "k", b"x")
        assert info.value.permanent
        assert "cannot use the container's credentials" in str(info.value)
    assert_no_secret(info.value, "not a connection string")


async def test_account_url_alone_signs_in_as_the_process_identity(writers: Writers) -> None:
    # Made, not used: getting a token would probe the machine's identity endpoints.
    target = AzureTarget(container="audit", account_url="https://acct.blob.core.windows.net")
    client, credential = writers(target)._open_client()
    try:
        assert isinstance(credential, DefaultAzureCredential)
        assert client.credential is credential
    finally:
        await client.close()
        assert credential is not None
        await credential.close()


# --- the service away --------------------------------------------------------------------


async def test_server_stopped_is_transient_and_quick(
    azurite_private: Azurite, writers: Writers
) -> None:
    container = azurite_private.create_container()
    writer = writers.for_azurite(
        azurite_private, container, block_size=MIB, single_put_threshold=MIB
    )
    await put(writer, "before", b"up\n")  # the pool now holds a kept-alive connection
    azurite_private.stop()
    for size in (10, 2 * MIB):
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            await put(writer, "after", os.urandom(size))
        elapsed = time.monotonic() - started
        assert not info.value.permanent and info.value.retriable
        assert "failed: " in str(info.value)
        assert elapsed < 12, elapsed  # two SDK retries, about 2 s and 4 s apart


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_silent_server_times_out_as_transient(silent_port: int, writers: Writers) -> None:
    url = f"http://{HOST}:{silent_port}/{ACCOUNT_NAME}"
    writer = writers(
        AzureTarget(container="quiet", account_url=url, account_key=ACCOUNT_KEY), timeout=1.5
    )
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        await put(writer, "k", b"x\n")
    assert time.monotonic() - started < 5
    assert not info.value.permanent
    assert info.value.code == "Timeout"
    assert str(info.value) == "azure://quiet/k: gave up after 1.5s"


# --- a fake client: what Azurite cannot show ---------------------------------------------


class FakeBlob:
    def __init__(self, calls: list[tuple[str, dict[str, Any]]], fail: Exception | None) -> None:
        self.calls = calls
        self.fail = fail

    async def _record(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((name, kwargs))
        if self.fail is not None:
            raise self.fail
        return {}

    async def upload_blob(self, data: bytes, **kwargs: Any) -> dict[str, Any]:
        return await self._record("upload_blob", {"data": data, **kwargs})

    async def stage_block(self, block_id: str, data: bytes, length: int, **kwargs: Any) -> Any:
        return await self._record("stage_block", {"block_id": block_id, "data": data, **kwargs})

    async def commit_block_list(self, blocks: list[Any], **kwargs: Any) -> dict[str, Any]:
        ids = [block.id for block in blocks]
        return await self._record("commit_block_list", {"ids": ids, **kwargs})


class FakeContainer:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        self.closed = False

    def get_blob_client(self, key: str) -> FakeBlob:
        return FakeBlob(self.calls, self.fail)

    async def close(self) -> None:
        self.closed = True


def fake_writer(
    writers: Writers, fake: FakeContainer, scope: str | None = None, **options: Any
) -> AzureBlobWriter:
    target = AzureTarget(
        container="audit", connection_string="UseDevelopmentStorage=true", encryption_scope=scope
    )
    return writers(target, client_factory=lambda: (fake, None), **options)


async def test_encryption_scope_goes_with_every_request(writers: Writers) -> None:
    fake = FakeContainer()
    writer = fake_writer(writers, fake, "cmk-scope", block_size=1024, single_put_threshold=1024)
    await put(writer, "small", b"x" * 1000)
    await put(writer, "large", os.urandom(3000))
    names = [name for name, _ in fake.calls]
    assert names == [
        "upload_blob",
        "stage_block",
        "stage_block",
        "stage_block",
        "commit_block_list",
    ]
    assert all(kwargs["encryption_scope"] == "cmk-scope" for _, kwargs in fake.calls)
    await writer.close()
    assert fake.closed


async def test_no_scope_is_sent_without_one(writers: Writers) -> None:
    fake = FakeContainer()
    writer = fake_writer(writers, fake, block_size=1024, single_put_threshold=1024)
    await put(writer, "small", b"x")
    await put(writer, "large", os.urandom(2000))
    assert all("encryption_scope" not in kwargs for _, kwargs in fake.calls)


async def test_every_body_carries_its_md5_and_ids_follow_content(writers: Writers) -> None:
    fake = FakeContainer()
    writer = fake_writer(writers, fake, block_size=1000, single_put_threshold=500)
    data = os.urandom(2500)
    await put(writer, "k", data)
    await put(writer, "k", data)  # a replay: the same ids
    changed = data[:1000] + os.urandom(1500)
    await put(writer, "k", changed)
    staged = [kwargs for name, kwargs in fake.calls if name == "stage_block"]
    for kwargs in staged:
        assert kwargs["transactional_content_md5"] == md5(kwargs["data"])
    commits = [kwargs["ids"] for name, kwargs in fake.calls if name == "commit_block_list"]
    assert commits[0] == commits[1]
    assert commits[2][0] == commits[0][0] and commits[2][1:] != commits[0][1:]
    assert len({len(block_id) for ids in commits for block_id in ids}) == 1
    assert bytes(fake.calls[-1][1]["content_settings"].content_md5) == md5(changed)
    await put(writer, "small", b"tiny")
    single = fake.calls[-1][1]
    assert single["transactional_content_md5"] == md5(b"tiny")
    assert single["overwrite"] is True


def service_error(status: int, code: str, message: str = "The service said no.") -> Exception:
    error: HttpResponseError
    if status in (401, 403):
        error = ClientAuthenticationError(message=f"{message}\nRequestId:1\nErrorCode:{code}")
    else:
        error = HttpResponseError(message=f"{message}\nRequestId:1\nErrorCode:{code}")
    error.status_code = status
    error.error_code = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("status", "code", "permanent"),
    [
        (503, "ServerBusy", False),
        (500, "OperationTimedOut", False),
        (500, "InternalError", False),
        (502, "Unknown", False),
        (429, "TooManyRequests", False),
        (400, "Md5Mismatch", False),
        (400, "InvalidBlockList", False),
        (409, "ContainerBeingDeleted", False),
        (404, "ContainerNotFound", True),
        (403, "AuthenticationFailed", True),
        (403, "AuthorizationPermissionMismatch", True),
        (403, "KeyBasedAuthenticationNotPermitted", True),
        (409, "BlobImmutableDueToPolicy", True),
        (400, "EncryptionScopeNotFound", True),
        (409, "EncryptionScopeDisabled", True),
        (403, "KeyVaultEncryptionKeyNotFound", True),
        (400, "SomethingNew", True),
        (409, "SomethingNew", False),
    ],
)
async def test_service_errors_are_classified(
    writers: Writers, status: int, code: str, permanent: bool
) -> None:
    writer = fake_writer(writers, FakeContainer(fail=service_error(status, code)))
    with pytest.raises(StorageError) as info:
        await put(writer, "k", b"x")
    assert info.value.permanent is permanent
    assert info.value.code == code
    assert str(info.value) == (
        f"azure://audit/k: PutBlob failed: {code} (HTTP {status}) The service said no."
    )


async def test_secrets_are_scrubbed_from_service_messages(writers: Writers) -> None:
    key = "c2VjcmV0LWFjY291bnQta2V5LXRoYXQtbXVzdC1uZXZlci1sZWFr"
    sig = "c2lnbmF0dXJlLXZhbHVl%3D"
    target = AzureTarget(
        container="audit",
        connection_string=(
            f"AccountName=acct;AccountKey={key};SharedAccessSignature=sv=2024&sig={sig};"
        ),
    )
    said = f"key {key} sas sig={sig} decoded c2lnbmF0dXJlLXZhbHVl="
    fake = FakeContainer(fail=service_error(500, "InternalError", said))
    writer = writers(target, client_factory=lambda: (fake, None))
    with pytest.raises(StorageError) as info:
        await put(writer, "k", b"x")
    assert_no_secret(info.value, key, sig, "c2lnbmF0dXJlLXZhbHVl=")
    assert "***" in str(info.value)


def test_target_keeps_secrets_out_of_repr_and_rejects_mixed_credentials() -> None:
    target = AzureTarget(
        container="c1x",
        account_url="https://a.blob.core.windows.net",
        sas_token="sv=1&sig=abcdefgh",  # noqa: S106 - a made-up one
    )
    assert "abcdefgh" not in repr(target)
    with pytest.raises(ValueError, match="exactly one"):
        AzureTarget(container="c1x")
    with pytest.raises(ValueError, match="exactly one"):
        AzureTarget(container="c1x", account_url="https://a", connection_string="AccountName=a")
    with pytest.raises(ValueError, match="not connection_string"):
        AzureTarget(container="c1x", connection_string="AccountName=a", account_key="a2V5")
    with pytest.raises(ValueError, match="exclude each other"):
        AzureTarget(container="c1x", account_url="https://a", account_key="k", sas_token="s")  # noqa: S106
