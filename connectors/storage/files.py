"""Assembling one storage file: events in, a finished file with its digest and metadata out.

Who calls it: the storage sink keeps one :class:`FileBuilder` per open (tenant, partition)
file. Steps:

1. ``add_batch`` the events (``add`` one event), in partition order.
2. Ask ``should_close`` after each batch, and again when the idle timer set from ``deadline``
   fires, so files close on time even when no event comes.
3. ``finish`` (or ``finish_async``, whose future gives it, when a ``CompressionWorker``
   completes the file): the builder hands over a :class:`FinishedFile`; name it with
   ``naming.object_key`` and give a writer ``size``, ``read_part`` (or ``open``),
   ``content_type``, ``metadata()`` and ``sha256``. Send no Content-Encoding: the object IS
   the gzip file, and the digest is the digest of its bytes.
4. Once the object is durable, acknowledge the file's events, then ``release`` the file.

A builder whose file will not be uploaded (a revoked partition, a failed write that will be
rebuilt from Kafka) is ``discard``-ed instead.

Content:

* jsonl: every event's JSON followed by ``\\n``; json: ``[e1,e2,…]`` (no whitespace).
* gzip: compressed as events arrive (one gzip member, header time 0), so the same events
  always give the same bytes and the same SHA-256: a replayed file is identical to the first.
  With a :class:`CompressionWorker` the compression (and the digest of its output) runs in
  its thread, a chunk at a time and in order; the bytes are the same.

Memory: stored bytes (compressed, if gzip) stay in memory up to ``spill_threshold_bytes``;
the chunk that would pass it moves the whole content to an anonymous temporary file in
``spill_dir`` (``tempfile.TemporaryFile``: it has no name on disk, so even a ``kill -9``
leaves nothing behind), and everything after goes there too. Besides that buffer an open
gzip file holds the compressor's state (zlib-ng: about 280 KiB, once a whole slice of 32 KiB
was compressed) and under a slice of uncompressed content, and each spilled file one
descriptor.
A finished file still in memory can be moved to such a file with ``FinishedFile.spill`` (the
sink does it for files that must wait for an upload slot).

Not thread-safe (one builder belongs to one thread, the worker's part of it to the worker),
except ``FinishedFile.read_part``, which reads at explicit positions and may run in worker
threads while the event loop goes on.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO

from connectors.storage.compression import CompressionWorker, FileOutput
from connectors.storage.config import (
    Compression,
    FileFormat,
    MiB,
    StorageDestination,
    StorageSettings,
)

SCHEMA_VERSION = 1
"""Version of the event JSON in the files: the ``audit-event:N`` of
``schemas/audit_event.schema.json``'s ``$id``."""

CONTENT_TYPES: dict[tuple[FileFormat, Compression], str] = {
    ("jsonl", "none"): "application/x-ndjson",
    ("json", "none"): "application/json",
    ("jsonl", "gzip"): "application/gzip",
    ("json", "gzip"): "application/gzip",
}
"""Content-Type of the objects. gzip files are stored as gzip, not with Content-Encoding:
downloads must give the bytes the SHA-256 was computed on."""


if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_LAZY_GZIP_BYTES = 32 * 1024
"""Uncompressed bytes a gzip file collects before compressing them (see FileBuilder)."""
WORKER_CHUNK_BYTES = 256 * 1024
"""With a CompressionWorker: uncompressed bytes a gzip file collects before handing them to
the worker (few hand-offs: each costs the worker a wait for the GIL)."""
WORKER_IDLE_CHUNK_BYTES = 64 * 1024
"""With a CompressionWorker that has nothing to do: a file hands over what it collected from
this size on, so that little is left to compress when files close together (at shutdown)."""
INLINE_FINISH_BYTES = 64 * 1024
"""With a CompressionWorker: a file that never handed anything over and holds less than this
is compressed by ``finish_async``'s caller at once (no hand-off for small files)."""


