"""The reads both stores share: one page (``query``, ``query_by_sequence``), one event
(``get``), and every matching event page by page (``stream``, ``stream_by_sequence``).

Both stores get these from :class:`PagedReads`, built on their own ``dialect`` and
``_select`` (run one statement, rows as events). Each page is its own short query (a keyset:
strictly after the last row of the previous page), so at most one page is in memory and no
transaction or cursor stays open while the consumer, an HTTP response being written to a slow
client, takes its time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from connectors.index.model import EventFilter, StoredEvent
from connectors.index.query import (
    Dialect,
    Statement,
    check_after,
    check_limit,
    event_by_id,
    page_by_sequence,
    page_by_time,
)

__all__ = ["PagedReads"]


class PagedReads:
    """Reads for a store with a ``dialect`` and a ``_select`` (see the module docstring)."""

    dialect: Dialect

    async def _select(self, what: str, statement: Statement) -> list[StoredEvent]:
        """Run one read statement (``what`` names it in errors); its rows as events."""
        raise NotImplementedError

    async def query(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredEvent]:
        """Up to ``limit`` matching events after ``after``, in (timestamp, event_id) order."""
        statement = page_by_time(self.dialect, tenant_id, where, after, limit)
        return await self._select("query", statement)

    async def query_by_sequence(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after_sequence: int | None,
        limit: int,
    ) -> list[StoredEvent]:
        """Up to ``limit`` matching events above ``after_sequence``, in ingestion order."""
        statement = page_by_sequence(self.dialect, tenant_id, where, after_sequence, limit)
        return await self._select("query", statement)

    async def get(self, tenant_id: str, event_id: str) -> StoredEvent | None:
        """The tenant's event with this id, or None (also when another tenant has it)."""
        rows = await self._select("get", event_by_id(self.dialect, tenant_id, event_id))
        return rows[0] if rows else None

    async def stream(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]:
        """Every matching event after ``after`` in (timestamp, event_id) order, page by page."""
        check_limit(page, "page")
        check_after(after)
        while True:
            rows = await self.query(tenant_id, where, after=after, limit=page)
            for row in rows:
                yield row
            if len(rows) < page:
                return
            after = rows[-1].position

    async def stream_by_sequence(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after_sequence: int | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]:
        """Every matching event above ``after_sequence`` in ingestion order, page by page."""
        check_limit(page, "page")
        while True:
            rows = await self.query_by_sequence(
                tenant_id, where, after_sequence=after_sequence, limit=page
            )
            for row in rows:
                yield row
            if len(rows) < page:
                return
            after_sequence = rows[-1].sequence
