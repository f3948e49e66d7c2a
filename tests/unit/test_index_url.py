"""open_store's URLs: which store each one opens, and errors that never show a password."""

from __future__ import annotations

import pytest

from connectors.index.postgres import PostgresStore
from connectors.index.sqlite import MEMORY, SqliteStore
from connectors.index.store import open_store, redact_url, sqlite_path

pytestmark = pytest.mark.unit

PASSWORD = "Sup3r-s3cret"  # noqa: S105 - a made-up password the errors must not show


def test_sqlite_urls_name_an_absolute_path() -> None:
    assert sqlite_path("sqlite:///var/lib/siem-export/audit.db") == "/var/lib/siem-export/audit.db"
    assert sqlite_path("sqlite:///tmp/with%20space.db") == "/tmp/with space.db"
    assert sqlite_path("sqlite:///:memory:") == MEMORY


async def test_open_store_picks_the_store_by_scheme() -> None:
    sqlite = open_store("sqlite:///:memory:")
    assert isinstance(sqlite, SqliteStore)
    await sqlite.close()
    postgres = open_store("postgresql://siem@127.0.0.1:5432/audit?sslmode=disable")
    assert isinstance(postgres, PostgresStore)
    assert postgres.endpoint == "postgresql://siem@127.0.0.1:5432/audit"
    await postgres.close()  # never opened: nothing to close, no connection attempted
    assert isinstance(open_store("postgres://db.internal/audit"), PostgresStore)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "non-empty"),
        ("audit.db", "no scheme"),
        ("mysql://u@h/db", "must start with sqlite:/// or postgresql://"),
        ("sqlite://relative/audit.db", "three slashes"),
        ("sqlite:audit.db", "sqlite:///absolute/path"),
        ("sqlite:///tmp/audit.db?mode=ro", "query string"),
        ("sqlite:///var/lib/", "not a directory"),
        ("sqlite:///tmp/a b.db", "spaces"),
        ("postgresql://siem@127.0.0.1:5432", "must name a database"),
        ("postgresql://siem@127.0.0.1:5432/", "must name a database"),
        ("postgresql://siem@127.0.0.1:99999/audit", "invalid port"),
        ("postgresql://siem@h1,h2/audit", "one host"),
        ("postgresql://siem@h/audit#x", "fragment"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://siem:{PASSWORD}@db:5432",
        f"postgresql://siem:{PASSWORD}@db:notaport/audit",
        f"postgresql://siem:{PASSWORD}@db/audit?nosuchparameter=1",
        f"postgresql://siem:{PASSWORD}%zz@db/audit",
        f"postgresql://siem:{PASSWORD}@db/audit?sslmode",
        f"mysql://siem:{PASSWORD}@db/audit",
    ],
)
def test_errors_never_quote_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_store(url)
    assert PASSWORD not in str(caught.value)
    assert caught.value.__cause__ is None or PASSWORD not in str(caught.value.__cause__)


def test_redact_url_drops_password_and_query() -> None:
    url = f"postgresql://siem:{PASSWORD}@[2001:db8::5]:6432/audit?sslmode=verify-full"
    assert redact_url(url) == "postgresql://siem@[2001:db8::5]:6432/audit"
    assert redact_url("postgresql://db/audit") == "postgresql://db/audit"
    assert redact_url("sqlite:///var/lib/audit.db") == "sqlite:///var/lib/audit.db"
