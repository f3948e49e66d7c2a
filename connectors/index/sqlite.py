"""The index store in a SQLite file: the embedded default for a single machine.

The standard library's ``sqlite3`` runs on worker threads, never on the event loop: one writer
connection on a thread of its own (SQLite allows one writer at a time anyway, so queueing the
writes in the process is cheaper than letting them fight over the file lock), and a few reader
connections on a small thread pool. The file is in WAL mode, so readers read a consistent
snapshot while the writer writes, and neither blocks the other.

Connection settings: ``journal_mode=WAL``; ``synchronous=FULL`` (each commit is on disk before
``insert`` returns, because the index commits its Kafka offsets right after: NORMAL could lose
the last commits on power loss, and with them events whose offsets are already committed);
``foreign_keys=ON``; a busy timeout (another process holding the write lock makes a writer wait
that long before :class:`StoreUnavailableError`); ``query_only`` on the readers.

``statement_timeout`` (seconds, None by default) bounds the reads, the API's queries and
account lookups: SQLite has no such setting, so a progress handler interrupts a read still
running at the deadline (:mod:`connectors.index.sqlite_threads`) and the read raises
:class:`StoreTimeoutError`. Writes and migrations are not bounded by it.

``sqlite:///:memory:`` gives a private in-memory database, for tests and demos: one connection
serves reads and writes (another connection would see another, empty, database) and everything
is lost on ``close()``.

Sequences: ``insert`` runs in ``BEGIN IMMEDIATE``, which takes the database's write lock before
reading the tenant's counter, so no other writer, in this process or another, can assign or
commit sequences until this transaction ends: sequences are committed in the order assigned.

A task cancelled while its call runs on a worker thread stops waiting, but the thread finishes
the call (an insert then still commits): the index redelivers and the insert is idempotent.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Sequence

from connectors.index.errors import MigrationError, StoreError
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
    load_migrations,
    pending_migrations,
    split_sqlite_script,
)
from connectors.index.sqlite_threads import SqliteConnections

__all__ = ["MEMORY", "SqliteStore"]

MEMORY = ":memory:"
_INSERT_EVENT = (
    "INSERT INTO audit_events (tenant_id, event_id, sequence, timestamp_ms, action, category, "
    "actor_id, actor_type, resource_type, resource_id, outcome, source_ip, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (tenant_id, event_id) DO NOTHING"
)
_ACCOUNT_COLUMNS = "account_id, tenant_id, name, scopes, created_ms, revoked_ms"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _account(row: Sequence[object]) -> Account:
    account_id, tenant_id, name, scopes, created_ms, revoked_ms = row
    return Account(
        account_id=str(account_id),
        tenant_id=str(tenant_id),
        name=str(name),
        scopes=tuple(str(scopes).split()),
        created_ms=int(str(created_ms)),
        revoked_ms=None if revoked_ms is None else int(str(revoked_ms)),
    )


class SqliteStore(PagedReads):
    """:class:`connectors.index.store.AuditStore` on a SQLite file (or in memory)."""

    dialect = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        readers: int = 4,
        busy_timeout: float = 10.0,
        statement_timeout: float | None = None,
    ) -> None:
        check_limit(readers, "readers")
        if statement_timeout is not None and not statement_timeout > 0:
            raise ValueError(f"statement_timeout must be > 0 seconds, got {statement_timeout!r}")
        self.path = path
        self._busy_timeout = busy_timeout
        self._statement_timeout = statement_timeout
        self._writer = SqliteConnections(self._open_writer, 1, "sqlite-store-writer")
        if path == MEMORY:
            self._readers = self._writer
        else:
            self._readers = SqliteConnections(self._open_reader, readers, "sqlite-store-reader")

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the module opens no transaction behind our back; the code
        # says BEGIN IMMEDIATE where it writes more than one statement.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # used by one thread at a time (SqliteConnections)
        )
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._open()
        if self.path != MEMORY:
            mode = self._switch_to_wal(conn)
            if mode != "wal":
                conn.close()
                raise StoreError(f"SQLite store: {self.path} cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode = WAL``, retried for up to the busy timeout.

        Switching needs the file to itself, and SQLite answers "database is locked" at once,
        without its busy handler, while another connection is creating or switching the same
        new file (processes starting together); once the file is in WAL mode, the switch is a
        no-op that never fails.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.01)

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._open()
        conn.execute("PRAGMA query_only = ON")
        return conn

    # -- schema -------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply the pending migrations in one transaction; the schema version.

        ``BEGIN IMMEDIATE`` is the lock: a second process migrating the same file waits for
        it, then finds nothing pending.
        """
        known = load_migrations("sqlite")

        def migrate(conn: sqlite3.Connection) -> int:
            conn.execute(SCHEMA_MIGRATIONS_DDL)
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            applied = {int(version): str(checksum) for version, checksum in rows}
            for migration in pending_migrations("sqlite", known, applied):
                try:
                    for statement in split_sqlite_script(migration.sql):
                        conn.execute(statement)
                except sqlite3.Error as exc:
                    raise MigrationError(
                        f"SQLite migration {migration.version:04d}_{migration.name} failed: {exc}"
                    ) from exc
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_ms) "
                    "VALUES (?, ?, ?, ?)",
                    (migration.version, migration.name, migration.checksum, _now_ms()),
                )
                applied[migration.version] = migration.checksum
            conn.execute("COMMIT")
            return max(applied, default=0)

        return await self._writer.run("migrate", migrate)

    # -- events -------------------------------------------------------------------------

    async def insert(self, events: Sequence[IndexedEvent]) -> int:
        """Store the events not stored yet, in one transaction; how many rows were added.

        Steps (one ``BEGIN IMMEDIATE`` … ``COMMIT``):

        1. Take the write lock (``BEGIN IMMEDIATE``), so nobody else assigns sequences now.
        2. For each event in the given order, insert it with the tenant's next sequence;
           ``ON CONFLICT DO NOTHING`` skips an id the tenant has (or had earlier in the
           batch), and only an inserted row uses up a number.
        3. Write each touched tenant's last sequence back to its counter row.
        4. Commit: the rows and the counters become visible together.
        """
        batch = list(events)
        if not batch:
            return 0

        def insert(conn: sqlite3.Connection) -> int:
            # Step 1.
            conn.execute("BEGIN IMMEDIATE")
            last: dict[str, int] = {}
            inserted = 0
            # Step 2.
            for ev in batch:
                sequence = last.get(ev.tenant_id)
                if sequence is None:
                    row = conn.execute(
                        "SELECT last_sequence FROM tenant_sequences WHERE tenant_id = ?",
                        (ev.tenant_id,),
                    ).fetchone()
                    sequence = 0 if row is None else int(row[0])
                cursor = conn.execute(
                    _INSERT_EVENT,
                    (
                        ev.tenant_id,
                        ev.event_id,
                        sequence + 1,
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
                    ),
                )
                if cursor.rowcount == 1:
                    sequence += 1
                    inserted += 1
                last[ev.tenant_id] = sequence
            # Step 3.
            conn.executemany(
                "INSERT INTO tenant_sequences (tenant_id, last_sequence) VALUES (?, ?) "
                "ON CONFLICT (tenant_id) DO UPDATE SET last_sequence = excluded.last_sequence",
                sorted(last.items()),
            )
            # Step 4.
            conn.execute("COMMIT")
            return inserted

        return await self._writer.run("insert", insert)

    async def _select(self, what: str, statement: Statement) -> list[StoredEvent]:
        def select(conn: sqlite3.Connection) -> list[StoredEvent]:
            return [row_to_event(r) for r in conn.execute(statement.sql, statement.params)]

        return await self._readers.run(what, select, timeout=self._statement_timeout)

    async def delete_older_than(self, cutoff_ms: int, batch: int = 10_000) -> int:
        """Delete every event with ``timestamp_ms < cutoff_ms``, ``batch`` rows per
        transaction (the writer is free for inserts in between); how many were deleted."""
        check_limit(batch, "batch")
        total = 0
        while True:
            deleted = await self._delete_batch(cutoff_ms, batch)
            total += deleted
            if deleted < batch:
                return total

    async def _delete_batch(self, cutoff_ms: int, batch: int) -> int:
        """One retention transaction: up to ``batch`` rows older than the cutoff."""

        def delete(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM audit_events WHERE rowid IN "
                "(SELECT rowid FROM audit_events WHERE timestamp_ms < ? LIMIT ?)",
                (cutoff_ms, batch),
            )
            return cursor.rowcount

        return await self._writer.run("retention", delete)

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

        def create(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO machine_accounts ({_ACCOUNT_COLUMNS}, token_hash) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (
                    account.account_id,
                    tenant_id,
                    name,
                    " ".join(account.scopes),
                    account.created_ms,
                    token_hash,
                ),
            )

        await self._writer.run("create_account", create)
        return account

    async def account_by_token_hash(self, token_hash: bytes) -> Account | None:
        """The account with this token hash, active or revoked, or None if there is none."""

        def find(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM machine_accounts "  # noqa: S608 - fixed text
                "WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            return None if row is None else _account(row)

        return await self._readers.run(
            "account_by_token_hash", find, timeout=self._statement_timeout
        )

    async def list_accounts(self, tenant_id: str | None = None) -> list[Account]:
        """Every account (revoked ones too), of one tenant or all, oldest first."""

        def list_(conn: sqlite3.Connection) -> list[Account]:
            sql = f"SELECT {_ACCOUNT_COLUMNS} FROM machine_accounts"  # noqa: S608 - fixed text
            params: tuple[str, ...] = ()
            if tenant_id is not None:
                sql += " WHERE tenant_id = ?"
                params = (tenant_id,)
            sql += " ORDER BY created_ms, account_id"
            return [_account(r) for r in conn.execute(sql, params)]

        return await self._readers.run("list_accounts", list_, timeout=self._statement_timeout)

    async def revoke_account(self, account_id: str) -> bool:
        """Revoke an active account; False if there is none with this id (or it is revoked)."""

        def revoke(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE machine_accounts SET revoked_ms = ? "
                "WHERE account_id = ? AND revoked_ms IS NULL",
                (_now_ms(), account_id),
            )
            return cursor.rowcount == 1

        return await self._writer.run("revoke_account", revoke)

    async def close(self) -> None:
        """Finish running calls and close every connection."""
        await asyncio.to_thread(self._readers.close)
        if self._readers is not self._writer:
            await asyncio.to_thread(self._writer.close)
