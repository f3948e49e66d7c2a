"""The index store's shared SQL: tenant first, every value bound, keysets, prefixes, limits."""

from __future__ import annotations

import pytest

from connectors.index.model import EventFilter
from connectors.index.query import (
    page_by_sequence,
    page_by_time,
    prefix_upper_bound,
    where_clause,
)

pytestmark = pytest.mark.unit

HOSTILE = "x' OR '1'='1"


@pytest.mark.parametrize(("dialect", "mark"), [("sqlite", "?"), ("postgresql", "%s")])
def test_every_value_is_a_parameter_and_the_tenant_comes_first(dialect: str, mark: str) -> None:
    where = EventFilter(
        start_ms=1,
        end_ms=2,
        action=HOSTILE,
        actor_id=HOSTILE,
        actor_type=HOSTILE,
        resource_type=HOSTILE,
        resource_id=HOSTILE,
        outcome=HOSTILE,
        source_ip=HOSTILE,
        category=HOSTILE,
    )
    statement = page_by_time(dialect, HOSTILE, where, (5, HOSTILE), 10)  # type: ignore[arg-type]
    assert HOSTILE not in statement.sql
    assert "'" not in statement.sql
    assert statement.sql.count(mark) == len(statement.params)
    assert statement.sql.startswith(
        "SELECT tenant_id, event_id, timestamp_ms, sequence, body FROM audit_events "  # noqa: S608
        f"WHERE tenant_id = {mark} AND "
    )
    assert statement.params[0] == HOSTILE
    assert statement.params[-3:] == (5, HOSTILE, 10)
    assert statement.sql.endswith(
        f"AND (timestamp_ms, event_id) > ({mark}, {mark}) "
        f"ORDER BY timestamp_ms, event_id LIMIT {mark}"
    )


def test_an_empty_filter_is_the_tenant_alone() -> None:
    statement = where_clause("sqlite", "t1", EventFilter())
    assert (statement.sql, statement.params) == ("tenant_id = ?", ("t1",))
    assert EventFilter().is_empty()
    assert not EventFilter(outcome="failure").is_empty()


def test_time_bounds_are_start_inclusive_end_exclusive() -> None:
    statement = where_clause("sqlite", "t1", EventFilter(start_ms=10, end_ms=20))
    assert statement.sql == "tenant_id = ? AND timestamp_ms >= ? AND timestamp_ms < ?"
    assert statement.params == ("t1", 10, 20)


def test_a_category_prefix_becomes_the_category_column() -> None:
    statement = where_clause("postgresql", "t1", EventFilter(action_prefix="certificate."))
    assert statement.sql == "tenant_id = %s AND category = %s"
    assert statement.params == ("t1", "certificate")


@pytest.mark.parametrize(
    ("prefix", "upper"),
    [("certificate.re", "certificate.rf"), ("cert", "ceru"), ("pki.ca_", "pki.ca`"), ("a.", "a/")],
)
def test_other_prefixes_become_a_range(prefix: str, upper: str) -> None:
    statement = where_clause("sqlite", "t1", EventFilter(action_prefix=prefix))
    if prefix == "a.":  # a category and its dot: the category column
        assert statement.params == ("t1", "a")
        return
    assert statement.sql == "tenant_id = ? AND action >= ? AND action < ?"
    assert statement.params == ("t1", prefix, upper)


def test_prefix_upper_bound_is_above_every_extension() -> None:
    for prefix in ("certificate.", "z", "a\U0010ffff", "é"):
        upper = prefix_upper_bound(prefix)
        for suffix in ("", "a", "\U0010ffff" * 3, "zzz"):
            assert prefix <= prefix + suffix < upper
    assert prefix_upper_bound("a\U0010ffff") == "b"
    with pytest.raises(ValueError, match="below U\\+10FFFF"):
        prefix_upper_bound("\U0010ffff")


def test_sequence_pages_order_by_sequence() -> None:
    statement = page_by_sequence("sqlite", "t1", EventFilter(outcome="denied"), 41, 100)
    assert statement.sql.endswith(
        "WHERE tenant_id = ? AND outcome = ? AND sequence > ? ORDER BY sequence LIMIT ?"
    )
    assert statement.params == ("t1", "denied", 41, 100)
    first = page_by_sequence("sqlite", "t1", EventFilter(), None, 5)
    assert "sequence >" not in first.sql
    assert first.params == ("t1", 5)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "10"])
def test_a_limit_must_be_a_positive_integer(limit: object) -> None:
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        page_by_time("sqlite", "t1", EventFilter(), None, limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        page_by_sequence("sqlite", "t1", EventFilter(), None, limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("after", [(1,), ("1", "e"), (1, 2), [1, "e"], (True, "e")])
def test_after_must_be_a_timestamp_and_an_event_id(after: object) -> None:
    with pytest.raises(ValueError, match="after must be"):
        page_by_time("sqlite", "t1", EventFilter(), after, 10)  # type: ignore[arg-type]


def test_after_sequence_must_be_an_integer() -> None:
    with pytest.raises(ValueError, match="after_sequence"):
        page_by_sequence("sqlite", "t1", EventFilter(), "5", 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("tenant", ["", None, 5])
def test_a_query_needs_a_tenant(tenant: object) -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        where_clause("sqlite", tenant, EventFilter())  # type: ignore[arg-type]
