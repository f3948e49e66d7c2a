"""Writes finished export files to Amazon S3 or an S3-compatible server, whole or not at all.

Who calls it: the storage sink, once per closed file, through ``S3Writer.put`` (the
``ObjectWriter`` of ``connectors.storage.writer``); it acknowledges the file's events only after
``put`` has returned. One ``S3Writer`` serves one destination
(``S3Target``) and keeps one client with its connection pool for its whole life; ``close()``
releases it.

What ``put`` guarantees when it returns:

1. The object exists under ``key`` with exactly ``size`` bytes whose SHA-256 is ``sha256_hex``
   (checked here over the bytes actually sent, before the object is made visible), the user
   metadata, content type and encoding given, and server-side encryption: SSE-S3 (``AES256``)
   or, with ``kms_key_id``, SSE-KMS with that key. No object is ever written unencrypted by
   this module, whatever the bucket's default.
2. The server verified the bytes it stored: each request body carries its SHA-256
   (``x-amz-checksum-sha256``; per part for a multipart upload, whose object then has a
   composite checksum, ``<base64>-<parts>``), so a body damaged in transit is refused
   (``BadDigest``) instead of stored. With ``checksums=False``, for servers that reject those
   headers, a Content-MD5 per body does the same job.
3. Nobody sees a partial object. Small files (up to ``multipart_threshold``) go in one
   PutObject, which S3 applies atomically. Larger ones go as a multipart upload; S3 shows the
   object only when CompleteMultipartUpload succeeds. On any failure before that (an error, the
   ``timeout``, a cancelled task, ``read_part`` raising) the upload is aborted, best effort:
   if the abort itself cannot reach the server, the parts stay as an invisible incomplete
   upload until a bucket lifecycle rule (``AbortIncompleteMultipartUpload``) removes them.
4. Writing the same key again replaces the object whole: a replay after a crash overwrites
   instead of adding a copy, and a reader sees the old or the new content, never a mix.

Memory: a multipart upload holds at most two parts (the one being sent and the next one,
read ahead in a worker thread through ``read_part(offset, size)``). Bodies of up to 256 KiB are
read on the event loop instead (a thread hop costs more than the read). The client keeps up to
``max_pool_connections`` connections (one per upload the sink runs at once).

When ``put`` fails it raises ``StorageError`` with ``permanent`` set when retrying cannot help
until someone changes the configuration (access denied, missing bucket, unknown or wrong
credentials, KMS key missing or disabled, an assumed role refused) and cleared for what may
pass (throttling, 5xx, timeouts, connection errors, a body damaged in transit). An exception
raised by ``read_part`` itself comes out unchanged, after the abort, and so does the
``ValueError`` raised when the bytes read do not match ``size`` and ``sha256_hex`` (nothing is
made visible then either).

Credentials come from aiobotocore's standard chain (environment, shared profile, web identity,
container and instance metadata) of the session given or a new one. With ``role_arn`` that chain
is only the source identity: the writer assumes the role (``RoleSessionName`` ``siem-export``,
``ExternalId`` when set, one hour) and signs every S3 request with the role's temporary
credentials, which refresh themselves before they expire (aiobotocore's refreshable
credentials: an advisory refresh from 15 minutes before expiry, a mandatory one from 10).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import aiobotocore
import aiohttp
import botocore
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioDeferredRefreshableCredentials
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)

from connectors.storage.writer import ObjectWriter, StorageError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef
    from types_aiobotocore_sts import STSClient

__all__ = ["MIB", "S3Target", "S3Writer", "StorageError"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB  # S3's smallest part, except the last one
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
ROLE_SESSION_NAME = "siem-export"
ROLE_DURATION_SECONDS = 3600
_INLINE_READ_BYTES = 256 * 1024  # read on the event loop up to this size, else in a thread
# A fixed User-Agent: botocore's default one is assembled from a dozen parts twice per request,
# about 7% of the connector's CPU per small object (profiled with 5,000 files at shutdown).
_USER_AGENT = f"siem-export aiobotocore/{aiobotocore.__version__} botocore/{botocore.__version__}"

# fmt: off
# Error codes that say the configuration (or this code) is wrong: retrying cannot help.
_PERMANENT_CODES = frozenset({
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "AuthorizationHeaderMalformed",
    "EntityTooLarge", "EntityTooSmall", "IllegalLocationConstraintException", "InvalidAccessKeyId",
    "InvalidArgument", "InvalidBucketName", "InvalidClientTokenId", "InvalidPart",
    "InvalidPartOrder", "InvalidRequest", "InvalidToken", "KMS.AccessDeniedException",
    "KMS.DisabledException", "KMS.InvalidKeyUsageException", "KMS.KMSInvalidStateException",
    "KMS.NotFoundException", "MalformedPolicyDocument", "MethodNotAllowed",
    "MissingSecurityHeader", "NoSuchBucket", "NotImplemented", "PermanentRedirect",
    "RegionDisabledException", "SignatureDoesNotMatch", "UnrecognizedClientException",
    "ValidationError",
})
# Codes that may pass, though some come with a status read as permanent (400, 403, 404).
_TRANSIENT_CODES = frozenset({
    "BadDigest", "ExpiredToken", "IDPCommunicationError", "IncompleteBody", "InternalError",
    "KMS.ThrottlingException", "NoSuchUpload", "OperationAborted", "PriorRequestNotComplete",
    "RequestExpired", "RequestTimeTooSkewed", "RequestTimeout", "ServiceUnavailable", "SlowDown",
    "Throttling", "ThrottlingException", "XAmzContentSHA256Mismatch",
})
# fmt: on
_PERMANENT_STATUSES = frozenset({301, 400, 401, 403, 404, 405, 411, 501})
_CONFIG_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    NoRegionError,
    ProfileNotFound,
    ParamValidationError,
    ValueError,  # also botocore's InvalidRegionError, UnknownEndpointError; a bad endpoint URL
)


@dataclass(frozen=True)
class S3Target:
    """Where and how to write: plain settings, filled from the destination's configuration.

    ``endpoint_url`` and ``path_style`` are for S3-compatible servers (or a VPC endpoint);
    ``region`` None means the session's region. ``kms_key_id`` (key id, ARN or alias) switches
    every object to SSE-KMS. ``role_arn`` (with the customer's ``external_id``) is the role in
    the customer's account to assume.
    """

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    kms_key_id: str | None = None
    role_arn: str | None = None
    external_id: str | None = None


class S3Writer:
    """Puts whole objects into one bucket (see the module docstring for the guarantees).

    ``timeout`` bounds one ``put`` from its first request to its last, retries included; an
    abort after a failure gets its own, shorter bound. ``checksums=False`` is for S3-compatible
    servers that refuse ``x-amz-checksum-*`` headers (AWS and SeaweedFS accept them): bodies
    then carry Content-MD5 instead. ``sts_endpoint_url`` points AssumeRole at another STS
    (None: botocore's own resolution, which honours ``AWS_ENDPOINT_URL_STS``). ``clock`` is the
    wall clock that decides when assumed-role credentials are due for refresh (tests move it).
    """

    def __init__(
        self,
        target: S3Target,
        *,
        multipart_threshold: int = 16 * MIB,
        part_size: int = 8 * MIB,
        timeout: float = 300.0,
        session: AioSession | None = None,
        checksums: bool = True,
        sts_endpoint_url: str | None = None,
        clock: Callable[[], datetime] | None = None,
        max_pool_connections: int = 10,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE}")
        if multipart_threshold < 1:
            raise ValueError("multipart_threshold must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_pool_connections < 1:
            raise ValueError("max_pool_connections must be positive")
        self.target = target
        self._threshold = multipart_threshold
        self._part_size = part_size
        self._timeout = timeout
        self._abort_timeout = min(timeout, 30.0)
        self._session = session if session is not None else AioSession()
        self._checksums = checksums
        self._pool = max_pool_connections
        self._sts_endpoint_url = sts_endpoint_url
        self._clock = clock if clock is not None else _utc_now
        self._stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()
        self._client: S3Client | None = None
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
        """Write ``size`` bytes, read through ``read_part(offset, size)``, as object ``key``."""
        if not key or size < 0:
            raise ValueError("put needs a key and a size >= 0")
        client = await self._get_client(key)
        extra: dict[str, Any] = {
            "Metadata": dict(metadata),
            "ContentType": content_type,
            **self._encryption(),
        }
        if content_encoding is not None:
            extra["ContentEncoding"] = content_encoding
        if size <= self._threshold:
            await self._put_single(client, key, size, read_part, extra, sha256_hex)
        else:
            await self._put_multipart(client, key, size, read_part, extra, sha256_hex)

    async def close(self) -> None:
        """Close the client and its connections; the writer cannot be used afterwards."""
        self._closed = True
        self._client = None
        await self._stack.aclose()

    # Step 1 of both paths: one client per target, made on first use and kept (keep-alive).
    async def _get_client(self, key: str) -> S3Client:
        async with self._client_lock:
            if self._closed:
                raise RuntimeError("S3Writer is closed")
            if self._client is None:
                self._client = await self._call("CreateClient", key, self._open_client())
            return self._client

    async def _open_client(self) -> S3Client:
        target = self.target
        config = AioConfig(
            connect_timeout=min(self._timeout, 10.0),
            read_timeout=min(self._timeout, 60.0),
            retries={"mode": "standard", "total_max_attempts": 3},
            max_pool_connections=self._pool,
            user_agent=_USER_AGENT,
            s3={"addressing_style": "path" if target.path_style else "auto"},
            request_checksum_calculation="when_supported" if self._checksums else "when_required",
            response_checksum_validation="when_supported" if self._checksums else "when_required",
        )
        try:
            session = self._session
            if target.role_arn is not None:
                session = await self._assumed_role_session(target.role_arn, config)
            return await self._stack.enter_async_context(
                session.create_client(
                    "s3", region_name=target.region, endpoint_url=target.endpoint_url, config=config
                )
            )
        except BaseException:
            await self._stack.aclose()
            self._stack = contextlib.AsyncExitStack()
            raise

    async def _assumed_role_session(self, role_arn: str, config: AioConfig) -> AioSession:
        """A session private to this writer whose credentials are the assumed role's.

        The STS client comes from the caller's session (the source identity) and stays open
        for the refreshes. The credentials are fetched on first use, then refreshed by
        aiobotocore before they expire; a refresh that fails while the old ones are still
        valid for 10 minutes is retried on the next request.
        """
        target = self.target
        sts: STSClient = await self._stack.enter_async_context(
            self._session.create_client(
                "sts",
                region_name=target.region,
                endpoint_url=self._sts_endpoint_url,
                config=config,
            )
        )
        params: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": ROLE_SESSION_NAME,
            "DurationSeconds": ROLE_DURATION_SECONDS,
        }
        if target.external_id is not None:
            params["ExternalId"] = target.external_id

        async def assume_role() -> dict[str, str | None]:
            response = await sts.assume_role(**params)
            creds = response["Credentials"]
            _log.info(
                "Assumed the destination's role",
                extra={"role_arn": role_arn, "expires": creds["Expiration"].isoformat()},
            )
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
                "account_id": None,
            }

        credentials = AioDeferredRefreshableCredentials(
            refresh_using=assume_role, method="assume-role", time_fetcher=self._clock
        )
        session = AioSession()
        # botocore's way to give a session refreshable credentials: a session-level attribute
        # (what its own AssumeRole provider ends up setting). The session is private, so no
        # other client of the caller's session signs with the customer's role.
        session._credentials = credentials  # type: ignore[attr-defined]
        return session

    def _encryption(self) -> dict[str, Any]:
        if self.target.kms_key_id is not None:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.target.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def _body_checksum(self, data: bytes, sha256: bytes | None = None) -> dict[str, Any]:
        """The header the server checks the body with; ``sha256``: its digest, if known."""
        if self._checksums:
            return {"ChecksumSHA256": _b64(sha256 or hashlib.sha256(data).digest())}
        return {"ContentMD5": _b64(hashlib.md5(data, usedforsecurity=False).digest())}

    # Small files: one PutObject, atomic on the server.
    async def _put_single(
        self,
        client: S3Client,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        extra: dict[str, Any],
        sha256_hex: str,
    ) -> None:
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                data = await _read(read_part, 0, size) if size else b""
                digest = hashlib.sha256(data).digest()
                _check_whole(key, size, len(data), digest.hex(), sha256_hex)
                await self._call(
                    "PutObject",
                    key,
                    client.put_object(
                        Bucket=self.target.bucket,
                        Key=key,
                        Body=data,
                        **extra,
                        **self._body_checksum(data, digest),
                    ),
                )
        except TimeoutError as exc:
            if deadline.expired():
                raise self._timed_out(key) from exc
            raise

    # Large files: multipart upload, made visible by CompleteMultipartUpload only.
    async def _put_multipart(
        self,
        client: S3Client,
        key: str,
        size: int,
        read_part: Callable[[int, int], bytes],
        extra: dict[str, Any],
        sha256_hex: str,
    ) -> None:
        bucket = self.target.bucket
        part_size = max(self._part_size, math.ceil(size / MAX_PARTS))
        count = math.ceil(size / part_size)
        upload_id: str | None = None
        pending: asyncio.Task[bytes] | None = None
        deadline = asyncio.timeout(self._timeout)

        def read_ahead(number: int) -> asyncio.Task[bytes]:
            offset = (number - 1) * part_size
            return asyncio.create_task(_read(read_part, offset, min(part_size, size - offset)))

        try:
            async with deadline:
                # Step 1. Open the upload; it carries the encryption, metadata and checksum kind.
                if self._checksums:
                    extra = {**extra, "ChecksumAlgorithm": "SHA256"}
                created = await self._call(
                    "CreateMultipartUpload",
                    key,
                    client.create_multipart_upload(Bucket=bucket, Key=key, **extra),
                )
                upload_id = created["UploadId"]
                # Step 2. Send the parts in order, reading the next one while this one travels.
                whole = hashlib.sha256()
                parts: list[CompletedPartTypeDef] = []
                reading = pending = read_ahead(1)
                for number in range(1, count + 1):
                    data = await reading
                    pending = None
                    if number < count:
                        reading = pending = read_ahead(number + 1)
                    expected = min(part_size, size - (number - 1) * part_size)
                    if len(data) != expected:
                        raise ValueError(
                            f"read_part gave {len(data)} bytes for part {number} of {key!r}, "
                            f"expected {expected}"
                        )
                    whole.update(data)
                    checksum = self._body_checksum(data)
                    uploaded = await self._call(
                        "UploadPart",
                        key,
                        client.upload_part(
                            Bucket=bucket,
                            Key=key,
                            UploadId=upload_id,
                            PartNumber=number,
                            Body=data,
                            **checksum,
                        ),
                    )
                    part: CompletedPartTypeDef = {"PartNumber": number, "ETag": uploaded["ETag"]}
                    if "ChecksumSHA256" in checksum:
                        part["ChecksumSHA256"] = checksum["ChecksumSHA256"]
                    parts.append(part)
                # Step 3. The bytes sent must be the bytes the caller described.
                _check_whole(key, size, size, whole.hexdigest(), sha256_hex)
                # Step 4. Complete: only now does the object appear, whole.
                await self._call(
                    "CompleteMultipartUpload",
                    key,
                    client.complete_multipart_upload(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    ),
                )
        except BaseException as exc:
            if pending is not None:
                # The read runs in a thread that cannot be cancelled: let it finish, so that
                # read_part is no longer running once put has returned.
                with contextlib.suppress(Exception):
                    await pending
            if upload_id is not None:
                await self._abort(client, key, upload_id)
            if isinstance(exc, TimeoutError) and deadline.expired():
                raise self._timed_out(key) from exc
            raise

    async def _abort(self, client: S3Client, key: str, upload_id: str) -> None:
        """Drop an unfinished upload's parts, best effort and bounded in time."""
        try:
            async with asyncio.timeout(self._abort_timeout):
                await client.abort_multipart_upload(
                    Bucket=self.target.bucket, Key=key, UploadId=upload_id
                )
        except Exception as exc:
            if isinstance(exc, ClientError) and _code(exc) == "NoSuchUpload":
                return  # already gone (or completed after all): nothing is left over
            _log.warning(
                "Could not abort an unfinished multipart upload; its parts stay invisible until "
                "the bucket's AbortIncompleteMultipartUpload lifecycle rule removes them",
                extra={
                    "bucket": self.target.bucket,
                    "key": key,
                    "upload_id": upload_id,
                    "reason": f"{type(exc).__name__}: {exc}",
                },
            )

    async def _call(self, operation: str, key: str, request: Awaitable[_T]) -> _T:
        """Await one client request; its failure comes out as ``StorageError``."""
        try:
            return await request
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, ValueError) as exc:
            # TimeoutError is an OSError. Anything else is a bug, not the storage: it goes on.
            raise self._error(operation, key, exc) from exc

    def _error(self, operation: str, key: str, exc: Exception) -> StorageError:
        bucket = self.target.bucket
        if isinstance(exc, ClientError):
            code = _code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = exc.response.get("Error", {}).get("Message", "")
            if code in _TRANSIENT_CODES:
                permanent = False
            elif code in _PERMANENT_CODES:
                permanent = True
            else:
                permanent = status in _PERMANENT_STATUSES
            failed = exc.operation_name or operation  # AssumeRole, when signing needed it
            return StorageError(
                f"{failed} failed: {code} (HTTP {status}) {message}".rstrip(),
                bucket=bucket,
                key=key,
                permanent=permanent,
                code=code,
            )
        # Missing credentials, a bad region, endpoint or parameter: configuration. Everything
        # else (connection refused or reset, timeouts, DNS, TLS) may pass.
        permanent = isinstance(exc, _CONFIG_ERRORS)
        return StorageError(
            f"{operation} failed: {type(exc).__name__}: {exc}",
            bucket=bucket,
            key=key,
            permanent=permanent,
            code=type(exc).__name__,
        )

    def _timed_out(self, key: str) -> StorageError:
        return StorageError(
            f"gave up after {self._timeout:g}s",
            bucket=self.target.bucket,
            key=key,
            permanent=False,
            code="Timeout",
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


async def _read(read_part: Callable[[int, int], bytes], offset: int, size: int) -> bytes:
    if size <= _INLINE_READ_BYTES:
        # A slice of memory or a pread from the page cache: a thread hop would cost more (with
        # thousands of small files at shutdown, the hops were a visible share of the drain).
        return read_part(offset, size)
    # A worker thread: a part is megabytes read from a spool file, too long for the loop.
    return await asyncio.to_thread(read_part, offset, size)


def _check_whole(key: str, size: int, got: int, digest_hex: str, sha256_hex: str) -> None:
    if got != size or digest_hex != sha256_hex.lower():
        raise ValueError(
            f"content of {key!r} does not match its description: {got} bytes with SHA-256 "
            f"{digest_hex}, expected {size} bytes with SHA-256 {sha256_hex}"
        )


def _as_object_writer(writer: S3Writer) -> ObjectWriter:
    return writer  # mypy checks here that S3Writer is what the storage sink takes
