"""Closed files on their way to the bucket: which one is written next, and what waiting costs.

Who calls it: the storage sink hands every closed file to its ``UploadQueue`` (``put``) and
asks it, before opening a new file, whether the lane must wait (``refuses``). The queue starts
each file's upload (the sink's ``write`` coroutine) when a slot is free, and owns the file's
content until that upload has ended.

A closed file, numbered:

1. ``put``: it starts at once if a slot is free and nothing waits before it. Otherwise it
   waits; if its content is in memory and the content of all waiting files in memory would
   pass ``waiting_memory_bytes``, it moves to an anonymous temporary file first (``spill``),
   so a slow or silent bucket costs disk, not RAM.
2. When a slot frees, the next file starts: first the *hurried* ones (files of partitions the
   engine is waiting for: shutdown, or partitions being revoked), then the others in the
   order they closed. Hurried files may use ``drain_concurrent_uploads`` slots, the others
   ``max_concurrent_uploads``. Among hurried files, the partition that had the fewest files
   when the engine asked goes first, and within it the lowest first offset: the engine commits
   a partition up to its lowest unwritten file, so finishing whole partitions (and each from
   its start) is what lets the most be committed if the grace period runs out.
3. When its upload ends (written, failed or cancelled) the queue releases the content.

Backpressure: while the files not yet written (waiting or uploading) reach
``max_waiting_files``, or their events reach ``max_waiting_events``, ``refuses(dest)`` is
true for every destination that has at least one of them: the sink then refuses to open a
file for such a lane (a retriable ``SinkError`` with ``retry_after``), so those events stay in
Kafka. Lanes of destinations with nothing waiting go on. Files still open may close later
(interval, size), so the bound can be passed by at most the number of open files.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.storage.config import StorageDestination, StorageSettings
from connectors.storage.files import FinishedFile
from connectors.storage.metrics import StorageMetrics
from streams.errors import SinkError

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class Upload:
    """A closed file of one (tenant, partition) lane, from ``put`` to the end of its upload."""

    tenant_id: str
    partition: int
    dest: StorageDestination
    file: FinishedFile
    future: asyncio.Future[None]
    """Resolved by the sink's ``write`` once the object is durable (or failed)."""
    seq: int = 0
    hurried: bool = False
    memory: int = 0
    """Bytes of its content in memory, as counted by the queue."""
    task: asyncio.Task[None] | None = None


Write = Callable[[Upload], Coroutine[Any, Any, None]]


