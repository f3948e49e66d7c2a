"""Assembling one storage file: events in, a finished file with its digest and metadata out.

Who calls it: the storage sink keeps one :class:`FileBuilder` per open (tenant, partition)
file. Steps:

1. ``add`` each event, in partition order.
2. Ask ``should_close`` after each batch, and again when the idle timer set from ``deadline``
   fires, so files close on time even when no event comes.
3. ``finish``: the builder hands over a :class:`FinishedFile`; name it with
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

Memory: stored bytes (compressed, if gzip) stay in memory up to ``spill_threshold_bytes``;
the chunk that would pass it moves the whole content to an anonymous temporary file in
``spill_dir`` (``tempfile.TemporaryFile``: it has no name on disk, so even a ``kill -9``
leaves nothing behind), and everything after goes there too. Besides that buffer an open
gzip file holds zlib's state (about 256 KiB at most), and each spilled file one descriptor.
A finished file still in memory can be moved to such a file with ``FinishedFile.spill`` (the
sink does it for files that must wait for an upload slot).

Not thread-safe, except ``FinishedFile.read_part``, which reads at explicit positions and may
run in worker threads while the event loop goes on.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, BinaryIO

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

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # deflate in a gzip wrapper
_LAZY_GZIP_BYTES = 32 * 1024
"""Uncompressed bytes a gzip file holds before it starts its compressor (see FileBuilder)."""


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
    ) -> None:
        if spill_threshold_bytes < 0:
            raise ValueError("spill_threshold_bytes must not be negative")
        self.file_format: FileFormat = file_format
        self.compression: Compression = compression
        self._threshold = spill_threshold_bytes
        self._spill_dir = spill_dir
        self._clock = clock
        self._level = compression_level
        # zlib's compressor state costs ~150 KiB: a small file (most of them, with thousands of
        # tenants) keeps its first _LAZY_GZIP_BYTES uncompressed instead and is compressed in
        # one go when it finishes; deflate gives the same bytes however the input is fed.
        self._compressor: zlib._Compress | None = None
        self._raw = bytearray()
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._count = 0
        self._first_offset: int | None = None
        self._last_offset: int | None = None
        self._first_timestamp_ms: int | None = None
        self._opened_at: float | None = None
        self._uncompressed = 0
        self._stored = 0
        self._state = "open"  # open | finished | discarded | broken

    @classmethod
    def for_destination(
        cls,
        dest: StorageDestination,
        settings: StorageSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> FileBuilder:
        """A builder with the destination's format and compression and the process's spill
        settings."""
        return cls(
            file_format=dest.format,
            compression=dest.compression,
            spill_threshold_bytes=settings.spill_threshold_bytes,
            spill_dir=settings.spill_dir,
            compression_level=settings.compression_level,
            clock=clock,
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
        """Bytes produced so far (compressed if gzip); zlib may still hold some back."""
        return self._stored

    @property
    def memory_bytes(self) -> int:
        """Content held in memory: stored bytes until the file spills, plus the start of a
        gzip file not yet compressed (at most _LAZY_GZIP_BYTES)."""
        return len(self._memory) + len(self._raw)

    @property
    def disk_bytes(self) -> int:
        """Content in the temporary file (0 until the file spills)."""
        return self._stored if self._file is not None else 0

    @property
    def spilled(self) -> bool:
        """True once the content lives in a temporary file."""
        return self._file is not None

    def add(self, json_bytes: bytes, offset: int, timestamp_ms: int) -> None:
        """Append one event's JSON (one line, no ``\\n``) at ``offset`` of the partition.

        Offsets must increase: a smaller or equal one is a bug upstream and raises ValueError
        before anything is written. An OSError (disk full while spilling) leaves the builder
        unusable: discard it and rebuild the file from Kafka.
        """
        self._check_open()
        if not json_bytes or b"\n" in json_bytes:
            raise ValueError("an event must be non-empty JSON on one line")
        if self._last_offset is not None and offset <= self._last_offset:
            raise ValueError(f"offset {offset} does not follow {self._last_offset}")
        if self.file_format == "jsonl":
            data = json_bytes + b"\n"
        else:
            data = (b"," if self._count else b"[") + json_bytes
        self._write(data)
        if self._count == 0:
            self._first_offset, self._first_timestamp_ms = offset, timestamp_ms
            self._opened_at = self._clock()
        self._count += 1
        self._last_offset = offset

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

        Raises ValueError on an empty builder: there is no file without events.
        """
        self._check_open()
        first, last, first_ms = self._first_offset, self._last_offset, self._first_timestamp_ms
        if first is None or last is None or first_ms is None:
            raise ValueError("no events: an empty builder has no file to finish")
        try:
            if self.file_format == "json":
                self._write(b"]")
            if self.compression == "gzip":
                if self._compressor is None:
                    self._put(self._start_compressor_and_compress())
                assert self._compressor is not None  # noqa: S101 - set just above
                self._put(self._compressor.flush())
                self._compressor = None
            if self._file is not None:
                self._file.flush()
        except BaseException:
            self._state = "broken"
            raise
        content: bytes | IO[bytes] = self._file if self._file is not None else bytes(self._memory)
        self._file, self._memory, self._state = None, bytearray(), "finished"
        return FinishedFile(
            content,
            size=self._stored,
            sha256=self._hash.hexdigest(),
            count=self._count,
            first_offset=first,
            last_offset=last,
            first_timestamp_ms=first_ms,
            uncompressed_bytes=self._uncompressed,
            content_type=CONTENT_TYPES[(self.file_format, self.compression)],
        )

    def discard(self) -> None:
        """Drop the content and close the temporary file, if any. Safe to call twice, or
        after ``finish`` (then it does nothing: the FinishedFile owns the content)."""
        if self._state in ("open", "broken"):
            self._state = "discarded"
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory, self._raw = bytearray(), bytearray()
        self._compressor = None

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"the builder is {self._state}")

    def _write(self, data: bytes) -> None:
        self._uncompressed += len(data)
        try:
            if self.compression != "gzip":
                self._put(data)
                return
            if self._compressor is None:
                self._raw += data
                if len(self._raw) < min(_LAZY_GZIP_BYTES, self._threshold):
                    return  # (a threshold of 0 keeps nothing in memory, raw or not)
                data = self._start_compressor()
            self._put(self._compressor.compress(data))  # type: ignore[union-attr]
        except BaseException:
            self._state = "broken"
            raise

    def _start_compressor_and_compress(self) -> bytes:
        raw = self._start_compressor()
        assert self._compressor is not None  # noqa: S101 - set by _start_compressor
        return self._compressor.compress(raw)

    def _start_compressor(self) -> bytes:
        """Create the compressor; returns the raw bytes held so far (to compress first)."""
        self._compressor = zlib.compressobj(self._level, zlib.DEFLATED, _GZIP_WBITS)
        raw, self._raw = bytes(self._raw), bytearray()
        return raw

    def _put(self, stored: bytes) -> None:
        if not stored:
            return
        if self._file is None and len(self._memory) + len(stored) > self._threshold:
            # Outlives this call (closed by discard or FinishedFile.release): no `with`.
            spill = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self._spill_dir, prefix="siem-export-storage-"
            )
            try:
                spill.write(self._memory)
            except BaseException:
                spill.close()
                raise
            # A new object, not clear(): the old buffer's memory goes back at once.
            self._file, self._memory = spill, bytearray()
        if self._file is not None:
            self._file.write(stored)
        else:
            self._memory += stored
        self._hash.update(stored)
        self._stored += len(stored)


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
