"""What the index process and the REST API need from the audit event store, and how to open one.

``open_store(url)`` reads ``SIEM_EXPORT_STORE__URL``'s value and returns an :class:`AuditStore`:

* ``sqlite:///absolute/path/audit.db``: a SQLite file (created if missing; its directory must
  exist), the embedded default for a single machine. Percent-escapes in the path are decoded.
* ``sqlite:///:memory:``: a private in-memory SQLite database, gone on ``close()`` (tests,
  demos). Only this one process sees it.
* ``postgresql://user[:password]@host[:port]/database[?sslmode=…&…]`` (``postgres://`` too):
  PostgreSQL through a small connection pool. Query parameters are libpq's connection
  parameters (``sslmode``, ``sslrootcert``, ``connect_timeout``, ``application_name``, …);
  ``?host=/run/postgresql`` reaches a Unix socket.

A URL that cannot work raises ``ValueError`` saying why, without ever quoting the password;
:func:`redact_url` is the form to show in logs and errors.

Contract of every store (both implementations pass the same tests,
``tests/integration/test_index_store.py``):

* Tenant scoping: every event read names the tenant in its SQL ``WHERE`` clause; an event id
  of another tenant is simply not there.
* ``migrate()`` before anything else: brings the schema to this code's version and returns it;
  safe to run from several processes at once.
* ``insert(events)``: one transaction; an id the tenant already has is skipped (at-least-once
  delivery must not duplicate rows), so is a repeat within the batch; each new row gets the
  tenant's next ingestion sequence, in batch order; returns the number of rows added. Once it
  returns, the rows are durable: the index commits its Kafka offsets after it.
* Sequences: strictly increasing per tenant, never reused (also after retention), and
  committed in order, so a reader paging with ``query_by_sequence`` never sees N+1 before N.
* Reads: ``query`` pages in (timestamp_ms, event_id) order, ``query_by_sequence`` in sequence
  order, both strictly after the given key; ``stream`` walks all pages without holding more
  than one in memory.
* ``delete_older_than`` deletes in batches, each its own transaction.
* Machine accounts: ``account_by_token_hash`` finds an account by its token's hash whether it
  is active or revoked (the API must know whose revoked token is being used, to record the
  attempt in that tenant's audit log); the caller checks ``Account.active``.
* Statement timeout: opened with ``statement_timeout`` (``siem-export serve`` does), a read
  still running after that many seconds is cancelled and raises ``StoreTimeoutError``
  (on PostgreSQL every statement but the migrations' is bounded, on SQLite the reads).
* Errors: :mod:`connectors.index.errors` only, with the ``retriable`` flag.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from connectors.index.model import Account, EventFilter, IndexedEvent, StoredEvent
from connectors.index.sqlite import MEMORY, SqliteStore

__all__ = ["AuditStore", "open_store", "redact_url"]

_POSTGRES_SCHEMES = ("postgresql", "postgres")


class AuditStore(Protocol):
    """The audit event index: written by ``siem-export run index``, read by the REST API."""

    async def migrate(self) -> int:
        """Apply pending schema migrations in order; the schema version afterwards."""
        ...

    async def insert(self, events: Sequence[IndexedEvent]) -> int:
        """Store new events idempotently in one transaction; how many rows were added."""
        ...

    async def query(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[StoredEvent]:
        """One page in (timestamp_ms, event_id) order, strictly after ``after``."""
        ...

    async def query_by_sequence(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after_sequence: int | None,
        limit: int,
    ) -> list[StoredEvent]:
        """One page in ingestion-sequence order, strictly above ``after_sequence``."""
        ...

    def stream(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after: tuple[int, str] | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]:
        """Every matching event after ``after`` in (timestamp_ms, event_id) order."""
        ...

    def stream_by_sequence(
        self,
        tenant_id: str,
        where: EventFilter,
        *,
        after_sequence: int | None,
        page: int = 500,
    ) -> AsyncIterator[StoredEvent]:
        """Every matching event above ``after_sequence`` in ingestion order."""
        ...

    async def get(self, tenant_id: str, event_id: str) -> StoredEvent | None:
        """The tenant's event with this id, or None."""
        ...

    async def delete_older_than(self, cutoff_ms: int, batch: int = 10_000) -> int:
        """Delete events with ``timestamp_ms < cutoff_ms`` in batches; how many."""
        ...

    async def create_account(
        self, tenant_id: str, name: str, scopes: Sequence[str], token_hash: bytes
    ) -> Account:
        """A new machine account for the tenant; only the token's hash is stored."""
        ...

    async def account_by_token_hash(self, token_hash: bytes) -> Account | None:
        """The account with this token hash, active or revoked (see ``Account.active``), or
        None if no account has it."""
        ...

    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]:
        """Accounts (revoked ones too) of one tenant, or of all, oldest first."""
        ...

    async def revoke_account(self, account_id: str) -> bool:
        """Revoke an active account; False if there is no such active account."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""
        ...


def open_store(
    url: str, *, pool_size: int = 4, statement_timeout: float | None = None
) -> AuditStore:
    """The store a URL names (see the module's docstring); connects lazily, on first use.

    ``pool_size`` is the most connections PostgreSQL gets from this process, or the number
    of SQLite reader threads. ``statement_timeout`` (seconds) bounds the queries, for the
    API; None leaves them unbounded. ``ValueError`` names what is wrong with the URL.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("store URL must be a non-empty string")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("store URL must not contain spaces or control characters")
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SqliteStore(sqlite_path(url), readers=pool_size, statement_timeout=statement_timeout)
    if scheme in _POSTGRES_SCHEMES:
        from connectors.index.postgres import PostgresStore  # psycopg only where it is used

        check_postgres_url(url)
        return PostgresStore(
            url,
            endpoint=redact_url(url),
            pool_size=pool_size,
            statement_timeout=statement_timeout,
        )
    raise ValueError(
        f"store URL must start with sqlite:/// or postgresql:// (got scheme {scheme[:20]!r})"
        if ":" in url
        else "store URL has no scheme"
    )


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///…`` URL (or ``:memory:``); ValueError if malformed."""
    parts = urlsplit(url)
    if not url.startswith("sqlite:///"):
        raise ValueError(
            "SQLite store URL must be sqlite:///absolute/path/audit.db "
            "(three slashes: it names no host)"
        )
    if parts.query or parts.fragment:
        raise ValueError("SQLite store URL must not have a query string or #fragment")
    path = unquote(parts.path)
    if path == "/" + MEMORY:
        return MEMORY
    if path == "/" or path.endswith("/"):
        raise ValueError("SQLite store URL must name a file, not a directory")
    if "\x00" in path:
        raise ValueError("SQLite store URL must not contain NUL")
    return path


def check_postgres_url(url: str) -> None:
    """ValueError unless ``url`` is a usable PostgreSQL URL (never quoting its password)."""
    parts = urlsplit(url)
    if not url.lower().startswith(tuple(f"{s}://" for s in _POSTGRES_SCHEMES)):
        raise ValueError("PostgreSQL store URL must start with postgresql://")
    if parts.fragment:
        raise ValueError("PostgreSQL store URL must not have a #fragment")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("PostgreSQL store URL has an invalid port") from None
    if "," in parts.netloc:
        raise ValueError("PostgreSQL store URL must name one host")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise ValueError(
            "PostgreSQL store URL must name a database: postgresql://user@host:5432/audit"
        )
    import psycopg.conninfo  # the store module imports psycopg anyway

    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        message = str(exc)
        if parts.password:
            message = message.replace(parts.password, "***")
            message = message.replace(unquote(parts.password), "***")
        raise ValueError(f"PostgreSQL store URL is not valid: {message}") from None


def redact_url(url: str) -> str:
    """The URL without its password and query string, for logs and error messages:
    ``postgresql://siem@db.internal:5432/audit``; a SQLite URL as it is."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    user = f"{parts.username}@" if parts.username else ""
    return SplitResult(parts.scheme, f"{user}{host}{port}", parts.path, "", "").geturl()
