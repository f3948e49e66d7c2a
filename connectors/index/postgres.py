"""The index store in PostgreSQL: the production store, shared by every index and API replica.

psycopg 3 in async mode with a small ``psycopg_pool.AsyncConnectionPool`` (opened on first
use; each connection is checked when it is taken, so a server restart costs no failed
request). Connections are in autocommit mode: a read is one statement and one round trip, and
the writes open their transaction explicitly. Every value is a bound parameter; the only SQL
text built at run time comes from :mod:`connectors.index.query`'s fixed fragments. The
transactions run at READ COMMITTED (set on each connection, whatever the server's default),
which the sequence scheme below relies on.

``statement_timeout`` (seconds, None by default) becomes the ``statement_timeout`` of every
pool connection, set once when the connection is made: the server cancels a statement that
runs longer, including time spent waiting for a lock, and it raises
:class:`StoreTimeoutError`. ``siem-export serve`` sets it, so that no API query runs unbounded;
``run index`` does not (its inserts may wait for a tenant's counter lock, its retention
batches take their time). Migrations lift it on their connection while they run: building an
index on a large table takes longer than any query should.

Driver errors are mapped at this boundary: a statement cancelled while a statement timeout is
set becomes :class:`StoreTimeoutError`; connection trouble, a pool with no free connection in
time, deadlocks and serialisation failures become :class:`StoreUnavailableError` (retriable);
anything else :class:`StoreError`. Messages name the server as
:func:`connectors.index.store.redact_url` shows it, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, IsolationLevel
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from connectors.index.errors import (
    MigrationError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from connectors.index.model import (
    Account,
    IndexedEvent,
    StoredEvent,
    check_account_fields,
)
from connectors.index.paging import PagedReads
from connectors.index.query import (
    Statement,
    check_limit,
    row_to_event,
)
from connectors.index.schema import (
    SCHEMA_MIGRATIONS_DDL,
    Migration,
    load_migrations,
    pending_migrations,
)

__all__ = ["PostgresStore"]

# The key of the session-level advisory lock that serialises migrations between processes
# (every index and API replica may call migrate() at start): the first 8 bytes of a hash of a
# fixed name, so it cannot collide with another application's small integer keys by accident.
MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"siem-export connectors.index migrations").digest()[:8], "big", signed=True
)

# Step 1 of insert: a counter row for every tenant of the batch (new tenants start at 0)...
_ENSURE_COUNTERS = (
    "INSERT INTO tenant_sequences (tenant_id, last_sequence) "
    'SELECT t, 0 FROM unnest(%s::text[]) AS t ORDER BY t COLLATE "C" '
    "ON CONFLICT (tenant_id) DO NOTHING"
)
# ... locked in tenant order: two batches that share tenants queue up instead of deadlocking.
_LOCK_COUNTERS = (
    "SELECT tenant_id, last_sequence FROM tenant_sequences "
    "WHERE tenant_id = ANY(%s::text[]) ORDER BY tenant_id FOR UPDATE"
)
# Step 2: which of the batch's ids are stored already (read after the locks are held).
_EXISTING = (
    "SELECT tenant_id, event_id FROM audit_events "
    "WHERE (tenant_id, event_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
)
# Step 3: the new rows, one statement whatever the batch size.
_INSERT_EVENTS = (
    "INSERT INTO audit_events (tenant_id, event_id, sequence, timestamp_ms, action, category, "
    "actor_id, actor_type, resource_type, resource_id, outcome, source_ip, body) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], "
    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::bytea[])"
)
# Step 4: the counters' new values.
_UPDATE_COUNTERS = (
    "UPDATE tenant_sequences AS s SET last_sequence = v.last "
    "FROM unnest(%s::text[], %s::bigint[]) AS v(tenant_id, last) WHERE s.tenant_id = v.tenant_id"
)
_ACCOUNT_COLUMNS = "account_id, tenant_id, name, scopes, created_ms, revoked_ms"
# OperationalError covers lost connections and the server's transient refusals (deadlock
# detected, serialization failure, lock not available, too many connections, shutdown).
_RETRIABLE: tuple[type[Exception], ...] = (
    PoolTimeout,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _account(row: Sequence[Any]) -> Account:
    account_id, tenant_id, name, scopes, created_ms, revoked_ms = row
    return Account(
        account_id=account_id,
        tenant_id=tenant_id,
        name=name,
        scopes=tuple(scopes),
        created_ms=int(created_ms),
        revoked_ms=None if revoked_ms is None else int(revoked_ms),
    )


def _timeout_setting(seconds: float | None) -> str:
    """The value of PostgreSQL's ``statement_timeout`` for ``seconds`` ("0": none)."""
    return "0" if seconds is None else f"{max(1, round(seconds * 1000))}ms"