class UploadQueue:
    """Upload slots, their order, the memory of waiting files and backpressure (see module)."""

    def __init__(self, settings: StorageSettings, metrics: StorageMetrics, write: Write) -> None:
        self._settings = settings
        self._metrics = metrics
        self._write = write
        self._limit = settings.max_concurrent_uploads
        self._drain_limit = max(settings.drain_concurrent_uploads, self._limit)
        self._seq = itertools.count()
        self._normal: deque[Upload] = deque()
        self._hurried: dict[int, list[tuple[int, int, Upload]]] = {}  # partition -> heap
        self._rank: dict[int, int] = {}  # hurried partition -> its files when hurried
        self._hurry_all = False
        self._hurry_partitions: set[int] = set()
        self._running: set[Upload] = set()
        self._waiting_memory = 0  # content in memory of the files that wait
        self._files = 0  # not yet written: waiting or running
        self._events = 0
        self._by_dest: Counter[StorageDestination] = Counter()
        self._memory = 0
        self._disk = 0
        self._refusing = False

    # --- what the sink asks -----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Files waiting for an upload slot."""
        return len(self._normal) + sum(len(heap) for heap in self._hurried.values())

    @property
    def running(self) -> int:
        """Files being written."""
        return len(self._running)

    def refuses(self, dest: StorageDestination) -> bool:
        """Whether a lane of ``dest`` must not open a new file now (see the module)."""
        if not self._full() or not self._by_dest[dest]:
            return False
        if not self._refusing:
            self._refusing = True
            self._metrics.backpressure.set(1)
            _log.warning(
                "Uploads are behind; tenants with files not yet written start no new file "
                "until they are.",
                extra={
                    "files": self._files,
                    "events": self._events,
                    "max_waiting_files": self._settings.max_waiting_files,
                    "max_waiting_events": self._settings.max_waiting_events,
                },
            )
        return True

    def put(self, upload: Upload) -> None:
        """Start a closed file at once, or queue it (see the module).

        Raises OSError if the file had to move to disk and could not: it is not queued then.
        """
        upload.seq = next(self._seq)
        upload.hurried = self._hurry_all or upload.partition in self._hurry_partitions
        size = upload.file.memory_bytes
        ahead = bool(self._hurried) if upload.hurried else bool(self.waiting)
        at_once = not ahead and self.running < self._slots(upload)
        if not at_once and size and self._waiting_memory + size > self._budget():
            upload.file.spill(self._settings.spill_dir)
            size = 0
        upload.memory = size
        self._files += 1
        self._events += upload.file.count
        self._by_dest[upload.dest] += 1
        self._memory += size
        self._disk += upload.file.size - size
        self._enqueue(upload)
        self.pump()

    def hurry(self, partitions: list[int] | None, closing: Mapping[int, int]) -> None:
        """The engine waits for these partitions' files (None: all, at shutdown): theirs go
        first, with ``drain_concurrent_uploads`` slots, and so do the ones closed later.
        ``closing``: how many open files of each partition the sink is about to close; with
        the files already waiting they rank the partitions (fewest first, see ``rank``)."""
        if partitions is None:
            self._hurry_all = True
        else:
            self._hurry_partitions.update(partitions)

        def hurried(upload: Upload) -> bool:
            return self._hurry_all or upload.partition in self._hurry_partitions

        moved = [u for u in self._normal if hurried(u)]
        self._normal = deque(u for u in self._normal if not hurried(u))
        for upload in moved:
            self._waiting_memory -= upload.memory
            upload.hurried = True
            self._enqueue(upload)
        for partition in {*self._hurried, *closing}:
            waiting = len(self._hurried.get(partition, ()))
            self._rank[partition] = waiting + closing.get(partition, 0)

    def rank(self, partition: int) -> int:
        """Where a hurried partition's files go: lower first (its files when hurried)."""
        return self._rank.get(partition, 0)

    def pump(self) -> None:
        """Start waiting files while slots are free, in the module's order."""
        while (upload := self._next()) is not None:
            self._running.add(upload)
            upload.task = asyncio.get_running_loop().create_task(
                self._write(upload), name=f"storage-upload {upload.dest.provider}"
            )
            upload.task.add_done_callback(functools.partial(self._ended, upload))
        self._gauges()

    def cancel(self, partitions: list[int] | None) -> list[Upload]:
        """Stop the files of these partitions (None: all): running uploads are cancelled (the
        sink's ``write`` settles them); the waiting ones are returned, released, for the sink
        to settle."""
        if partitions is None:
            self._hurry_all = False
            self._hurry_partitions.clear()
            self._rank.clear()
        else:
            self._hurry_partitions.difference_update(partitions)
            for partition in partitions:
                self._rank.pop(partition, None)

        def ours(upload: Upload) -> bool:
            return partitions is None or upload.partition in partitions

        dropped = [u for u in self._normal if ours(u)]
        self._normal = deque(u for u in self._normal if not ours(u))
        for partition in [p for p in self._hurried if partitions is None or p in partitions]:
            dropped.extend(u for _, _, u in self._hurried.pop(partition))
        for upload in dropped:
            self._waiting_memory -= upload.memory
            self._forget(upload)
        for upload in list(self._running):
            if ours(upload) and upload.task is not None:
                upload.task.cancel()
        self._gauges()
        return dropped

    def cancel_lane(self, tenant_id: str, partition: int, *, after: int) -> list[Upload]:
        """Take back the waiting files of one lane that start after offset ``after`` (a file
        of the lane failed: the engine reads all of them again); returned released."""

        def later(upload: Upload) -> bool:
            return (
                upload.tenant_id == tenant_id
                and upload.partition == partition
                and upload.file.first_offset > after
            )

        dropped = [u for u in self._normal if later(u)]
        if dropped:
            self._normal = deque(u for u in self._normal if not later(u))
        heap = self._hurried.get(partition)
        if heap is not None and any(later(u) for _, _, u in heap):
            dropped.extend(u for _, _, u in heap if later(u))
            kept = [entry for entry in heap if not later(entry[2])]
            heapq.heapify(kept)
            if kept:
                self._hurried[partition] = kept
            else:
                del self._hurried[partition]
        for upload in dropped:
            self._waiting_memory -= upload.memory
            self._forget(upload)
        self._gauges()
        return dropped

    async def close(self) -> list[Upload]:
        """Cancel everything; returns the files that were waiting (released), once every
        running upload has ended."""
        dropped = self.cancel(None)
        tasks = [u.task for u in self._running if u.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return dropped

    # --- inside -----------------------------------------------------------------------------

    def _budget(self) -> int:
        return self._settings.waiting_memory_bytes

    def _full(self) -> bool:
        settings = self._settings
        return (
            self._files >= settings.max_waiting_files or self._events >= settings.max_waiting_events
        )

    def _slots(self, upload: Upload) -> int:
        return self._drain_limit if upload.hurried else self._limit

    def _enqueue(self, upload: Upload) -> None:
        self._waiting_memory += upload.memory
        if upload.hurried:
            heap = self._hurried.setdefault(upload.partition, [])
            heapq.heappush(heap, (upload.file.first_offset, upload.seq, upload))
        else:
            self._normal.append(upload)

    def _next(self) -> Upload | None:
        """The next file to start, or None when none may start now."""
        running = len(self._running)
        upload: Upload | None = None
        if self._hurried and running < self._drain_limit:
            partition = min(self._hurried, key=lambda p: (self.rank(p), p))
            heap = self._hurried[partition]
            upload = heapq.heappop(heap)[2]
            if not heap:
                del self._hurried[partition]
        elif self._normal and running < self._limit:
            upload = self._normal.popleft()
        if upload is not None:
            self._waiting_memory -= upload.memory
        return upload

    def _ended(self, upload: Upload, task: asyncio.Task[None]) -> None:
        self._running.discard(upload)
        self._forget(upload)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The sink's write settles every outcome it knows; this is a bug, not the bucket.
            _log.error("Upload task failed unexpectedly.", exc_info=exc)
        if not upload.future.done():
            # A task cancelled before it ran never entered the sink's write.
            error = SinkError(f"{upload.dest.endpoint()}: upload cancelled", retriable=True)
            upload.future.set_exception(error)
            upload.future.exception()  # retrieved: the engine learns of it by its callback
        self.pump()

    def _forget(self, upload: Upload) -> None:
        """The file leaves the queue (written, failed, cancelled): release its content."""
        self._files -= 1
        self._events -= upload.file.count
        self._by_dest[upload.dest] -= 1
        if not self._by_dest[upload.dest]:
            del self._by_dest[upload.dest]
        self._memory -= upload.memory
        self._disk -= upload.file.size - upload.memory
        upload.file.release()
        if self._refusing and not self._full():
            self._refusing = False
            self._metrics.backpressure.set(0)
            _log.info(
                "Uploads caught up; every tenant may start new files again.",
                extra={"files": self._files, "events": self._events},
            )

    def _gauges(self) -> None:
        metrics = self._metrics
        metrics.uploading.set(self._files)
        metrics.waiting.set(self.waiting)
        metrics.closed_memory.set(self._memory)
        metrics.closed_disk.set(self._disk)
