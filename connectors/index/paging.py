"""Walking every matching event page by page: ``stream`` and ``stream_by_sequence``.

Both stores get these from :class:`PagedReads`, built on their own ``query`` and
``query_by_sequence``. Each page is its own short query (a keyset: strictly after the last row
of the previous page), so at most one page is in memory and no transaction or cursor stays open
while the consumer, an HTTP response being written to a slow client, takes its time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from connectors.index.model import EventFilter, StoredEvent
from connectors.index.query import check_after, check_limit

__all__ = ["PagedReads"]


class PagedReads:
    """``stream`` and ``stream_by_sequence`` for a store with ``query``/``query_by_sequence``."""

    async def query(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredEvent]:
        """One page in (timestamp_ms, event_id) order (the store's own)."""
        raise NotImplementedError

    async def query_by_sequence(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after_sequence: int | None,
        limit: int,
    ) -> list[StoredEvent]:
        """One page in ingestion order (the store's own)."""
        raise NotImplementedError

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
