"""The index sink: the engine hands it tenants' events, it writes them into the audit store.

Who calls it: the delivery engine, through ``siem-export run index``. Events are acknowledged
only after the transaction holding them committed, so the engine commits Kafka offsets only
for indexed events; a replay after a crash inserts nothing twice (the store skips event ids it
already has, ``AuditStore.insert``).

Group commit: every lane sends its own small batches, and one transaction per batch would make
the database's commit rate the limit with many tenants. So sends queue their rows and wait; one
writer task takes everything queued (up to ``max_rows``) into ONE transaction and answers all
the waiting sends when it commits. While a transaction runs, the next batch gathers. A failed
transaction fails every send in it (retriable if the database is unavailable, else not, with
the store's reason); the engine retries each lane in order.

Retention: :meth:`IndexSink.run_retention` deletes events older than ``retention_days`` every
``retention_check_seconds``, in batches (one transaction each), until none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from connectors.index.config import StoreSettings
from connectors.index.errors import StoreError
from connectors.index.model import IndexedEvent
from connectors.index.store import AuditStore
from streams.engine.sink import Envelope, SendResult
from streams.errors import SinkError

_log = logging.getLogger(__name__)

METHOD = "index"
_MAX_ROWS = 5000
_DAY_MS = 86_400_000


@dataclass(eq=False)
class _Waiting:
    rows: list[IndexedEvent]
    done: asyncio.Future[None]


class IndexMetrics:
    """The index process's own series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transactions = Counter(
            "siem_export_index_transactions",
            "Insert transactions, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        self.rows = Counter(
            "siem_export_index_rows",
            "Rows handed to the store (inserted or already there), by result.",
            ["result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "siem_export_index_transaction_seconds",
            "Time of one insert transaction.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.deleted = Counter(
            "siem_export_index_retention_deleted_rows",
            "Rows deleted by retention.",
            registry=registry,
        )


class IndexSink:
    """Writes events into the audit store with group commit (see the module docstring)."""

    name = METHOD
    max_batch = 1000

    def __init__(
        self,
        store: AuditStore,
        settings: StoreSettings,
        *,
        max_rows: int = _MAX_ROWS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = IndexMetrics(registry or REGISTRY)
        self._max_rows = max_rows
        self._queue: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def send(self, tenant_id: str, batch: Sequence[Envelope]) -> SendResult | None:
        rows = [IndexedEvent.from_event(env.event, env.json) for env in batch]
        waiting = _Waiting(rows, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="index-writer")
        await waiting.done  # raises the transaction's SinkError
        return None

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            taken: list[_Waiting] = []
            count = 0
            while self._queue and (not taken or count + len(self._queue[0].rows) <= self._max_rows):
                waiting = self._queue.pop(0)
                taken.append(waiting)
                count += len(waiting.rows)
            await self._transaction(taken, count)

    async def _transaction(self, taken: list[_Waiting], count: int) -> None:
        rows = [row for waiting in taken for row in waiting.rows]
        began = time.perf_counter()
        try:
            inserted = await self.store.insert(rows)
        except Exception as exc:  # noqa: BLE001 - every waiting send must get an answer
            self.metrics.transactions.labels("failed").inc()
            retriable = exc.retriable if isinstance(exc, StoreError) else True
            if not isinstance(exc, StoreError):
                _log.exception("Index transaction failed unexpectedly.")
            error = SinkError(f"audit store: {exc}", retriable=retriable)
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_exception(error)
            _log.warning(
                "Index transaction failed.",
                extra={"rows": count, "error": str(exc), "retriable": retriable},
            )
            return
        self.metrics.seconds.observe(time.perf_counter() - began)
        self.metrics.transactions.labels("ok").inc()
        self.metrics.rows.labels("inserted").inc(inserted)
        self.metrics.rows.labels("present").inc(count - inserted)
        for waiting in taken:
            if not waiting.done.done():
                waiting.done.set_result(None)

    async def run_retention(self) -> None:
        """Delete events past the retention window, now and every ``retention_check_seconds``."""
        while True:
            cutoff = int(time.time() * 1000) - self.settings.retention_days * _DAY_MS
            try:
                deleted = await self.store.delete_older_than(
                    cutoff, batch=self.settings.retention_batch
                )
            except StoreError as exc:
                _log.warning("Retention failed; trying again later.", extra={"error": str(exc)})
            else:
                self.metrics.deleted.inc(deleted)
                if deleted:
                    _log.info(
                        "Retention deleted old events.",
                        extra={"rows": deleted, "days": self.settings.retention_days},
                    )
            await asyncio.sleep(self.settings.retention_check_seconds)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        error = SinkError("index stopping", retriable=True)
        for waiting in self._queue:
            if not waiting.done.done():
                waiting.done.set_exception(error)
        self._queue.clear()
        await self.store.close()
