"""The storage sink: each tenant's events become files in the tenant's bucket, on a schedule.

Who calls it: the delivery engine (``streams.engine``), through ``siem-export run storage``.
The engine hands over one tenant's events of one partition at a time, in order; the sink adds
them to that (tenant, partition)'s open file (``connectors.storage.files``) and answers
``SendResult(pending=future)``: the events are in its custody, and the future resolves when
the object holding them is durably written (or fails, and the engine reads them again from
Kafka). Offsets are therefore committed only after the write succeeded.

A file's life, numbered:

1. Opened by the first event of a (tenant, partition) lane; a timer is set for ``interval``.
2. Closed by whichever comes first: ``max_events`` events, ``max_bytes`` uncompressed bytes
   (checked after every event: a batch that crosses the limit is split with
   ``SendResult.settled``), the interval (the timer fires even if no event comes), the
   engine's ``flush`` (partitions revoked, or shutdown), or a change of the tenant's
   destination.
3. Uploaded under its replay-stable key (``connectors.storage.naming``) with its metadata and
   SHA-256 by the destination's writer (S3, Azure Blob or GCS; ``connectors.storage.writer``),
   at most ``max_concurrent_uploads`` at a time. The writer makes the object visible whole or
   not at all.
4. On success the file's future resolves: the engine acknowledges its events in order. On
   failure it fails with a ``SinkError`` (permanent problems such as a denied or missing
   bucket are not retriable and raise the health lifecycle's alerts at once): the engine parks
   the lane at the file's first event and reads everything from there again after its backoff,
   so the next attempt rebuilds the same file under the same key. The lane's open file is
   dropped too (its events come again), and until the failed file's events come back, the
   lane's newer events are refused, so no object ever starts past a gap.

Replays and duplicates: a file rebuilt from its first offset gets the same key and replaces
the earlier object. A duplicate object remains possible only when (a) a crash or rebalance
happened after an upload and before the commit that followed it, and (b) the rebuilt file
ends at a different event than the first (interval-closed files; ``max_events``/``max_bytes``
close at the same event again): the later objects of the first run then overlap the rebuilt
one. The engine commits every ``commit_interval_seconds`` (2 s by default): the window is that
long.

Memory: an open file keeps at most ``spill_threshold_bytes`` in memory and spills the rest to
an anonymous temporary file; the engine keeps only a timestamp per event in custody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from pydantic import SecretStr

from connectors.destinations import Destinations
from connectors.health import DestinationHealth
from connectors.storage.config import StorageDestination, StorageSettings
from connectors.storage.files import FileBuilder, FinishedFile
from connectors.storage.naming import object_key
from connectors.storage.writer import ObjectWriter, StorageError
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from streams.event import parse_timestamp

_log = logging.getLogger(__name__)

METHOD = "storage"
_UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

WriterFactory = Callable[[StorageDestination, StorageSettings], ObjectWriter]
FileKey = tuple[str, int]  # (tenant, partition)


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


@dataclass(eq=False)
class _OpenFile:
    """A file being assembled for one (tenant, partition) lane."""

    tenant_id: str
    partition: int
    dest: StorageDestination
    builder: FileBuilder
    future: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None


class StorageMetrics:
    """The connector's own series (the engine counts deliveries and latency)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.objects = Counter(
            "siem_export_storage_objects",
            "Objects written, by provider and result (ok, failed).",
            ["provider", "result"],
            registry=registry,
        )
        self.bytes = Counter(
            "siem_export_storage_object_bytes",
            "Bytes of objects written (compressed, as stored).",
            ["provider"],
            registry=registry,
        )
        self.seconds = Histogram(
            "siem_export_storage_upload_seconds",
            "Time to write one object.",
            ["provider"],
            buckets=_UPLOAD_BUCKETS,
            registry=registry,
        )
        self.open = Gauge(
            "siem_export_storage_open_files",
            "Files being assembled.",
            registry=registry,
        )
        self.uploading = Gauge(
            "siem_export_storage_uploads_in_progress",
            "Files closed and being written (or waiting for an upload slot).",
            registry=registry,
        )
        self.closed = Counter(
            "siem_export_storage_files_closed",
            "Files closed, by why: events, bytes, interval, flush, reconfigured.",
            ["reason"],
            registry=registry,
        )
        self.unrouted = Counter(
            "siem_export_storage_unrouted_events",
            "Events of tenants without a storage destination (acknowledged, not written).",
            registry=registry,
        )