class FileBuilder:
    """One file of one (tenant, partition) being assembled; see the module docstring."""

    def __init__(
        self,
        *,
        file_format: FileFormat = "jsonl",
        compression: Compression = "gzip",
        spill_threshold_bytes: int = 8 * MiB,
        spill_dir: Path | None = None,
        compression_level: int = 6,
        clock: Callable[[], float] = time.monotonic,
        worker: CompressionWorker | None = None,
    ) -> None:
        if spill_threshold_bytes < 0:
            raise ValueError("spill_threshold_bytes must not be negative")
        self.file_format: FileFormat = file_format
        self.compression: Compression = compression
        self._gzip = compression == "gzip"
        self._clock = clock
        self._worker = worker if self._gzip else None
        # The compressor's state costs ~280 KiB: a small file (most of them, with thousands of
        # tenants) keeps its start uncompressed and is compressed in one go when it finishes;
        # FileOutput gives the same bytes however the input is handed over. Later content is
        # collected the same way and compressed a chunk at a time (in the worker, if any).
        chunk = WORKER_CHUNK_BYTES if self._worker is not None else _LAZY_GZIP_BYTES
        # 0: content goes to the output at once (a gzip file's still waits for a whole slice)
        self._chunk = min(chunk, spill_threshold_bytes)
        self._idle_chunk = min(WORKER_IDLE_CHUNK_BYTES, self._chunk)
        self._out = FileOutput(compression_level, spill_threshold_bytes, spill_dir)
        self._raw = bytearray()
        self._count = 0
        self._first_offset: int | None = None
        self._last_offset: int | None = None
        self._first_timestamp_ms: int | None = None
        self._opened_at: float | None = None
        self._uncompressed = 0
        self._state = "open"  # open | finished | discarded | broken
        self._spill_asked = False

    @classmethod
    def for_destination(
        cls,
        dest: StorageDestination,
        settings: StorageSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        worker: CompressionWorker | None = None,
    ) -> FileBuilder:
        """A builder with the destination's format and compression and the process's spill
        settings."""
        return cls(
            file_format=dest.format,
            compression=dest.compression,
            spill_threshold_bytes=settings.spill_threshold_bytes,
            spill_dir=settings.spill_dir,
            compression_level=dest.compression_level or settings.compression_level,
            clock=clock,
            worker=worker,
        )

    @property
    def count(self) -> int:
        """Events added."""
        return self._count

    @property
    def first_offset(self) -> int | None:
        return self._first_offset

    @property
    def last_offset(self) -> int | None:
        return self._last_offset

    @property
    def first_timestamp_ms(self) -> int | None:
        """Timestamp given with the first event: what the object key's date and hour use."""
        return self._first_timestamp_ms

    @property
    def opened_at(self) -> float | None:
        """The clock's time when the first event was added (None while empty)."""
        return self._opened_at

    @property
    def uncompressed_bytes(self) -> int:
        """Content bytes so far before compression (what ``max_bytes`` limits)."""
        return self._uncompressed

    @property
    def stored_bytes(self) -> int:
        """Bytes produced so far (compressed, if gzip); the compressor, the collected
        uncompressed content and the worker may still hold some back."""
        return self._out.stored

    @property
    def memory_bytes(self) -> int:
        """Content held in memory: stored bytes until the file spills, plus the uncompressed
        content of a gzip file not yet compressed (less than a chunk, and less than a slice
        that waits to be completed; chunks handed to the worker and not yet compressed are the
        worker's, bounded all files together)."""
        return len(self._out.memory) + self._out.unsliced + len(self._raw)

    @property
    def collected_bytes(self) -> int:
        """Uncompressed content of a gzip file collected and not yet handed to the compressor
        (0 for a file without compression)."""
        return len(self._raw)

    @property
    def disk_bytes(self) -> int:
        """Content in the temporary file (0 until the file spills)."""
        out = self._out
        return out.stored if out.file is not None else 0

    @property
    def spilled(self) -> bool:
        """True once the content lives in a temporary file."""
        return self._out.file is not None

    @property
    def stored_memory_bytes(self) -> int:
        """Stored (compressed, if gzip) bytes still in memory: what ``spill`` moves to disk
        (0 once it was asked, also while the worker has yet to do it)."""
        return 0 if self._spill_asked else len(self._out.memory)

    def spill(self) -> int:
        """Move the stored content to the file's temporary file now, before the spill
        threshold (the sink does it when the open files together hold too much memory); what
        comes later goes there too. Returns the bytes moved (with a worker still holding
        chunks of the file, those in memory when asked: the move runs after those chunks).

        The uncompressed content not yet compressed stays (compressing it early would start
        the compressor, which costs more than it holds). The bytes of the object are the same.
        An OSError (disk full) leaves the builder unusable, as in ``add_batch``; with a worker
        it comes from the next call that meets the worker's error.
        """
        self._check_open()
        out = self._out
        moved = 0 if out.file is not None or self._spill_asked else len(out.memory)
        if not moved:
            return 0
        try:
            if self._worker is not None and out.jobs:
                self._worker.submit(out.spill_job, 0, out)
            else:
                out.spill()
        except BaseException:
            self._state = "broken"
            raise
        self._spill_asked = True
        return moved

    def add(self, json_bytes: bytes, offset: int, timestamp_ms: int) -> None:
        """Append one event's JSON (one line, no ``\\n``) at ``offset`` of the partition;
        ``add_batch`` of one event."""
        self.add_batch((json_bytes,), offset, offset, timestamp_ms)

    def add_batch(
        self, events: Sequence[bytes], first_offset: int, last_offset: int, timestamp_ms: int
    ) -> None:
        """Append events' JSON (each one line, no ``\\n``), in partition order, from
        ``first_offset`` to ``last_offset``; ``timestamp_ms`` is the first event's (it counts
        only for a file's first event). The whole batch is built in one go, with no work per
        event beyond joining them.

        Offsets must increase: a first offset not above the last one added (or a last one
        below the first) is a bug upstream and raises ValueError before anything is written,
        and so does an empty event or one with a newline. An OSError (disk full while
        spilling, also one met by the worker earlier) leaves the builder unusable: discard it
        and rebuild the file from Kafka.
        """
        self._check_open()
        count = len(events)
        if not count:
            return
        if self._last_offset is not None and first_offset <= self._last_offset:
            raise ValueError(f"offset {first_offset} does not follow {self._last_offset}")
        if last_offset < first_offset:
            raise ValueError(f"last offset {last_offset} is before the first {first_offset}")
        if self.file_format == "jsonl":
            data = b"\n".join(events) + b"\n"
            one_line = data.count(b"\n") == count
        else:
            data = (b"," if self._count else b"[") + b",".join(events)
            one_line = b"\n" not in data
        if not one_line or not all(events):
            raise ValueError("an event must be non-empty JSON on one line")
        self._write(data)
        if self._count == 0:
            self._first_offset, self._first_timestamp_ms = first_offset, timestamp_ms
            self._opened_at = self._clock()
        self._count += count
        self._last_offset = last_offset

    def should_close(self, now: float, max_events: int, max_bytes: int, interval: float) -> bool:
        """True if the file is due: ``max_events`` events, ``max_bytes`` uncompressed bytes,
        or ``interval`` seconds since its first event (``now`` from the builder's clock). An
        empty builder is never due."""
        if self._opened_at is None:
            return False
        return (
            self._count >= max_events
            or self._uncompressed >= max_bytes
            or now - self._opened_at >= interval
        )

    def deadline(self, interval: float) -> float | None:
        """When ``interval`` expires for this file (clock time), None while empty: the sink's
        idle timer, so files close on time even when no more events come."""
        return None if self._opened_at is None else self._opened_at + interval

    def finish(self) -> FinishedFile:
        """Complete the file and hand its content over; the builder is done afterwards.

        Waits for the worker, if the file has content there. Raises ValueError on an empty
        builder (there is no file without events), OSError if the local buffer failed.
        """
        return self.finish_async().result()

    def finish_async(self, *, in_worker: bool = False) -> Future[FinishedFile]:
        """Complete the file: the future's result is the FinishedFile (or its exception the
        OSError of the local buffer). The builder is done at once either way.

        Without a worker, and when the worker has nothing of the file left to do and less
        than ``INLINE_FINISH_BYTES`` is still to compress, the file is completed here and the
        future is done on return (a hand-off costs the worker a wait for the GIL while the
        loop is busy: thousands of small completions at shutdown must not queue there).
        Otherwise the worker completes it after the file's last chunk (and, being in order,
        after every file whose completion was asked for before); the future is then resolved
        in the worker's thread. ``in_worker`` sends a small file there too (the
        sink does so to keep a lane's files in order behind a larger one still there).

        Raises ValueError on an empty builder: there is no file without events. A failure
        of the local buffer (also one the worker met earlier) comes through the future.
        """
        if self._state != "open":
            raise ValueError(f"the builder is {self._state}")
        first, last, first_ms = self._first_offset, self._last_offset, self._first_timestamp_ms
        if first is None or last is None or first_ms is None:
            raise ValueError("no events: an empty builder has no file to finish")
        if self.file_format == "json":
            self._raw += b"]"
            self._uncompressed += 1
        tail, self._raw, self._state = self._raw, bytearray(), "finished"
        out, future, gzip, count = self._out, Future[FinishedFile](), self._gzip, self._count
        content_type = CONTENT_TYPES[(self.file_format, self.compression)]
        uncompressed = self._uncompressed

        def complete() -> None:
            if not future.set_running_or_notify_cancel():
                out.close()
                return
            try:
                if out.error is not None:
                    raise out.error
                out.end(tail, gzip)
                content: bytes | IO[bytes] = out.file if out.file is not None else bytes(out.memory)
                out.file, out.memory = None, bytearray()
                finished = FinishedFile(
                    content,
                    size=out.stored,
                    sha256=out.hash.hexdigest(),
                    count=count,
                    first_offset=first,
                    last_offset=last,
                    first_timestamp_ms=first_ms,
                    uncompressed_bytes=uncompressed,
                    content_type=content_type,
                )
            except BaseException as exc:  # noqa: BLE001 - handed over through the future
                out.close()
                future.set_exception(exc)
            else:
                future.set_result(finished)

        worker = self._worker
        if worker is None or not (out.jobs or in_worker or len(tail) >= INLINE_FINISH_BYTES):
            complete()
        else:
            worker.submit(complete, len(tail), out)
        return future

    def discard(self) -> None:
        """Drop the content and close the temporary file, if any (in the worker, after its
        work on the file, if the file handed anything to it). Safe to call twice, or after
        ``finish`` (then it does nothing: the FinishedFile owns the content)."""
        if self._state == "finished":
            return
        if self._state in ("open", "broken"):
            self._state = "discarded"
        self._raw = bytearray()
        out = self._out
        if out.jobs and self._worker is not None:
            if not out.dropped:
                out.dropped = True  # the worker skips its chunks still waiting
                self._worker.submit(out.close, 0, out)
        else:
            out.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"the builder is {self._state}")
        error = self._out.error
        if error is not None:
            self._state = "broken"
            raise error

    def _write(self, data: bytes) -> None:
        self._uncompressed += len(data)
        try:
            if not self._gzip:
                self._out.put(data)
                return
            self._raw += data
            collected, worker = len(self._raw), self._worker
            if collected < self._chunk and (
                worker is None or collected < self._idle_chunk or worker.pending_bytes
            ):
                return
            raw, self._raw, out = self._raw, bytearray(), self._out
            if worker is None or (not out.jobs and collected < WORKER_IDLE_CHUNK_BYTES):
                # A small piece (a spill threshold below a chunk) is not worth a hand-off,
                # unless the worker still has some of the file (it must stay in order).
                out.compress(raw)
            else:
                worker.submit(functools.partial(out.compress_job, raw), collected, out)
        except BaseException:
            self._state = "broken"
            raise


