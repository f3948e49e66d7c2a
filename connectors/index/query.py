"""The SELECT statements of event queries, shared by the SQLite and PostgreSQL stores.

Both stores ask the same questions with the same SQL; only the parameter marker differs
(``?`` for sqlite3, ``%s`` for psycopg). Every statement built here:

* starts its WHERE clause with ``tenant_id = <param>``: no query can reach another tenant's
  rows, whatever the filter says;
* binds every value as a parameter: the only text put into the SQL is column names and
  operators taken from the fixed tables below, never a caller's string;
* orders by the columns an index serves (see the migrations): ``(timestamp_ms, event_id)`` for
  the time-ordered pages, ``sequence`` for the ingestion-ordered ones, and pages with a keyset
  (``> the last row's key``) instead of an OFFSET, so page N costs what page 1 costs.

An action prefix that is exactly a category and its dot (``certificate.``) becomes a condition
on the ``category`` column, which has an index ordered by time; any other prefix becomes a
range on ``action`` (``action >= 'certificate.re' AND action < 'certificate.rf'``), which both
databases serve from the action index without LIKE and its escaping rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from connectors.index.model import EventFilter, StoredEvent

__all__ = [
    "event_by_id",
    "EVENT_COLUMNS",
    "Dialect",
    "Statement",
    "check_after",
    "check_limit",
    "page_by_sequence",
    "page_by_time",
    "prefix_upper_bound",
    "row_to_event",
    "where_clause",
]

Dialect = Literal["sqlite", "postgresql"]

# The columns of a StoredEvent, in its field order.
EVENT_COLUMNS = "tenant_id, event_id, timestamp_ms, sequence, body"
# Filter fields compared for equality, and their columns (the same names, listed to keep any
# other attribute out of the SQL).
_EQUALS: tuple[str, ...] = (
    "action",
    "category",
    "actor_id",
    "actor_type",
    "resource_type",
    "resource_id",
    "outcome",
    "source_ip",
)
_CATEGORY_PREFIX = re.compile(r"([a-z][a-z0-9_]*)\.\Z")
_MARK: dict[Dialect, str] = {"sqlite": "?", "postgresql": "%s"}


@dataclass(frozen=True)
class Statement:
    """SQL text and its parameters, in order."""

    sql: str
    params: tuple[object, ...]


def check_limit(limit: int, name: str = "limit") -> None:
    """``ValueError`` unless ``limit`` is a positive integer."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{name} must be a positive integer, got {limit!r}")


def check_after(after: tuple[int, str] | None) -> None:
    """``ValueError`` unless ``after`` is None or a (timestamp_ms, event_id) pair."""
    if after is None:
        return
    ok = isinstance(after, tuple) and len(after) == 2
    ok = ok and isinstance(after[0], int) and not isinstance(after[0], bool)
    if not (ok and isinstance(after[1], str)):
        raise ValueError(f"after must be a (timestamp_ms, event_id) pair, got {after!r}")


def prefix_upper_bound(prefix: str) -> str:
    """The least string above every string that starts with ``prefix`` (code point order).

    The last character that is not U+10FFFF is incremented and what follows it dropped.
    """
    chars = list(prefix)
    while chars and chars[-1] == "\U0010ffff":
        chars.pop()
    if not chars:
        raise ValueError("an action prefix needs a character below U+10FFFF")
    chars[-1] = chr(ord(chars[-1]) + 1)
    return "".join(chars)


def where_clause(dialect: Dialect, tenant_id: str, where: EventFilter) -> Statement:
    """``tenant_id = … AND <each given filter>`` with its parameters."""
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ValueError("tenant_id must be a non-empty string")
    mark = _MARK[dialect]
    conditions = [f"tenant_id = {mark}"]
    params: list[object] = [tenant_id]
    if where.start_ms is not None:
        conditions.append(f"timestamp_ms >= {mark}")
        params.append(where.start_ms)
    if where.end_ms is not None:
        conditions.append(f"timestamp_ms < {mark}")
        params.append(where.end_ms)
    for column in _EQUALS:
        value = getattr(where, column)
        if value is not None:
            conditions.append(f"{column} = {mark}")
            params.append(value)
    prefix = where.action_prefix
    if prefix is not None:
        category = _CATEGORY_PREFIX.match(prefix)
        if category is not None:
            conditions.append(f"category = {mark}")
            params.append(category[1])
        else:
            conditions.append(f"action >= {mark} AND action < {mark}")
            params += [prefix, prefix_upper_bound(prefix)]
    return Statement(" AND ".join(conditions), tuple(params))


def page_by_time(
    dialect: Dialect,
    tenant_id: str,
    where: EventFilter,
    after: tuple[int, str] | None,
    limit: int,
) -> Statement:
    """One page in (timestamp_ms, event_id) order, strictly after ``after``."""
    check_limit(limit)
    check_after(after)
    mark = _MARK[dialect]
    base = where_clause(dialect, tenant_id, where)
    sql = f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE {base.sql}"  # noqa: S608 - fixed text
    params = list(base.params)
    if after is not None:
        # A row-value comparison: both databases use it as an index range on the
        # (…, timestamp_ms, event_id) index, where the OR spelling would defeat SQLite's planner.
        sql += f" AND (timestamp_ms, event_id) > ({mark}, {mark})"
        params += [after[0], after[1]]
    sql += f" ORDER BY timestamp_ms, event_id LIMIT {mark}"
    params.append(limit)
    return Statement(sql, tuple(params))


def event_by_id(dialect: Dialect, tenant_id: str, event_id: str) -> Statement:
    """The tenant's event with this id (no row when another tenant has it)."""
    mark = _MARK[dialect]
    return Statement(
        f"SELECT {EVENT_COLUMNS} FROM audit_events "  # noqa: S608 - fixed text
        f"WHERE tenant_id = {mark} AND event_id = {mark}",
        (tenant_id, event_id),
    )


def page_by_sequence(
    dialect: Dialect,
    tenant_id: str,
    where: EventFilter,
    after_sequence: int | None,
    limit: int,
) -> Statement:
    """One page in ingestion order, sequences strictly above ``after_sequence``."""
    check_limit(limit)
    if after_sequence is not None and (
        isinstance(after_sequence, bool) or not isinstance(after_sequence, int)
    ):
        raise ValueError(f"after_sequence must be an integer, got {after_sequence!r}")
    mark = _MARK[dialect]
    base = where_clause(dialect, tenant_id, where)
    sql = f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE {base.sql}"  # noqa: S608 - fixed text
    params = list(base.params)
    if after_sequence is not None:
        sql += f" AND sequence > {mark}"
        params.append(after_sequence)
    sql += f" ORDER BY sequence LIMIT {mark}"
    params.append(limit)
    return Statement(sql, tuple(params))


def row_to_event(row: Sequence[Any]) -> StoredEvent:
    """A StoredEvent from a row of :data:`EVENT_COLUMNS`."""
    tenant_id, event_id, timestamp_ms, sequence, body = row
    return StoredEvent(str(tenant_id), str(event_id), int(timestamp_ms), int(sequence), bytes(body))
