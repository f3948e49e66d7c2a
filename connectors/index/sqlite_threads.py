"""sqlite3 connections used from worker threads, so that no SQLite call blocks the event loop.

:class:`SqliteConnections` owns a thread pool and up to one connection per thread (opened on
first need with the store's settings). ``run(what, call)`` runs ``call(connection)`` on a worker
and awaits it; a connection serves one call at a time, and a call that fails half-way leaves no
transaction open behind it. The SQLite store keeps one of these with a single thread for the
writer and another for the readers.

sqlite3's exceptions are mapped here, at the boundary: a busy or locked database is
:class:`StoreUnavailableError` (retriable), anything else :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from connectors.index.errors import StoreError, StoreUnavailableError

__all__ = ["SqliteConnections"]

T = TypeVar("T")


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

    async def run(self, what: str, call: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``call(connection)`` on a worker thread; sqlite3 errors become StoreErrors."""
        if self._closed:
            raise StoreError("SQLite store: used after close()")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, what, call)

    def _call(self, what: str, call: Callable[[sqlite3.Connection], T]) -> T:
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
                with self._lock:
                    self._opened.append(conn)
            try:
                return call(conn)
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
