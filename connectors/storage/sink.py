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
3. Queued (``connectors.storage.uploads``), then uploaded under its replay-stable key
   (``connectors.storage.naming``) with its metadata and SHA-256 by the destination's writer
   (S3, Azure Blob or GCS; ``connectors.storage.writer``), at most ``max_concurrent_uploads``
   at a time (``drain_concurrent_uploads`` for files the engine waits for). The writer makes
   the object visible whole or not at all.
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
an anonymous temporary file, and all open files together keep at most ``open_memory_bytes`` of
stored content in memory (past it, those holding most move to their temporary files early:
``_shed_memory``); closed files waiting for an upload slot keep at most
``waiting_memory_bytes`` in memory all together, the others wait on disk; the engine keeps only
a timestamp per event in custody. Backpressure: while too many files (or events) are not yet
written, a lane whose destination has some of them opens no new file: ``send`` raises a
retriable ``SinkError`` with ``retry_after`` and the events stay in Kafka (step 1 waits).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import operator
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry

from connectors.destinations import Destinations
from connectors.health import DestinationHealth
from connectors.storage.compression import CompressionWorker
from connectors.storage.config import StorageDestination, StorageSettings
from connectors.storage.files import FileBuilder, FinishedFile
from connectors.storage.metrics import StorageMetrics
from connectors.storage.naming import object_key
from connectors.storage.uploads import Upload, UploadQueue
from connectors.storage.writer import ObjectWriter, StorageError, WriterFactory, make_writer
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError
from streams.event import parse_timestamp

_log = logging.getLogger(__name__)

METHOD = "storage"
BACKPRESSURE_RETRY_SECONDS = 5.0
"""How long a lane refused for backpressure waits before offering its events again."""
_FLUSH_CHUNK = 32  # files a flush closes between two turns of the event loop

FileKey = tuple[str, int]  # (tenant, partition)
_JSON = operator.attrgetter("json")  # Envelope.json: the event's JSON, encoded once


@dataclass(eq=False)
class _OpenFile:
    """A file being assembled for one (tenant, partition) lane."""

    tenant_id: str
    partition: int
    dest: StorageDestination
    builder: FileBuilder
    future: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None
    memory: int = 0
    """Content bytes in memory, as last counted in the buffered_bytes gauge."""
    disk: int = 0
    """Content bytes in its temporary file, as last counted."""
    stored: int = 0
    """Of ``memory``, the stored (compressed) bytes: what ``FileBuilder.spill`` can move."""


@dataclass(eq=False)
class _Finishing:
    """A closed file the compression worker is still completing (its last chunk, the end of
    the gzip stream); queued for upload once that is done, unless dropped meanwhile."""

    key: FileKey
    dest: StorageDestination
    first_offset: int
    future: asyncio.Future[None]
    dropped: bool = False