class StorageSink:
    """Writes each tenant's events as files to its bucket (see the module docstring)."""

    name = METHOD
    max_batch = 1000

    def __init__(
        self,
        settings: StorageSettings,
        destinations: Destinations,
        health: DestinationHealth,
        *,
        writer_factory: WriterFactory = make_writer,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = StorageMetrics(registry or REGISTRY)
        self._destinations = destinations
        self._writer_factory = writer_factory
        self._clock = clock
        self._open: dict[FileKey, _OpenFile] = {}
        self._writers: dict[StorageDestination, ObjectWriter] = {}
        self._resend_from: dict[FileKey, int] = {}
        self._uploads: dict[asyncio.Task[None], FileKey] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_uploads)

    # --- configuration --------------------------------------------------------------------

    def update_destinations(self, old: Destinations, new: Destinations) -> None:
        """The destinations file changed: files of tenants whose bucket changed are closed
        (and written where their events were meant to go); changed ones start healthy."""
        self._destinations = new
        for key in [k for k, f in self._open.items() if new.storage_for(k[0]) != f.dest]:
            self._close(key, "reconfigured")
        for tenant_id in {k[0] for k in self._resend_from}:
            before, after = old.storage_for(tenant_id), new.storage_for(tenant_id)
            if before != after and after is not None:
                self.health.reconfigured(tenant_id, after.endpoint())

    # --- delivery -------------------------------------------------------------------------

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        dest = self._destinations.storage_for(tenant_id)
        if dest is None:
            self.metrics.unrouted.inc(len(batch))
            return None
        endpoint = dest.endpoint()
        if self.health.is_disabled(tenant_id, endpoint):
            raise SinkError(
                f"storage destination {endpoint} is disabled; change the tenant's destination "
                "to re-enable it",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        key = (tenant_id, batch[0].partition)
        resend_from = self._resend_from.get(key)
        if resend_from is not None:
            if batch[0].offset > resend_from:
                # Offered before an earlier file of the lane failed (the engine drops that
                # answer): starting a file here would leave a gap before it.
                raise SinkError(
                    f"{endpoint}: an earlier file of the tenant failed; waiting for its events",
                    retriable=True,
                )
            del self._resend_from[key]
        current = self._open.get(key)
        if current is not None and current.dest != dest:
            self._close(key, "reconfigured")
            current = None
        if current is None:
            current = self._start(key, dest)
        builder = current.builder
        taken = 0
        try:
            for env in batch:
                # The key's date and hour are the first event's own time (not the record's):
                # a replayed backlog lands in the partitions of when things happened.
                when = parse_timestamp(env.event["timestamp"]) if not builder.count else 0
                builder.add(env.json, env.offset, when)
                taken += 1
                if builder.count >= dest.max_events or builder.uncompressed_bytes >= dest.max_bytes:
                    break
        except OSError as exc:
            # The local buffer (spill file) failed: this file cannot be completed.
            error = SinkError(f"{endpoint}: cannot buffer the file locally: {exc}", retriable=True)
            self._drop(key, error)
            raise error from None
        future = current.future
        reason = self._due_reason(current)
        if reason is not None:
            self._close(key, reason)
        return SendResult(pending=future, settled=None if taken == len(batch) else taken)

    def _due_reason(self, current: _OpenFile) -> str | None:
        builder, dest = current.builder, current.dest
        if builder.count >= dest.max_events:
            return "events"
        if builder.uncompressed_bytes >= dest.max_bytes:
            return "bytes"
        if builder.should_close(self._clock(), dest.max_events, dest.max_bytes, dest.interval):
            return "interval"
        return None

    def _start(self, key: FileKey, dest: StorageDestination) -> _OpenFile:
        loop = asyncio.get_running_loop()
        current = _OpenFile(
            tenant_id=key[0],
            partition=key[1],
            dest=dest,
            builder=FileBuilder.for_destination(dest, self.settings, clock=self._clock),
            future=loop.create_future(),
        )
        current.timer = loop.call_later(dest.interval, self._interval_due, key, current)
        self._open[key] = current
        self.metrics.open.inc()
        return current

    def _interval_due(self, key: FileKey, current: _OpenFile) -> None:
        if self._open.get(key) is current:
            self._close(key, "interval")

    def _close(self, key: FileKey, reason: str) -> None:
        """Close the lane's open file and start writing it."""
        current = self._open.pop(key)
        self.metrics.open.dec()
        if current.timer is not None:
            current.timer.cancel()
        if current.builder.count == 0:
            current.builder.discard()
            if not current.future.done():
                current.future.set_result(None)
            return
        self.metrics.closed.labels(reason).inc()
        self.metrics.uploading.inc()
        task = asyncio.get_running_loop().create_task(
            self._upload(key, current), name=f"storage-upload {current.dest.provider}"
        )
        self._uploads[task] = key
        task.add_done_callback(lambda t: self._uploads.pop(t, None))

    def _drop(self, key: FileKey, error: SinkError) -> None:
        """Give up the lane's open file: its events will come again from Kafka."""
        current = self._open.pop(key, None)
        if current is None:
            return
        self.metrics.open.dec()
        if current.timer is not None:
            current.timer.cancel()
        current.builder.discard()
        _settle(current.future, error)

    # --- writing --------------------------------------------------------------------------

    async def _upload(self, key: FileKey, current: _OpenFile) -> None:
        tenant_id, dest = current.tenant_id, current.dest
        endpoint = dest.endpoint()
        finished: FinishedFile | None = None
        try:
            finished = current.builder.finish()
            name = object_key(
                dest,
                tenant_id,
                finished.first_timestamp_ms,
                current.partition,
                finished.first_offset,
                dest.extension,
            )
            async with self._slots:
                began = time.perf_counter()
                writer = self._writer(dest)
                await asyncio.wait_for(
                    writer.put(
                        name,
                        finished.size,
                        finished.read_part,
                        finished.metadata(),
                        finished.content_type,
                        None,
                        finished.sha256,
                    ),
                    self.settings.upload_timeout_seconds,
                )
                self.metrics.seconds.labels(dest.provider).observe(time.perf_counter() - began)
        except asyncio.CancelledError:
            _settle(current.future, SinkError(f"{endpoint}: upload cancelled", retriable=True))
            raise
        except StorageError as exc:
            self._upload_failed(key, current, str(exc), permanent=exc.permanent)
        except TimeoutError:
            reason = f"no answer within {self.settings.upload_timeout_seconds:g} s"
            self._upload_failed(key, current, f"{endpoint}: {reason}", permanent=False)
        except OSError as exc:  # finishing the local file (disk)
            self._upload_failed(key, current, f"{endpoint}: local file: {exc}", permanent=False)
        else:
            self.metrics.objects.labels(dest.provider, "ok").inc()
            self.metrics.bytes.labels(dest.provider).inc(finished.size)
            self.health.success(tenant_id, endpoint)
            _log.debug(
                "Object written.",
                extra={"tenant": tenant_id, "key": name, "events": finished.count},
            )
            if not current.future.done():
                current.future.set_result(None)
        finally:
            self.metrics.uploading.dec()
            if finished is not None:
                finished.release()
            else:
                current.builder.discard()

    def _upload_failed(
        self, key: FileKey, current: _OpenFile, reason: str, *, permanent: bool
    ) -> None:
        tenant_id, dest = current.tenant_id, current.dest
        self.metrics.objects.labels(dest.provider, "failed").inc()
        state = self.health.failure(tenant_id, dest.endpoint(), reason, misconfigured=permanent)
        if state == "disabled":
            error = SinkError(
                f"{reason} (destination disabled)",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        else:
            error = SinkError(reason, retriable=not permanent)
        first = current.builder.first_offset
        if first is not None:
            self._resend_from[key] = min(first, self._resend_from.get(key, first))
        # The lane reads everything from this file's first event again (this future first, so
        # the engine parks there); a newer open file would hold events after the gap.
        _settle(current.future, error)
        self._drop(key, error)

    def _writer(self, dest: StorageDestination) -> ObjectWriter:
        writer = self._writers.get(dest)
        if writer is None:
            writer = self._writers[dest] = self._writer_factory(dest, self.settings)
        return writer

    # --- engine hooks ---------------------------------------------------------------------

    def flush(self, partitions: list[int] | None) -> None:
        """Close and write now the open files of these partitions (None: all)."""
        for key in [k for k in self._open if partitions is None or k[1] in partitions]:
            self._close(key, "flush")

    def forget(self, partitions: list[int]) -> None:
        """These partitions are someone else's now: drop their open files, stop their uploads."""
        error = SinkError("partition revoked", retriable=True)
        for key in [k for k in self._open if k[1] in partitions]:
            self._drop(key, error)
        for key in [k for k in self._resend_from if k[1] in partitions]:
            del self._resend_from[key]
        # Uploads still running for them are cancelled: a late write could replace a newer
        # object of the new owner under the same key.
        for task, key in list(self._uploads.items()):
            if key[1] in partitions:
                task.cancel()

    async def close(self) -> None:
        error = SinkError("connector stopping", retriable=True)
        for key in list(self._open):
            self._drop(key, error)
        for task in list(self._uploads):
            task.cancel()
        if self._uploads:
            await asyncio.gather(*self._uploads, return_exceptions=True)
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                await writer.close()
        self._writers.clear()


def _settle(future: asyncio.Future[None], error: SinkError) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: the engine learns of it through its callback
