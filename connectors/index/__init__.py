"""The audit event index behind the REST API: a SQLite or PostgreSQL store of delivered events.

``siem-export run index`` writes each delivered event into the store (idempotently, with a
per-tenant ingestion sequence) and deletes what is past retention; ``siem-export serve``
answers queries from it; both manage machine accounts through it. Modules:

* :mod:`~connectors.index.store`: the :class:`AuditStore` contract and :func:`open_store`.
* :mod:`~connectors.index.model`: the values it takes and returns.
* :mod:`~connectors.index.query`: the SELECT statements both stores share.
* :mod:`~connectors.index.paging`: ``stream``/``stream_by_sequence`` on top of them.
* :mod:`~connectors.index.sqlite` (with :mod:`~connectors.index.sqlite_threads`, its worker
  threads) and :mod:`~connectors.index.postgres`: the two stores.
* :mod:`~connectors.index.schema` and ``migrations/<dialect>/NNNN_name.sql``: the schema.
* :mod:`~connectors.index.errors`: what goes wrong, with the ``retriable`` flag.
"""

from connectors.index.errors import (
    MigrationError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from connectors.index.model import Account, EventFilter, IndexedEvent, StoredEvent
from connectors.index.store import AuditStore, open_store, redact_url

__all__ = [
    "Account",
    "AuditStore",
    "EventFilter",
    "IndexedEvent",
    "MigrationError",
    "StoreError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "StoredEvent",
    "open_store",
    "redact_url",
]
