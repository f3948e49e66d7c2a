"""sqlite3 connections used from worker threads, so that no SQLite call blocks the event loop.

:class:`SqliteConnections` owns a thread pool and up to one connection per thread (opened on
first need with the store's settings). ``run(what, call)`` runs ``call(connection)`` on a worker
and awaits it; a connection serves one call at a time, and a call that fails half-way leaves no
transaction open behind it. The SQLite store keeps one of these with a single thread for the
writer and another for the readers.

``run(..., timeout=S)`` bounds a call: SQLite has no statement timeout, so a progress handler,
called every few thousand virtual-machine steps, interrupts the running statement once ``S``
seconds have passed since the call started (waiting for a worker thread does not count). The
handler is removed when the call ends; the connection stays usable.

sqlite3's exceptions are mapped here, at the boundary: a busy or locked database is
:class:`StoreUnavailableError` (retriable), a call interrupted at its deadline
:class:`StoreTimeoutError` (retriable), anything else :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from connectors.index.errors import StoreError, StoreTimeoutError, StoreUnavailableError

__all__ = ["SqliteConnections"]

T = TypeVar("T")
# Virtual-machine steps between two looks at the clock: well under a millisecond of work, and
# too few calls to slow a query measurably. An indexed lookup ends before the first look.
_PROGRESS_STEPS = 10_000


def _map_error(exc: sqlite3.Error, what: str) -> StoreError:
    """The package's error for a sqlite3 one: only a busy or locked database is worth a retry
    (a file that cannot be opened, a full disk or a corrupt file needs an operator)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in str(exc):
        return StoreUnavailableError(f"SQLite store: {what} failed: {exc}")
    return StoreError(f"SQLite store: {what} failed: {exc}")


class SqliteConnections:
    """Up to ``size`` connections, each used by one worker thread at a time."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int, name: str) -> None:
        self._connect = connect
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._opened: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    async def run(
        self,
        what: str,
        call: Callable[[sqlite3.Connection], T],
        *,
        timeout: float | None = None,
    ) -> T:
        """Run ``call(connection)`` on a worker thread; sqlite3 errors become StoreErrors.

        With ``timeout`` (seconds), a call still running after it is interrupted and raises
        :class:`StoreTimeoutError`.
        """
        if self._closed:
            raise StoreError("SQLite store: used after close()")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, what, call, timeout)

    def _call(self, what: str, call: Callable[[sqlite3.Connection], T], timeout: float | None) -> T:
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
                with self._lock:
                    self._opened.append(conn)
            try:
                if timeout is None:
                    return call(conn)
                return _call_with_deadline(conn, call, what, timeout)
            finally:
                if conn.in_transaction:  # a call that failed half-way leaves nothing open
                    conn.rollback()
                self._idle.put(conn)
        except sqlite3.Error as exc:
            raise _map_error(exc, what) from exc

    def close(self) -> None:
        """Wait for running calls, then close every connection (blocking)."""
        self._closed = True
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()


def _call_with_deadline(
    conn: sqlite3.Connection, call: Callable[[sqlite3.Connection], T], what: str, timeout: float
) -> T:
    """``call(conn)``, interrupted by the progress handler once ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
    try:
        return call(conn)
    except sqlite3.OperationalError as exc:
        # Nothing else interrupts these connections: an interrupt is the deadline's.
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
            raise StoreTimeoutError(
                f"SQLite store: {what} ran longer than the statement timeout ({timeout:g} s) "
                "and was interrupted",
                timeout,
            ) from exc
        raise
    finally:
        conn.set_progress_handler(None, 0)
