"""Writes finished export files to Azure Blob Storage as block blobs, whole or not at all.

Who calls it: the storage sink, once per closed file, through ``AzureBlobWriter.put``; it
acknowledges the file's events only after ``put`` has returned. One ``AzureBlobWriter`` serves
one destination (``AzureTarget``: a container and its credentials) and keeps one async
container client, with its connection pool, for its whole life; ``close()`` releases it.

What ``put`` guarantees when it returns:

1. The blob ``key`` exists as a block blob holding exactly ``size`` bytes whose SHA-256 is
   ``sha256_hex``. Azure computes no SHA-256, so the writer checks it over the bytes it read,
   before anything is made visible; a mismatch raises ``ValueError`` and writes nothing.
2. Every request body carries its MD5 (``Content-MD5``, computed here in the worker thread
   that read the bytes), which the service checks: a body damaged in transit is refused
   (``Md5Mismatch``) instead of stored. The blob's own Content-MD5 property is the MD5 of the
   whole content, so readers can check a download too.
3. Nobody sees a partial blob. Small files (up to ``single_put_threshold``) go in one Put Blob,
   which the service applies atomically. Larger ones are staged as blocks (Put Block) and made
   the blob's content by one Put Block List: staged blocks are invisible to readers, and on
   any failure before the commit (an error, the ``timeout``, a cancelled task, ``read_part``
   raising) the blob keeps its previous content, or stays absent. Azure has no abort call:
   the uncommitted blocks are dropped by the next successful write of the key, or by the
   service after a week.
4. Writing the same key again replaces the blob whole (a replay after a crash overwrites
   instead of adding a copy); a reader sees the old or the new content, never a mix.
5. Metadata, content type and encoding are set by the same request that makes the content
   visible, and so is ``encryption_scope``, which is also sent with every staged block: with a
   scope set, no byte of the file is stored under another key.

Block ids are deterministic: the block's index and the MD5 of its bytes, all the same length
(as Azure requires). A retried block overwrites its own earlier copy, and two writers racing
on the same key (an old owner of a partition still uploading while the new one replays) cannot
commit each other's blocks into one blob, since a commit names blocks by their content.

Memory: a block upload holds at most two blocks (the one being sent and the next one, read
ahead in a worker thread through ``read_part(offset, size)``).

When ``put`` fails it raises ``StorageError`` (provider ``azure``, bucket = container) with
``permanent`` set when retrying cannot help until someone changes the configuration (missing
container, authentication or authorization failures, an unknown or unusable encryption scope
or customer key, an immutable blob, unusable credentials) and cleared for what may pass
(throttling such as 503 ServerBusy or 500 OperationTimedOut, other 5xx, timeouts, connection
errors, a body damaged in transit). The SDK itself retries a request twice, backing off about
2 and 4 seconds, within ``timeout``. Messages name the operation, the service's error code,
HTTP status and first message line; they never contain the connection string, SAS token or
account key (each is scrubbed from any text taken from the SDK), and the SDK's exception is not
chained to them (it holds the request, whose URL may carry the SAS).

Credentials, one of: ``connection_string`` (which holds the account's key or a SAS);
``account_url`` with ``sas_token``; ``account_url`` with ``account_key`` (the account's name
is read from the URL, ``https://<account>.blob.core.windows.net`` or an emulator's
``http://127.0.0.1:<port>/<account>``); ``account_url`` alone, signed in as the process's Azure
identity (``azure.identity.aio.DefaultAzureCredential``: environment, workload identity,
managed identity, …), https only. Whether plain ``http://`` may be used at all is the caller's
decision (``StorageDestination.uses_plain_http`` and ``StorageSettings.allow_http``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote

import aiohttp
from azure.core.credentials import AzureSasCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobBlock, BlobType, ContentSettings
from azure.storage.blob.aio import ContainerClient, ExponentialRetry

from connectors.storage.writer import StorageError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.storage.blob.aio import BlobClient

_T = TypeVar("_T")

PROVIDER = "azure"
MIB = 1024 * 1024
MAX_BLOCK_SIZE = 4000 * MIB  # Put Block's largest body
MAX_SINGLE_PUT = 5000 * MIB  # Put Blob's largest body
MAX_BLOCKS = 50_000  # committed blocks per blob

# The SDK logs every request and response at INFO (several lines per block); they go to this
# logger, which only passes warnings on. Set its level to INFO to see them.
_http_log = logging.getLogger(f"{__name__}.http")
_http_log.setLevel(logging.WARNING)

# Error codes that say the configuration is wrong: retrying cannot help.
_PERMANENT_CODES = frozenset(
    {
        "AccountIsDisabled",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "AuthorizationProtocolMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "AuthorizationSourceIPMismatch",
        "BlobImmutableDueToLegalHold",
        "BlobImmutableDueToPolicy",
        "BlockCountExceedsLimit",
        "ContainerDisabled",
        "ContainerNotFound",
        "InsufficientAccountPermissions",
        "InvalidAuthenticationInfo",
        "InvalidBlobType",  # a page or append blob holds the key: blocks cannot go there
        "InvalidHeaderValue",
        "InvalidMetadata",
        "InvalidResourceName",
        "KeyBasedAuthenticationNotPermitted",
        "LeaseIdMissing",
        "MetadataTooLarge",
        "NoAuthenticationInformation",
        "RequestBodyTooLarge",
        "ResourceNotFound",
        "UnauthorizedBlobOverwrite",
    }
)
# Codes that come with a status which would otherwise read as permanent (400, 404, 409).
_TRANSIENT_CODES = frozenset(
    {
        "ContainerBeingDeleted",
        "InternalError",
        "InvalidBlockList",  # a racing write of the same key took our staged blocks: restage
        "Md5Mismatch",  # damaged in transit
        "OperationTimedOut",
        "ServerBusy",
    }
)
_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 411, 412, 413, 501, 505})


@dataclass(frozen=True)
class AzureTarget:
    """Where and how to write: plain settings, filled from the destination's configuration.

    Exactly one of ``connection_string`` and ``account_url``; with ``account_url``, at most one
    of ``sas_token`` and ``account_key`` (neither: the process's Azure identity). Secrets are
    plain strings here (the caller unwraps its ``SecretStr``) and are left out of ``repr``.
    ``encryption_scope`` names the account's encryption scope (customer-managed key) of every
    blob written.
    """

    container: str
    account_url: str | None = None
    connection_string: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    account_key: str | None = field(default=None, repr=False)
    encryption_scope: str | None = None

    def __post_init__(self) -> None:
        # Messages name the options, never their values.
        if not self.container:
            raise ValueError("AzureTarget needs a container")
        if (self.connection_string is None) == (self.account_url is None):
            raise ValueError("AzureTarget needs exactly one of connection_string and account_url")
        if self.connection_string is not None and (self.sas_token or self.account_key):
            raise ValueError("sas_token and account_key go with account_url, not connection_string")
        if self.sas_token is not None and self.account_key is not None:
            raise ValueError("sas_token and account_key exclude each other")

    def secrets(self) -> list[str]:
        """Every secret text of the target, as it may appear in a message (also URL-encoded
        or decoded, and each value of the connection string), longest first."""
        found: set[str] = set()
        for secret in (self.connection_string, self.sas_token, self.account_key):
            if secret:
                found.add(secret)
        if self.connection_string:
            for item in self.connection_string.split(";"):
                name, _, value = item.partition("=")
                if name.strip().lower() in ("accountkey", "sharedaccesssignature") and value:
                    found.add(value.strip())
        for text in list(found):
            for part in text.split("&"):
                name, _, value = part.partition("=")
                if name.strip().lstrip("?").lower() == "sig" and value:
                    found.add(value)
        for text in list(found):
            found.update({unquote(text), quote(text, safe=""), quote(text, safe="=&")})
        return sorted((s for s in found if len(s) >= 8), key=len, reverse=True)


class AzureBlobWriter:
    """Puts whole blobs into one container (see the module docstring for the guarantees).

    ``block_size`` is the size of each staged block but the last (raised when a file would
    need more than 50,000 blocks); files of at most ``single_put_threshold`` bytes go in one
    Put Blob. ``timeout`` bounds one ``put`` from its first request to its last, the SDK's
    retries included. ``client_factory`` makes the container client and the credential the
    writer closes with it (default: from the target's credentials); tests pass a fake.
    """

    def __init__(
        self,
        target: AzureTarget,
        *,
        block_size: int = 8 * MIB,
        single_put_threshold: int = 16 * MIB,
        timeout: float = 300.0,
        client_factory: Callable[[], tuple[ContainerClient, AsyncTokenCredential | None]]
        | None = None,
    ) -> None:
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be between 1 and {MAX_BLOCK_SIZE}")
        if not 0 <= single_put_threshold <= MAX_SINGLE_PUT:
            raise ValueError(f"single_put_threshold must be between 0 and {MAX_SINGLE_PUT}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self._block_size = block_size
        self._threshold = single_put_threshold
        self._timeout = timeout
        self._factory = client_factory if client_factory is not None else self._open_client
        self._secrets = target.secrets()
        self._client_lock = asyncio.Lock()
        self._client: ContainerClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._closed = False

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
        """Write ``size`` bytes, read through ``read_part(offset, size)``, as blob ``key``."""
        if not key or size < 0:
            raise ValueError("put needs a key and a size >= 0")
        container = await self._get_client(key)
        blob = container.get_blob_client(key)
        content = (content_type, content_encoding)
        upload = self._put_single if size <= self._threshold else self._put_blocks
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                await upload(blob, key, size, read_part, metadata, sha256_hex, content)
        except TimeoutError as exc:
            if deadline.expired():
                raise self._timed_out(key) from exc
            raise

    async def close(self) -> None:
        """Close the client, its connections and credential; the writer is not used again."""
        self._closed = True
        client, self._client = self._client, None
        credential, self._credential = self._credential, None
        try:
            if client is not None:
                await client.close()
        finally:
            if credential is not None:
                await credential.close()

    # One client per target, made on first use and kept (keep-alive connections).
    async def _get_client(self, key: str) -> ContainerClient:
        async with self._client_lock:
            if self._closed:
                raise RuntimeError("AzureBlobWriter is closed")
            if self._client is None:
                try:
                    self._client, self._credential = self._factory()
                except (ValueError, TypeError, ImportError, AzureError) as exc:
                    # A malformed connection string or URL, an account name that cannot be
                    # read from the URL, a token credential over http: configuration.
                    raise StorageError(
                        f"cannot use the container's credentials: {self._describe(exc)}",
                        bucket=self.target.container,
                        key=key,
                        permanent=True,
                        code=type(exc).__name__,
                        provider=PROVIDER,
                    ) from None  # the SDK's exception may quote the connection string
            return self._client

    def _open_client(self) -> tuple[ContainerClient, AsyncTokenCredential | None]:
        target = self.target
        options: dict[str, Any] = {
            "max_single_put_size": max(self._threshold, 1),
            "max_block_size": self._block_size,
            "connection_timeout": min(self._timeout, 10.0),
            "read_timeout": min(self._timeout, 60.0),
            # The sink retries with its own backoff; the SDK's default waits 15 s and more.
            # Waits before retry n: initial_backoff + increment_base**n, +/- the jitter.
            "retry_policy": ExponentialRetry(
                initial_backoff=0, increment_base=2, retry_total=2, random_jitter_range=1
            ),
            "logger": _http_log,
        }
        if target.connection_string is not None:
            client = ContainerClient.from_connection_string(
                target.connection_string, target.container, **options
            )
            return client, None
        # Not None: AzureTarget requires it when there is no connection string.
        account_url = target.account_url or ""
        if target.sas_token is not None:
            sas = AzureSasCredential(target.sas_token.removeprefix("?"))
            return ContainerClient(account_url, target.container, sas, **options), None
        if target.account_key is not None:
            # A string credential is the account's shared key; the SDK reads the account's
            # name from the URL (and refuses a URL it cannot read it from).
            client = ContainerClient(account_url, target.container, target.account_key, **options)
            return client, None
        if not account_url.lower().startswith("https://"):
            raise ValueError("the process's Azure identity needs an https:// account_url")
        from azure.identity.aio import DefaultAzureCredential  # only this path needs it

        credential = DefaultAzureCredential()
        client = ContainerClient(account_url, target.container, credential, **options)
        return client, credential

    def _content_settings(self, content: tuple[str, str | None], md5: bytes) -> ContentSettings:
        content_type, content_encoding = content
        return ContentSettings(
            content_type=content_type,
            content_encoding=content_encoding,
            content_md5=bytearray(md5),
        )

    def _scope(self) -> dict[str, Any]:
        scope = self.target.encryption_scope
        return {"encryption_scope": scope} if scope is not None else {}

    # Small files: one Put Blob, atomic on the server.
    async def _put_single(
        self,
        blob: BlobClient,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        metadata: Mapping[str, str],
        sha256_hex: str,
        content: tuple[str, str | None],
    ) -> None:
        whole = _Digests()
        data, md5 = await _read(read_part, 0, size, whole, key) if size else (b"", _MD5_EMPTY)
        _check_whole(key, size, size, whole.sha256.hexdigest(), sha256_hex)
        await self._call(
            "PutBlob",
            key,
            blob.upload_blob(
                data,
                blob_type=BlobType.BLOCKBLOB,
                length=size,
                metadata=dict(metadata),
                overwrite=True,
                content_settings=self._content_settings(content, md5),
                max_concurrency=1,
                # Passed through to the REST call: Content-MD5, checked by the service.
                transactional_content_md5=md5,
                **self._scope(),
            ),
        )

    # Large files: staged blocks, made visible by Put Block List only.
    async def _put_blocks(
        self,
        blob: BlobClient,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        metadata: Mapping[str, str],
        sha256_hex: str,
        content: tuple[str, str | None],
    ) -> None:
        block_size = max(self._block_size, math.ceil(size / MAX_BLOCKS))
        count = math.ceil(size / block_size)
        whole = _Digests()
        pending: asyncio.Task[tuple[bytes, bytes]] | None = None

        def read_ahead(index: int) -> asyncio.Task[tuple[bytes, bytes]]:
            offset = index * block_size
            length = min(block_size, size - offset)
            return asyncio.create_task(_read(read_part, offset, length, whole, key))

        try:
            # Step 1. Stage the blocks in order, reading the next one while this one travels.
            # Each read starts after the previous one ended, so ``whole`` sees the content in
            # order.
            blocks: list[BlobBlock] = []
            reading = pending = read_ahead(0)
            for index in range(count):
                data, md5 = await reading
                pending = None
                if index + 1 < count:
                    reading = pending = read_ahead(index + 1)
                block_id = f"{index:05d}-{md5.hex()}"
                await self._call(
                    "PutBlock",
                    key,
                    blob.stage_block(
                        block_id,
                        data,
                        len(data),
                        transactional_content_md5=md5,
                        **self._scope(),
                    ),
                )
                blocks.append(BlobBlock(block_id))
            # Step 2. The bytes sent must be the bytes the caller described.
            _check_whole(key, size, size, whole.sha256.hexdigest(), sha256_hex)
            # Step 3. Commit: only now does the new content appear, whole, with its metadata.
            await self._call(
                "PutBlockList",
                key,
                blob.commit_block_list(
                    blocks,
                    content_settings=self._content_settings(content, whole.md5.digest()),
                    metadata=dict(metadata),
                    **self._scope(),
                ),
            )
        except BaseException:
            if pending is not None:
                # The read runs in a thread that cannot be cancelled: let it finish, so that
                # read_part is no longer running once put has returned.
                with contextlib.suppress(Exception):
                    await pending
            raise

    async def _call(self, operation: str, key: str, request: Awaitable[_T]) -> _T:
        """Await one client request; its failure comes out as ``StorageError``."""
        try:
            return await request
        except (AzureError, aiohttp.ClientError, OSError, ValueError) as exc:
            # TimeoutError is an OSError. Anything else is a bug, not the storage: it goes on.
            error = self._error(operation, key, exc)
        # Outside the except block: the SDK's exception (which holds the request, SAS in its
        # URL included) is not chained; the message keeps what it said.
        raise error

    def _error(self, operation: str, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            # Set by the storage SDK's error handler on every error it raises.
            code = _code_text(getattr(exc, "error_code", None)) or "Unknown"
            status = exc.status_code
            if code in _TRANSIENT_CODES:
                permanent = False
            elif code in _PERMANENT_CODES or _is_key_problem(code):
                permanent = True
            else:
                permanent = status in _PERMANENT_STATUSES
            first = self._scrub(_first_line(exc.message))
            return StorageError(
                f"{operation} failed: {code} (HTTP {status}) {first}".rstrip(),
                bucket=self.target.container,
                key=key,
                permanent=permanent,
                code=code,
                provider=PROVIDER,
            )
        # No answer from the service: connection refused or reset, DNS, TLS, a timeout (all
        # may pass); or a credential that cannot sign or get a token, or a bad argument
        # (configuration: they will not).
        permanent = isinstance(exc, ClientAuthenticationError | ValueError)
        return StorageError(
            f"{operation} failed: {self._describe(exc)}",
            bucket=self.target.container,
            key=key,
            permanent=permanent,
            code=type(exc).__name__,
            provider=PROVIDER,
        )

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {self._scrub(_first_line(str(exc)))}".rstrip(": ")

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _timed_out(self, key: str) -> StorageError:
        return StorageError(
            f"gave up after {self._timeout:g}s",
            bucket=self.target.container,
            key=key,
            permanent=False,
            code="Timeout",
            provider=PROVIDER,
        )


_MD5_EMPTY = hashlib.md5(b"", usedforsecurity=False).digest()


class _Digests:
    """SHA-256 (checked against the caller's) and MD5 (stored on the blob) of the content."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)


async def _read(
    read_part: Callable[[int, int], bytes], offset: int, size: int, whole: _Digests, key: str
) -> tuple[bytes, bytes]:
    # A worker thread: a block is megabytes read from a spool file and hashed three times,
    # too long for the event loop.
    return await asyncio.to_thread(_read_block, read_part, offset, size, whole, key)


def _read_block(
    read_part: Callable[[int, int], bytes], offset: int, size: int, whole: _Digests, key: str
) -> tuple[bytes, bytes]:
    data = read_part(offset, size)
    if len(data) != size:
        raise ValueError(
            f"read_part gave {len(data)} bytes at offset {offset} of {key!r}, expected {size}"
        )
    whole.sha256.update(data)
    whole.md5.update(data)
    return data, hashlib.md5(data, usedforsecurity=False).digest()


def _check_whole(key: str, size: int, got: int, digest_hex: str, sha256_hex: str) -> None:
    if got != size or digest_hex != sha256_hex.lower():
        raise ValueError(
            f"content of {key!r} does not match its description: {got} bytes with SHA-256 "
            f"{digest_hex}, expected {size} bytes with SHA-256 {sha256_hex}"
        )


def _code_text(code: object) -> str:
    """The SDK gives error codes as ``StorageErrorCode`` members or as plain strings."""
    if code is None:
        return ""
    value = getattr(code, "value", code)
    return str(value)


def _is_key_problem(code: str) -> bool:
    """An encryption scope unknown or disabled, or its customer-managed key (Key Vault)
    unusable: the customer must act."""
    return "EncryptionScope" in code or code.startswith("KeyVault")


def _first_line(text: str | None) -> str:
    return (text or "").strip().partition("\n")[0].strip()
