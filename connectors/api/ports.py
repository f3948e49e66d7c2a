"""What the API needs from the index store: the read side and the account lookup.

``connectors.index.store.AuditStore`` satisfies this protocol; naming only these methods keeps
the API honest (it never writes events) and lets unit tests pass a small in-memory twin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from connectors.index.model import Account, EventFilter, StoredEvent


class ApiStore(Protocol):
    """The store operations the API calls, every one scoped to the caller's tenant."""

    async def query(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredEvent]: ...

    async def query_by_sequence(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after_sequence: int | None,
        limit: int,
    ) -> list[StoredEvent]: ...

    def stream(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]: ...

    async def get(self, tenant_id: str, event_id: str) -> StoredEvent | None: ...

    async def account_by_token_hash(self, token_hash: bytes) -> Account | None:
        """The account with this token hash, revoked ones too (the authenticator attributes a
        revoked token's use to its tenant), or None."""
        ...
