"""The versioned schema migrations shipped with the package, and the checks around them.

Migrations are SQL files in ``connectors/index/migrations/<dialect>/NNNN_name.sql`` (package
data), one directory per database because the two dialects differ in types and options. The
number is the version: versions start at 1 and have no gaps. A migration, once released, is
never edited: a store records each applied migration's SHA-256 in ``schema_migrations`` and
refuses to start on a database where an applied file no longer matches, or which has a version
this code does not know (a newer siem-export migrated it: running older code against it could
write rows the newer code does not expect).

The stores apply the pending files in order under their database's lock (see ``migrate`` in
:mod:`connectors.index.sqlite` and :mod:`connectors.index.postgres`); this module only finds the
files and decides what is pending.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from connectors.index.errors import MigrationError
from connectors.index.query import Dialect

__all__ = [
    "SCHEMA_MIGRATIONS_DDL",
    "Migration",
    "load_migrations",
    "pending_migrations",
    "split_sqlite_script",
]

_FILE_NAME = re.compile(r"([0-9]{4})_([a-z0-9_]+)\.sql\Z")

# The bookkeeping table, created by the stores before anything else (the same SQL works in
# both dialects). ``checksum`` is the hex SHA-256 of the migration file as applied.
SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, "
    "applied_ms BIGINT NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    """One migration file: its version, name, SQL text and the SHA-256 of its bytes."""

    version: int
    name: str
    sql: str
    checksum: str


def load_migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """The dialect's migrations in version order; MigrationError if the files are malformed."""
    folder = importlib.resources.files("connectors.index") / "migrations" / dialect
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {dialect}/{entry.name} is not NNNN_name.sql")
        data = entry.read_bytes()
        version = int(match[1])
        if version in found:
            raise MigrationError(f"two {dialect} migrations have version {version}")
        found[version] = Migration(
            version, match[2], data.decode("utf-8"), hashlib.sha256(data).hexdigest()
        )
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"{dialect} migration versions must be 1..N, got {versions}")
    return tuple(found[v] for v in versions)


def pending_migrations(
    dialect: Dialect, known: tuple[Migration, ...], applied: Mapping[int, str]
) -> list[Migration]:
    """The migrations still to apply, given ``applied`` (version -> checksum) from the table.

    MigrationError if the database is ahead of ``known`` or an applied file has changed.
    """
    latest = known[-1].version if known else 0
    ahead = sorted(v for v in applied if v > latest)
    if ahead:
        raise MigrationError(
            f"the {dialect} database has schema version {ahead[-1]}, newer than this "
            f"siem-export knows ({latest}): upgrade siem-export, do not downgrade a database"
        )
    for migration in known:
        checksum = applied.get(migration.version)
        if checksum is not None and checksum != migration.checksum:
            raise MigrationError(
                f"{dialect} migration {migration.version:04d}_{migration.name} was changed "
                "after it was applied to this database: released migrations must not be "
                "edited (add a new one)"
            )
    return [m for m in known if m.version not in applied]


def split_sqlite_script(script: str) -> Iterator[str]:
    """The statements of a SQL script, one at a time (sqlite3 runs one per ``execute``).

    ``sqlite3.complete_statement`` decides where a statement ends, so a ``;`` inside a string
    or a comment does not split one. ``executescript`` is not used because it commits any
    transaction it finds open, and migrations run inside one.
    """
    pending: list[str] = []
    for line in script.splitlines(keepends=True):
        pending.append(line)
        text = "".join(pending)
        if sqlite3.complete_statement(text):
            statement = text.strip()
            pending.clear()
            if _has_sql(statement):
                yield statement
    rest = "".join(pending).strip()
    if _has_sql(rest):
        raise MigrationError(f"the migration ends in an unterminated statement: {rest[:60]!r}")


def _has_sql(text: str) -> bool:
    """Whether ``text`` holds more than comments and blank space."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            return True
    return False
