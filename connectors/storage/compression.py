"""The gzip side of the storage files: a file's compressed output, and the thread that
compresses every open file's content beside the event loop.

Who calls it: ``connectors.storage.files.FileBuilder`` (one :class:`FileOutput` per file; the
storage sink owns one :class:`CompressionWorker` and hands it to every builder). The deflate
is zlib-ng's (python-zlib-ng, the same API as the standard zlib module): standard gzip
streams, about half the CPU of zlib's at the same level and slightly smaller output on our
events (docs/storage.md, "Compression level"). zlib-ng and hashlib release the GIL on large
buffers, so with the worker the compression of the files runs on another core while the event
loop goes on with the next events. The bytes depend on the content only, never on how it was
handed over: one compressor per file, fed in order and always in slices of
:data:`GZIP_SLICE_BYTES` (zlib-ng's output, unlike zlib's, changes with the sizes of the
pieces it is given), so a replayed file is byte for byte the first one.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from zlib_ng import zlib_ng

from connectors.storage.config import MiB

_log = logging.getLogger(__name__)

GZIP_WBITS = 16 + zlib_ng.MAX_WBITS  # deflate in a gzip wrapper
GZIP_SLICE_BYTES = 32 * 1024
"""The compressor is only ever given pieces of exactly this size (the last one of a file
excepted), whatever the sizes of the chunks handed over."""


class CompressionWorker:
    """One thread that runs the gzip of every open file (and the SHA-256 of its output) beside
    the event loop. zlib-ng and hashlib release the GIL on large buffers, so the compression uses
    another core while the loop goes on with the next events.

    Jobs run one at a time in the order they were submitted: a file's chunks (which all use
    that file's one compressor) are therefore compressed in order. ``submit`` blocks its caller
    while more than ``max_pending_bytes`` of submitted input is still waiting or being
    compressed: the worker cannot fall behind by more than that, and a loop that produces
    faster than one core compresses waits for it (as it did when it compressed itself).
    """

    def __init__(self, *, max_pending_bytes: int = 8 * MiB, name: str = "storage-gzip") -> None:
        if max_pending_bytes < 1:
            raise ValueError("max_pending_bytes must be positive")
        self._limit = max_pending_bytes
        self._name = name
        self._cond = threading.Condition()
        self._jobs: deque[tuple[Callable[[], None], int, FileOutput | None]] = deque()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending_bytes(self) -> int:
        """Input submitted and not yet compressed."""
        return self._pending

    def submit(self, job: Callable[[], None], size: int, owner: FileOutput | None = None) -> None:
        """Run ``job`` (which must not raise) after every job submitted before; ``size``
        counts against ``max_pending_bytes`` until it has run (0: it never waits). The
        ``owner``'s ``jobs`` counts the job until it has run."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the compression worker is closed")
            while size and self._pending and self._pending + size > self._limit:
                self._cond.wait()
            self._pending += size
            if owner is not None:
                owner.jobs += 1
            self._jobs.append((job, size, owner))
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Run what was submitted, then stop the thread. Safe to call twice."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job, size, owner = self._jobs.popleft()
            try:
                job()
            except BaseException:  # a job must not raise; never lose the thread over one
                _log.exception("Compression job failed unexpectedly.")
            finally:
                with self._cond:
                    self._pending -= size
                    if owner is not None:
                        owner.jobs -= 1
                    self._cond.notify_all()