class StorageSink:
    """Writes each tenant's events as files to its bucket (see the module docstring)."""

    name = METHOD
    max_batch = 1000
    json_only = True
    """Files hold the events' JSON: the engine may decode on worker processes (the event
    itself is restored only for a file's first event, whose time names the file)."""

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
        self._open_memory = 0
        self._open_disk = 0
        self._open_stored = 0
        self._writers: dict[StorageDestination, ObjectWriter] = {}
        self._resend_from: dict[FileKey, int] = {}
        self._queue = UploadQueue(settings, self.metrics, self._write)
        self._flushing: set[asyncio.Task[None]] = set()
        # gzip runs beside the event loop, in this thread (see connectors.storage.files).
        self._worker = CompressionWorker()
        self._finishing: dict[FileKey, list[_Finishing]] = {}

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
        if resend_from is not None and batch[0].offset > resend_from:
            # Offered before an earlier file of the lane failed (the engine drops that
            # answer): starting a file here would leave a gap before it.
            raise SinkError(
                f"{endpoint}: an earlier file of the tenant failed; waiting for its events",
                retriable=True,
            )
        current = self._open.get(key)
        if current is not None and current.dest is not dest and current.dest != dest:
            self._close(key, "reconfigured")
            current = None
        if current is None:
            if self._queue.refuses(dest):
                # Backpressure: the events stay in Kafka until the bucket catches up.
                raise SinkError(
                    f"{endpoint}: {self._queue.waiting + self._queue.running} files are not "
                    "written yet; new files wait for them",
                    retriable=True,
                    retry_after=BACKPRESSURE_RETRY_SECONDS,
                )
            current = self._start(key, dest)
        if resend_from is not None:
            del self._resend_from[key]
        builder = current.builder
        # The batch as a whole: no work per event but its JSON (encoded once, by Envelope).
        taken = min(len(batch), dest.max_events - builder.count)
        jsons = list(map(_JSON, batch if taken == len(batch) else batch[:taken]))
        room = dest.max_bytes - builder.uncompressed_bytes
        if sum(map(len, jsons)) + taken >= room:
            # The event that reaches max_bytes (each counts its newline or comma) is the last.
            taken = next(
                i
                for i, total in enumerate(accumulate(len(j) + 1 for j in jsons), 1)
                if total >= room
            )
            del jsons[taken:]
        # The key's date and hour are the first event's own time (not the record's): a
        # replayed backlog lands in the partitions of when things happened.
        when = parse_timestamp(batch[0].restore()["timestamp"]) if not builder.count else 0
        try:
            builder.add_batch(jsons, batch[0].offset, batch[taken - 1].offset, when)
        except OSError as exc:
            # The local buffer (spill file) failed: this file cannot be completed.
            error = SinkError(f"{endpoint}: cannot buffer the file locally: {exc}", retriable=True)
            self._drop(key, error)
            raise error from None
        self._count_open(
            current, builder.memory_bytes, builder.disk_bytes, builder.stored_memory_bytes
        )
        future = current.future
        reason = self._due_reason(current)
        if reason is not None:
            self._close(key, reason)
        if self._open_stored > self.settings.open_memory_bytes:
            self._shed_memory()
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
            builder=FileBuilder.for_destination(
                dest, self.settings, clock=self._clock, worker=self._worker
            ),
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
        """Close the lane's open file and queue it for writing."""
        current = self._remove_open(key)
        if current.builder.count == 0:
            current.builder.discard()
            if not current.future.done():
                current.future.set_result(None)
            return
        self.metrics.closed.labels(reason).inc()
        first = current.builder.first_offset
        assert first is not None  # noqa: S101 - the file has events
        entry = _Finishing(key, current.dest, first, current.future)
        # Behind a file of the lane that the worker is still completing, this one goes through
        # the worker too: the lane's files reach the upload queue in the order they closed.
        finishing = current.builder.finish_async(in_worker=key in self._finishing)
        if finishing.done():
            self._finished(entry, finishing)
            return
        self._finishing.setdefault(key, []).append(entry)
        loop = asyncio.get_running_loop()

        def back_on_the_loop(done: concurrent.futures.Future[FinishedFile]) -> None:
            try:
                loop.call_soon_threadsafe(self._finished, entry, done)
            except RuntimeError:  # the loop is closed: nobody will upload it
                if done.exception() is None:
                    done.result().release()

        finishing.add_done_callback(back_on_the_loop)

    def _finished(self, entry: _Finishing, done: concurrent.futures.Future[FinishedFile]) -> None:
        """A closed file is complete (or its local buffer failed): queue it for upload."""
        lane = self._finishing.get(entry.key)
        if lane is not None and entry in lane:
            lane.remove(entry)
            if not lane:
                del self._finishing[entry.key]
        exc = done.exception()
        if entry.dropped:
            if exc is None:
                done.result().release()
            return
        key, dest, first, future = entry.key, entry.dest, entry.first_offset, entry.future
        if exc is not None:
            if not isinstance(exc, OSError):
                _log.error("Completing a file failed unexpectedly.", exc_info=exc)
            problem = f"{dest.endpoint()}: local file: {exc}"  # finishing the local file (disk)
            self._upload_failed(key, dest, first, future, problem, permanent=False)
            return
        finished = done.result()
        upload = Upload(key[0], key[1], dest, finished, future)
        try:
            self._queue.put(upload)
        except OSError as exc:  # moving a waiting file to disk
            finished.release()
            problem = f"{dest.endpoint()}: local file for a waiting upload: {exc}"
            self._upload_failed(key, dest, first, future, problem, permanent=False)

    def _drop_finishing(self, key: FileKey, error: SinkError, after: int | None = None) -> None:
        """Give up the lane's files still being completed (those starting after offset
        ``after``, if given): they are not uploaded, their events will come again."""
        lane = self._finishing.get(key)
        if lane is None:
            return
        for entry in lane:
            if after is None or entry.first_offset > after:
                entry.dropped = True
                _settle(entry.future, error)
        kept = [entry for entry in lane if not entry.dropped]
        if kept:
            self._finishing[key] = kept
        else:
            del self._finishing[key]

    def _drop(self, key: FileKey, error: SinkError) -> None:
        """Give up the lane's open file: its events will come again from Kafka."""
        if key not in self._open:
            return
        current = self._remove_open(key)
        current.builder.discard()
        _settle(current.future, error)

    def _remove_open(self, key: FileKey) -> _OpenFile:
        current = self._open.pop(key)
        self.metrics.open.dec()
        if current.timer is not None:
            current.timer.cancel()
        self._count_open(current, 0, 0, 0)
        return current

    def _count_open(self, current: _OpenFile, memory: int, disk: int, stored: int) -> None:
        """Record an open file's content bytes now (0, 0, 0: it is no longer open)."""
        self._open_memory += memory - current.memory
        self._open_disk += disk - current.disk
        self._open_stored += stored - current.stored
        current.memory, current.disk, current.stored = memory, disk, stored
        self.metrics.open_memory.set(self._open_memory)
        self.metrics.open_disk.set(self._open_disk)

    def _resend_from_at(self, key: FileKey, first_offset: int) -> None:
        """A file of the lane from ``first_offset`` on is lost: refuse the lane's later batches
        until the engine offers that offset again (the guard at the top of ``send``)."""
        self._resend_from[key] = min(first_offset, self._resend_from.get(key, first_offset))

    def _shed_memory(self) -> None:
        """The open files hold more stored content in memory than ``open_memory_bytes``: move
        that of the files holding most to their temporary files until a quarter of the budget
        is free (each move is one file's content written once; the rest stays in memory).

        A file that cannot move (disk full, or its builder already failed) is dropped like
        one whose local buffer failed: its events come again from Kafka.
        """
        budget = self.settings.open_memory_bytes
        target = budget - budget // 4
        before, files = self._open_stored, 0
        by_size = sorted(self._open.items(), key=lambda item: item[1].stored, reverse=True)
        for key, current in by_size:
            if self._open_stored <= target or not current.stored:
                break
            try:
                moved = current.builder.spill()
            except Exception as exc:  # noqa: BLE001 - whatever broke the builder, the file is lost
                error = SinkError(
                    f"{current.dest.endpoint()}: cannot move the open file to local disk: {exc}",
                    retriable=True,
                )
                first = current.builder.first_offset
                if first is not None:  # later batches of the lane wait for the re-read
                    self._resend_from_at(key, first)
                self._drop(key, error)
                continue
            files += 1
            self._count_open(current, max(0, current.memory - moved), current.disk + moved, 0)
        self.metrics.budget_spills.inc(files)
        _log.info(
            "Open files moved to local disk: together they held more than open_memory_bytes.",
            extra={
                "files": files,
                "memory_bytes_before": before,
                "memory_bytes_after": self._open_stored,
                "open_memory_bytes": budget,
            },
        )

    # --- writing --------------------------------------------------------------------------

    async def _write(self, upload: Upload) -> None:
        """Write one closed file and settle its future; the queue runs it when a slot is free
        and releases the file afterwards."""
        tenant_id, dest, finished = upload.tenant_id, upload.dest, upload.file
        key = (tenant_id, upload.partition)
        endpoint = dest.endpoint()
        name = object_key(
            dest,
            tenant_id,
            finished.first_timestamp_ms,
            upload.partition,
            finished.first_offset,
            dest.extension,
        )
        first, future = finished.first_offset, upload.future
        try:
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
            _settle(future, SinkError(f"{endpoint}: upload cancelled", retriable=True))
            raise
        except StorageError as exc:
            self._upload_failed(key, dest, first, future, str(exc), permanent=exc.permanent)
        except TimeoutError:
            reason = f"{endpoint}: no answer within {self.settings.upload_timeout_seconds:g} s"
            self._upload_failed(key, dest, first, future, reason, permanent=False)
        except OSError as exc:  # reading the local file (disk)
            reason = f"{endpoint}: local file: {exc}"
            self._upload_failed(key, dest, first, future, reason, permanent=False)
        else:
            self.metrics.objects.labels(dest.provider, "ok").inc()
            self.metrics.bytes.labels(dest.provider).inc(finished.size)
            self.health.success(tenant_id, endpoint)
            _log.debug(
                "Object written.",
                extra={"tenant": tenant_id, "key": name, "events": finished.count},
            )
            if not future.done():
                future.set_result(None)

    def _upload_failed(
        self,
        key: FileKey,
        dest: StorageDestination,
        first_offset: int,
        future: asyncio.Future[None],
        reason: str,
        *,
        permanent: bool,
    ) -> None:
        self.metrics.objects.labels(dest.provider, "failed").inc()
        state = self.health.failure(key[0], dest.endpoint(), reason, misconfigured=permanent)
        if state == "disabled":
            error = SinkError(
                f"{reason} (destination disabled)",
                retriable=False,
                retry_after=self.settings.disabled_retry_seconds,
            )
        else:
            error = SinkError(reason, retriable=not permanent)
        self._resend_from_at(key, first_offset)
        # The lane reads everything from this file's first event again (this future first, so
        # the engine parks there); a newer open or waiting file would hold events after the gap.
        _settle(future, error)
        self._drop(key, error)
        self._drop_finishing(key, error, after=first_offset)
        for later in self._queue.cancel_lane(key[0], key[1], after=first_offset):
            _settle(later.future, error)

    def _writer(self, dest: StorageDestination) -> ObjectWriter:
        writer = self._writers.get(dest)
        if writer is None:
            writer = self._writers[dest] = self._writer_factory(dest, self.settings)
        return writer

    # --- engine hooks ---------------------------------------------------------------------

    def flush(self, partitions: list[int] | None) -> None:
        """Close and write now the open files of these partitions (None: all), ahead of the
        other closed files and with more upload slots: the engine is waiting for them.

        Files are closed in the order they will be written (the upload queue's: partition
        with the fewest files first, lowest first offset first), a few at a time in a task,
        so that uploads start at once: closing 5,000 small gzip files compresses them all,
        about two seconds in which no upload would otherwise move.
        """
        files = [
            (key, current)
            for key, current in self._open.items()
            if partitions is None or key[1] in partitions
        ]
        self._queue.hurry(partitions, Counter(key[1] for key, _ in files))
        files.sort(
            key=lambda item: (
                self._queue.rank(item[0][1]),
                item[0][1],
                item[1].builder.first_offset or 0,
            )
        )
        task = asyncio.get_running_loop().create_task(
            self._close_in_order(files), name="storage-flush"
        )
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _close_in_order(self, files: list[tuple[FileKey, _OpenFile]]) -> None:
        for done, (key, current) in enumerate(files, 1):
            if self._open.get(key) is current:  # not dropped or closed meanwhile
                self._close(key, "flush")
            if done % _FLUSH_CHUNK == 0:
                await asyncio.sleep(0)  # let the uploads begun so far move

    def forget(self, partitions: list[int]) -> None:
        """These partitions are someone else's now: drop their open files, stop their uploads."""
        error = SinkError("partition revoked", retriable=True)
        for key in [k for k in self._open if k[1] in partitions]:
            self._drop(key, error)
        for key in [k for k in self._finishing if k[1] in partitions]:
            self._drop_finishing(key, error)
        for key in [k for k in self._resend_from if k[1] in partitions]:
            del self._resend_from[key]
        # Uploads still running for them are cancelled: a late write could replace a newer
        # object of the new owner under the same key.
        for upload in self._queue.cancel(partitions):
            _settle(upload.future, _cancelled(upload))

    async def close(self) -> None:
        for task in list(self._flushing):
            task.cancel()
        error = SinkError("connector stopping", retriable=True)
        for key in list(self._open):
            self._drop(key, error)
        for key in list(self._finishing):
            self._drop_finishing(key, error)
        for upload in await self._queue.close():
            _settle(upload.future, _cancelled(upload))
        # Waits for the worker's last jobs (discarded files' clean-up, at most a few MiB).
        await asyncio.to_thread(self._worker.close)
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                await writer.close()
        self._writers.clear()


def _cancelled(upload: Upload) -> SinkError:
    return SinkError(f"{upload.dest.endpoint()}: upload cancelled", retriable=True)


def _settle(future: asyncio.Future[None], error: SinkError) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: the engine learns of it through its callback
