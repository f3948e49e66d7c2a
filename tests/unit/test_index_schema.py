"""The shipped migrations: well-formed, versioned 1..N, guarded against edits and downgrades."""

from __future__ import annotations

import hashlib
import importlib.resources

import pytest

from connectors.index.errors import MigrationError
from connectors.index.schema import (
    Migration,
    load_migrations,
    pending_migrations,
    split_sqlite_script,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migrations_are_package_data_versioned_from_one(dialect: str) -> None:
    migrations = load_migrations(dialect)  # type: ignore[arg-type]
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "init"
    folder = importlib.resources.files("connectors.index") / "migrations" / dialect
    data = (folder / "0001_init.sql").read_bytes()
    assert migrations[0].checksum == hashlib.sha256(data).hexdigest()


def test_both_dialects_have_the_same_versions() -> None:
    sqlite = [(m.version, m.name) for m in load_migrations("sqlite")]
    postgres = [(m.version, m.name) for m in load_migrations("postgresql")]
    assert sqlite == postgres


KNOWN = (Migration(1, "init", "", "aa"), Migration(2, "more", "", "bb"))


def test_pending_are_the_unapplied_in_order() -> None:
    assert pending_migrations("sqlite", KNOWN, {}) == list(KNOWN)
    assert pending_migrations("sqlite", KNOWN, {1: "aa"}) == [KNOWN[1]]
    assert pending_migrations("sqlite", KNOWN, {1: "aa", 2: "bb"}) == []


def test_a_newer_database_is_refused() -> None:
    with pytest.raises(MigrationError, match="schema version 3, newer than this siem-export"):
        pending_migrations("postgresql", KNOWN, {1: "aa", 2: "bb", 3: "cc"})


def test_an_edited_migration_is_refused() -> None:
    with pytest.raises(MigrationError, match="0001_init was changed after it was applied"):
        pending_migrations("sqlite", KNOWN, {1: "zz"})


def test_sqlite_scripts_split_on_statement_ends_only() -> None:
    script = (
        "-- a comment; with a semicolon\n"
        "CREATE TABLE t (a TEXT DEFAULT 'x;y');\n"
        "\n"
        "CREATE INDEX i\n    ON t (a); -- trailing\n"
        "-- only a comment at the end\n"
    )
    statements = list(split_sqlite_script(script))
    assert len(statements) == 2
    assert statements[0].endswith("CREATE TABLE t (a TEXT DEFAULT 'x;y');")
    assert statements[1] == "CREATE INDEX i\n    ON t (a); -- trailing"


def test_an_unterminated_statement_is_an_error() -> None:
    with pytest.raises(MigrationError, match="unterminated"):
        list(split_sqlite_script("CREATE TABLE t (a TEXT);\nCREATE TABLE u (b TEXT)\n"))