class FileOutput:
    """The stored side of a file: compressor, digest, and the content in memory or spilled.

    Used by one thread at a time: the builder's (without a worker, or until it hands anything
    over), then the worker's; the builder reads the sizes for its gauges (ints: at worst a
    moment stale). In the worker, a failure is kept in ``error`` for the builder to raise.
    """

    __slots__ = (
        "_compressor",
        "_level",
        "_slice",
        "_spill_dir",
        "_threshold",
        "dropped",
        "error",
        "file",
        "hash",
        "jobs",
        "memory",
        "stored",
    )

    def __init__(self, level: int, threshold: int, spill_dir: Path | None) -> None:
        self._level = level
        self._threshold = threshold
        self._spill_dir = spill_dir
        self._compressor: zlib_ng._Compress | None = None
        self._slice = bytearray()  # the start of the next slice, under GZIP_SLICE_BYTES
        self.memory = bytearray()
        self.file: IO[bytes] | None = None
        self.hash = hashlib.sha256()
        self.stored = 0
        self.error: BaseException | None = None
        self.dropped = False
        self.jobs = 0
        """Jobs of this file submitted to the worker and not yet run (changed under the
        worker's lock; 0 means the worker is done with the file for now)."""

    def compress(self, raw: bytes | bytearray) -> None:
        """Compress ``raw`` after what came before, in whole slices; the rest waits for the
        next call (or ``end``). The compressor (about 280 KiB) starts with the first whole
        slice: a file under one slice never holds one before it ends."""
        with memoryview(raw) as view:
            start = 0
            if self._slice:
                start = min(len(view), GZIP_SLICE_BYTES - len(self._slice))
                self._slice += view[:start]
                if len(self._slice) < GZIP_SLICE_BYTES:
                    return
                self._deflate(self._slice)
                self._slice = bytearray()
            whole = start + (len(view) - start) // GZIP_SLICE_BYTES * GZIP_SLICE_BYTES
            for at in range(start, whole, GZIP_SLICE_BYTES):
                self._deflate(view[at : at + GZIP_SLICE_BYTES])
            self._slice += view[whole:]

    @property
    def unsliced(self) -> int:
        """Uncompressed bytes waiting for a whole slice (or the end), in memory."""
        return len(self._slice)

    def _deflate(self, piece: bytes | bytearray | memoryview) -> zlib_ng._Compress:
        if self._compressor is None:
            self._compressor = zlib_ng.compressobj(self._level, zlib_ng.DEFLATED, GZIP_WBITS)
        self.put(self._compressor.compress(piece))
        return self._compressor

    def end(self, raw: bytes | bytearray, gzip: bool) -> None:
        """The last content: compress it and end the gzip stream (if gzip), flush the file."""
        if gzip:
            self.compress(raw)
            self.put(self._deflate(self._slice).flush())
            self._compressor, self._slice = None, bytearray()
        else:
            self.put(raw)
        if self.file is not None:
            self.file.flush()

    def compress_job(self, raw: bytes | bytearray) -> None:
        """``compress`` in the worker: a failure is kept for the builder; a dropped file is
        not worked on any more."""
        if self.dropped or self.error is not None:
            return
        try:
            self.compress(raw)
        except BaseException as exc:  # noqa: BLE001 - handed to the builder's thread
            self.error = exc

    def put(self, stored: bytes | bytearray) -> None:
        if not stored:
            return
        if self.file is None and len(self.memory) + len(stored) > self._threshold:
            self.spill()
        if self.file is not None:
            self.file.write(stored)
        else:
            self.memory += stored
        self.hash.update(stored)
        self.stored += len(stored)

    def spill(self) -> None:
        """Move the stored content to an anonymous temporary file now; what comes later goes
        there too. Nothing happens if it is there already. OSError if the disk refuses (the
        content stays in memory)."""
        if self.file is not None:
            return
        # Outlives this call (closed by close() or FinishedFile.release): no `with`.
        spill = tempfile.TemporaryFile(  # noqa: SIM115
            dir=self._spill_dir, prefix="siem-export-storage-"
        )
        try:
            spill.write(self.memory)
        except BaseException:
            spill.close()
            raise
        # A new object, not clear(): the old buffer's memory goes back at once.
        self.file, self.memory = spill, bytearray()

    def spill_job(self) -> None:
        """``spill`` in the worker, after the file's chunks submitted before it; a failure is
        kept for the builder, like ``compress_job``'s."""
        if self.dropped or self.error is not None:
            return
        try:
            self.spill()
        except BaseException as exc:  # noqa: BLE001 - handed to the builder's thread
            self.error = exc

    def close(self) -> None:
        """Drop the content and the compressor, close the temporary file."""
        self.dropped = True
        file, self.file = self.file, None
        self.memory, self._compressor = bytearray(), None
        if file is not None:
            file.close()
