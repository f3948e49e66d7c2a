"""What the storage sink needs from a cloud provider: write one object, whole or not at all.

Each provider module (``s3``, ``azure``, ``gcs``) implements :class:`ObjectWriter` for one
destination (bucket or container and its credentials); ``make_writer`` builds the one a
destination names. The sink calls ``put`` once per finished
file and acknowledges the file's events only after ``put`` returned; ``put`` raises
:class:`StorageError` otherwise.

Contract of ``put``:

* The object named ``key`` becomes visible complete or not at all: a multi-part upload that
  fails is aborted (best effort), never committed half-written.
* Writing the same key again replaces the object (a replay after a crash overwrites).
* ``read_part(offset, size)`` returns ``size`` bytes of the content from ``offset`` (fewer only
  at the end); it may be called from worker threads and more than once for the same range (a
  retried part).
* ``metadata`` is stored as the object's user metadata (lowercase ASCII names, no ``-``);
  ``sha256_hex`` is the digest of the whole content, verified by the server where the provider
  supports it.
* Errors: :class:`StorageError` with ``permanent=True`` when retrying cannot help before a person
  acts (denied, missing bucket or container, bad credentials, unusable key), else ``False``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from pydantic import SecretStr

from connectors.errors import ConnectorsError
from connectors.storage.config import StorageDestination, StorageSettings


class StorageError(ConnectorsError):
    """Writing an object failed; ``permanent`` says whether retrying can help.

    ``str()`` names the provider, bucket and key, the operation and the server's error code and
    message: never a credential. ``retriable`` is ``not permanent`` (the project's flag).
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str,
        key: str | None = None,
        permanent: bool,
        code: str | None = None,
        provider: str = "s3",
    ) -> None:
        self.provider = provider
        self.bucket = bucket
        self.key = key
        self.permanent = permanent
        self.retriable = not permanent
        self.code = code
        where = f"{provider}://{bucket}/{key}" if key is not None else f"{provider}://{bucket}"
        super().__init__(f"{where}: {message}")


class ObjectWriter(Protocol):
    """One destination's object store, as the storage sink uses it."""

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
        """Write ``size`` bytes read through ``read_part`` as ``key`` (see the module)."""
        ...

    async def close(self) -> None:
        """Release connections; the writer is not used afterwards."""
        ...


WriterFactory = Callable[[StorageDestination, StorageSettings], ObjectWriter]
"""How the sink gets a destination's writer (``make_writer``; tests pass a fake)."""


def make_writer(dest: StorageDestination, settings: StorageSettings) -> ObjectWriter:
    """The writer for a destination's provider (raises StorageError if it is refused)."""
    if dest.uses_plain_http() and not settings.allow_http:
        raise StorageError(
            "plain http endpoint refused; set SIEM_EXPORT_STORAGE__ALLOW_HTTP=true to allow it",
            bucket=dest.bucket,
            permanent=True,
            provider=dest.provider,
        )
    if dest.provider == "s3":
        from connectors.storage.s3 import S3Target, S3Writer

        target = S3Target(
            bucket=dest.bucket,
            endpoint_url=dest.endpoint_url,
            region=dest.region,
            path_style=dest.path_style,
            kms_key_id=dest.kms_key_id,
            role_arn=dest.role_arn,
            external_id=dest.external_id,
        )
        return S3Writer(
            target,
            multipart_threshold=settings.multipart_threshold_bytes,
            part_size=settings.part_size_bytes,
            timeout=settings.upload_timeout_seconds,
            # One connection per upload slot (aiobotocore's default pool has 10).
            max_pool_connections=max(
                settings.max_concurrent_uploads, settings.drain_concurrent_uploads
            ),
        )
    if dest.provider == "azure":
        from connectors.storage.azure import AzureBlobWriter, AzureTarget

        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return AzureBlobWriter(
            AzureTarget(
                container=dest.bucket,
                account_url=dest.account_url,
                connection_string=secret(dest.connection_string),
                sas_token=secret(dest.sas_token),
                account_key=secret(dest.account_key),
                encryption_scope=dest.encryption_scope,
            ),
            block_size=settings.part_size_bytes,
            single_put_threshold=settings.multipart_threshold_bytes,
            timeout=settings.upload_timeout_seconds,
        )
    if dest.provider == "gcs":
        from connectors.storage.gcs import GcsTarget, GcsWriter

        chunk = settings.part_size_bytes - settings.part_size_bytes % (256 * 1024)  # GCS's unit
        return GcsWriter(
            GcsTarget(
                bucket=dest.bucket,
                kms_key_name=dest.kms_key_name,
                credentials_file=dest.credentials_file,
                api_root=dest.endpoint_url,
            ),
            chunk_size=chunk,
            resumable_threshold=settings.multipart_threshold_bytes,
            timeout=settings.upload_timeout_seconds,
        )
    raise StorageError(
        f"provider {dest.provider} is not available in this build",
        bucket=dest.bucket,
        permanent=True,
        provider=dest.provider,
    )