class PostgresStore(PagedReads):
    """:class:`connectors.index.store.AuditStore` on a PostgreSQL database."""

    dialect = "postgresql"

    def __init__(
        self,
        conninfo: str,
        *,
        endpoint: str,
        pool_size: int = 4,
        timeout: float = 10.0,
        statement_timeout: float | None = None,
    ) -> None:
        check_limit(pool_size, "pool_size")
        if statement_timeout is not None and not statement_timeout > 0:
            raise ValueError(f"statement_timeout must be > 0 seconds, got {statement_timeout!r}")
        self.endpoint = endpoint
        self._statement_timeout = statement_timeout
        self._pool = AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=pool_size,
            open=False,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            timeout=timeout,
            name="siem-export-index",
        )
        self._opened = False
        self._open_lock = asyncio.Lock()

    async def _configure(self, conn: AsyncConnection[Any]) -> None:
        """Each new pool connection: READ COMMITTED whatever the server's default, and the
        statement timeout if there is one (else the server's own setting stays)."""
        await conn.set_isolation_level(IsolationLevel.READ_COMMITTED)
        if self._statement_timeout is not None:
            await self._set_statement_timeout(conn, self._statement_timeout)

    @staticmethod
    async def _set_statement_timeout(conn: AsyncConnection[Any], seconds: float | None) -> None:
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, false)", (_timeout_setting(seconds),)
        )

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[AsyncConnection[Any]]:
        """A pool connection for one operation; driver errors leave as StoreErrors."""
        if not self._opened:
            async with self._open_lock:
                if not self._opened:
                    await self._pool.open(wait=False)
                    self._opened = True
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.QueryCanceled as exc:
            if self._statement_timeout is None:  # cancelled by someone else: as before
                raise StoreUnavailableError(
                    f"PostgreSQL store at {self.endpoint}: {what} failed: {exc}"
                ) from exc
            raise StoreTimeoutError(
                f"PostgreSQL store at {self.endpoint}: {what} ran longer than the statement "
                f"timeout ({self._statement_timeout:g} s): {exc}",
                self._statement_timeout,
            ) from exc
        except _RETRIABLE as exc:
            raise StoreUnavailableError(
                f"PostgreSQL store at {self.endpoint}: {what} failed: {exc}"
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store at {self.endpoint}: {what} failed: {exc}") from exc

    # -- schema -------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply the pending migrations, each in its own transaction; the schema version.

        A session-level advisory lock (:data:`MIGRATION_LOCK_KEY`) is held from before the
        bookkeeping table is created until the last migration is committed, so processes
        starting together apply each migration once: the others wait, then find nothing
        pending. The lock goes with the session if the process dies.
        """
        known = load_migrations("postgresql")
        async with self._connection("migrate") as conn:
            if self._statement_timeout is None:
                return await self._migrate(conn, known)
            # Waiting for another replica's migration and building an index on a large table
            # may take minutes: no timeout while migrating, the connection's back afterwards.
            await self._set_statement_timeout(conn, None)
            try:
                return await self._migrate(conn, known)
            finally:
                if not conn.closed:
                    await self._set_statement_timeout(conn, self._statement_timeout)

    async def _migrate(self, conn: AsyncConnection[Any], known: tuple[Migration, ...]) -> int:
        """``migrate`` on one connection: take the lock, apply what is pending, unlock."""
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await conn.execute(SCHEMA_MIGRATIONS_DDL)
            cursor = await conn.execute("SELECT version, checksum FROM schema_migrations")
            applied = {int(v): str(c) for v, c in await cursor.fetchall()}
            for migration in pending_migrations("postgresql", known, applied):
                try:
                    async with conn.transaction():
                        # No parameters: psycopg sends the file as one simple query, which
                        # may hold many statements.
                        await conn.execute(migration.sql.encode("utf-8"))
                        await conn.execute(
                            "INSERT INTO schema_migrations "
                            "(version, name, checksum, applied_ms) VALUES (%s, %s, %s, %s)",
                            (migration.version, migration.name, migration.checksum, _now_ms()),
                        )
                except psycopg.Error as exc:
                    if isinstance(exc, _RETRIABLE):
                        raise
                    raise MigrationError(
                        f"PostgreSQL migration {migration.version:04d}_{migration.name} "
                        f"failed: {exc}"
                    ) from exc
                applied[migration.version] = migration.checksum
            return max(applied, default=0)
        finally:
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))

    # -- events -------------------------------------------------------------------------

    async def insert(self, events: Sequence[IndexedEvent]) -> int:
        """Store the events not stored yet, in one transaction; how many rows were added.

        Steps (one transaction, READ COMMITTED):

        1. Make sure each tenant of the batch has a counter row, then lock those rows
           (``FOR UPDATE``, in tenant order) and read the last sequence of each. From here to
           the commit no other transaction can assign this tenant's sequences.
        2. Read which of the batch's ids the tenants already have. Every writer takes the
           tenant's lock before inserting, and each statement of a READ COMMITTED
           transaction sees what committed before it, so this answer stays true until our
           commit.
        3. Give each new event (first occurrence of an id in the batch, batch order) the
           tenant's next sequence and insert them all with one statement.
        4. Write the tenants' new last sequence to their counter rows, and commit: rows and
           counters become visible together, and only then is the lock released, so a
           transaction waiting for the same tenant assigns higher numbers that commit later.
        """
        fresh: dict[tuple[str, str], IndexedEvent] = {}
        for ev in events:
            fresh.setdefault((ev.tenant_id, ev.event_id), ev)
        if not fresh:
            return 0
        tenants = sorted({tenant for tenant, _ in fresh})
        async with self._connection("insert") as conn, conn.transaction():
            # Step 1.
            await conn.execute(_ENSURE_COUNTERS, (tenants,))
            cursor = await conn.execute(_LOCK_COUNTERS, (tenants,))
            last = {str(t): int(n) for t, n in await cursor.fetchall()}
            if sorted(last) != tenants:
                raise StoreError("PostgreSQL store: insert could not lock every tenant counter")
            # Step 2.
            keys = list(fresh)
            cursor = await conn.execute(_EXISTING, ([t for t, _ in keys], [e for _, e in keys]))
            for tenant, event_id in await cursor.fetchall():
                del fresh[(tenant, event_id)]
            if not fresh:
                return 0
            # Step 3.
            columns: list[list[Any]] = [[] for _ in range(13)]
            touched: dict[str, int] = {}
            for ev in fresh.values():
                sequence = last[ev.tenant_id] + 1
                last[ev.tenant_id] = touched[ev.tenant_id] = sequence
                row = (
                    ev.tenant_id,
                    ev.event_id,
                    sequence,
                    ev.timestamp_ms,
                    ev.action,
                    ev.category,
                    ev.actor_id,
                    ev.actor_type,
                    ev.resource_type,
                    ev.resource_id,
                    ev.outcome,
                    ev.source_ip,
                    ev.body,
                )
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
            cursor = await conn.execute(_INSERT_EVENTS, columns)
            if cursor.rowcount != len(fresh):
                raise StoreError(
                    f"PostgreSQL store: insert wrote {cursor.rowcount} rows, expected {len(fresh)}"
                )
            # Step 4.
            await conn.execute(_UPDATE_COUNTERS, (list(touched), list(touched.values())))
        return len(fresh)

    async def _select(self, what: str, statement: Statement) -> list[StoredEvent]:
        async with self._connection(what) as conn:
            cursor = await conn.execute(statement.sql.encode("utf-8"), statement.params)
            return [row_to_event(r) for r in await cursor.fetchall()]

    async def delete_older_than(self, cutoff_ms: int, batch: int = 10_000) -> int:
        """Delete every event with ``timestamp_ms < cutoff_ms``, ``batch`` rows per
        transaction (short locks, bounded WAL per commit); how many were deleted."""
        check_limit(batch, "batch")
        total = 0
        while True:
            deleted = await self._delete_batch(cutoff_ms, batch)
            total += deleted
            if deleted < batch:
                return total

    async def _delete_batch(self, cutoff_ms: int, batch: int) -> int:
        """One retention transaction (autocommit: one statement): up to ``batch`` old rows,
        found through the age index and deleted by their physical row id."""
        async with self._connection("retention") as conn:
            cursor = await conn.execute(
                "DELETE FROM audit_events WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM audit_events WHERE timestamp_ms < %s LIMIT %s))",
                (cutoff_ms, batch),
            )
            return cursor.rowcount

    # -- machine accounts ---------------------------------------------------------------

    async def create_account(
        self, tenant_id: str, name: str, scopes: Sequence[str], token_hash: bytes
    ) -> Account:
        """A new active account whose token hashes to ``token_hash``."""
        account = Account(
            account_id=f"ma_{uuid.uuid4().hex}",
            tenant_id=tenant_id,
            name=name,
            scopes=check_account_fields(tenant_id, name, scopes, token_hash),
            created_ms=_now_ms(),
            revoked_ms=None,
        )
        async with self._connection("create_account") as conn:
            await conn.execute(
                "INSERT INTO machine_accounts "
                "(account_id, tenant_id, name, scopes, created_ms, token_hash) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    account.account_id,
                    tenant_id,
                    name,
                    list(account.scopes),
                    account.created_ms,
                    token_hash,
                ),
            )
        return account

    async def account_by_token_hash(self, token_hash: bytes) -> Account | None:
        """The account with this token hash, active or revoked, or None if there is none."""
        async with self._connection("account_by_token_hash") as conn:
            cursor = await conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM machine_accounts "  # noqa: S608 - fixed text
                "WHERE token_hash = %s",
                (token_hash,),
            )
            row = await cursor.fetchone()
        return None if row is None else _account(row)

    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]:
        """Every account (revoked ones too), of one tenant or all, oldest first."""
        async with self._connection("list_accounts") as conn:
            cursor = await conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM machine_accounts "  # noqa: S608 - fixed text
                "WHERE %s::text IS NULL OR tenant_id = %s ORDER BY created_ms, account_id",
                (tenant_id, tenant_id),
            )
            return [_account(r) for r in await cursor.fetchall()]

    async def revoke_account(self, account_id: str) -> bool:
        """Revoke an active account; False if there is none with this id (or it is revoked)."""
        async with self._connection("revoke_account") as conn:
            cursor = await conn.execute(
                "UPDATE machine_accounts SET revoked_ms = %s "
                "WHERE account_id = %s AND revoked_ms IS NULL",
                (_now_ms(), account_id),
            )
            return cursor.rowcount == 1

    async def close(self) -> None:
        """Close the pool's connections (waits for those in use to come back)."""
        if self._opened:
            await self._pool.close()