class FinishedFile:
    """A complete file ready for upload: its content, digest and object metadata.

    Owns the content until ``release`` (or the end of a ``with`` block); read it with
    ``read_part`` (any order, any thread) or ``open`` (a fresh reader from the start).
    """

    def __init__(
        self,
        content: bytes | IO[bytes],
        *,
        size: int,
        sha256: str,
        count: int,
        first_offset: int,
        last_offset: int,
        first_timestamp_ms: int,
        uncompressed_bytes: int,
        content_type: str,
    ) -> None:
        self._content: bytes | IO[bytes] | None = content
        self._lock = threading.Lock()
        self.size = size
        """Bytes of the object (compressed, if gzip)."""
        self.sha256 = sha256
        """Hex SHA-256 of exactly those bytes: ``sha256sum`` of the downloaded object."""
        self.count = count
        self.first_offset = first_offset
        self.last_offset = last_offset
        self.first_timestamp_ms = first_timestamp_ms
        self.uncompressed_bytes = uncompressed_bytes
        self.content_type = content_type

    @property
    def spilled(self) -> bool:
        """True if the content is in a temporary file rather than in memory."""
        return self._content is not None and not isinstance(self._content, bytes)

    @property
    def memory_bytes(self) -> int:
        """Content held in memory: ``size`` until spilled or released, then 0."""
        return len(self._content) if isinstance(self._content, bytes) else 0

    def spill(self, directory: Path | None) -> None:
        """Move in-memory content to an anonymous temporary file in ``directory`` (None: the
        system's), for a file that has to wait: the storage sink bounds the memory of files
        waiting for an upload slot this way. Nothing happens if it is on disk already.

        Raises OSError (disk full, directory gone) with the content still in memory.
        """
        with self._lock:
            content = self._held()
            if not isinstance(content, bytes):
                return
            # Outlives this call (closed by release): no `with`. Unbuffered: it is written once
            # and then only read with pread, and a thousand waiting files need no write buffers.
            spill = tempfile.TemporaryFile(  # noqa: SIM115
                buffering=0, dir=directory, prefix="siem-export-storage-"
            )
            try:
                view, written = memoryview(content), 0
                while written < len(view):
                    written += os.write(spill.fileno(), view[written:])
            except BaseException:
                spill.close()
                raise
            self._content = spill

    def metadata(self) -> dict[str, str]:
        """Object metadata (S3 ``x-amz-meta-<name>``, Azure and GCS metadata).

        Names are lower-case letters and digits only: Azure metadata names must be C#
        identifiers (no ``-``), and proxies such as nginx drop HTTP headers with ``_`` by
        default, which would lose S3 metadata silently.
        """
        return {
            "eventcount": str(self.count),
            "firstoffset": str(self.first_offset),
            "lastoffset": str(self.last_offset),
            "sha256": self.sha256,
            "schemaversion": str(SCHEMA_VERSION),
        }

    def read_part(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer at the end, b"" past it); reads only
        that range, also from a spilled file, so a part upload never loads the whole file."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must not be negative")
        # The lock keeps release() from closing the descriptor during a read in another
        # thread: a number reused by a new file would otherwise serve someone else's bytes.
        with self._lock:
            content = self._held()
            if isinstance(content, bytes):
                return content[offset : offset + size]
            return os.pread(content.fileno(), min(size, max(0, self.size - offset)), offset)

    def open(self) -> BinaryIO:
        """A new seekable reader of the whole content with a position of its own (for SDKs
        that take a file object). It keeps working after ``release``; close it when done."""
        with self._lock:
            content = self._held()
            if isinstance(content, bytes):
                return io.BytesIO(content)
            return io.BufferedReader(_RangeReader(os.dup(content.fileno()), self.size))

    def release(self) -> None:
        """Free the content: close the temporary file, drop the bytes. Safe to call twice."""
        with self._lock:
            content, self._content = self._content, None
        if content is not None and not isinstance(content, bytes):
            content.close()

    def __enter__(self) -> FinishedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _held(self) -> bytes | IO[bytes]:
        if self._content is None:
            raise ValueError("the file was released")
        return self._content


class _RangeReader(io.RawIOBase):
    """Reads its own duplicate of the temporary file's descriptor through ``pread``, with a
    position of its own: readers and ``read_part`` never move each other's place."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        data = os.pread(self._fd, want, self._pos) if want else b""
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos
