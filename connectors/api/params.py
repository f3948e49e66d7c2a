"""Query parameters of the audit-event endpoints: parsed, checked, and turned into a store filter.

Who calls it: the handlers of ``connectors.api.app``. Every problem of a request is collected
before answering, so one 400 names each wrong parameter and why (``InvalidParameters``).
Parameters the API does not know are refused, so a misspelt filter (``actorid=…``) can never
silently widen a query; so is a parameter given twice.

The time window (``start`` inclusive, ``end`` exclusive, ISO 8601 with an offset), in
timestamp order and for NDJSON:

* neither given: the last ``default_window_hours`` up to now;
* only ``start``: ``start`` plus ``max_range_days``; only ``end``: ``max_range_days`` before it;
* both: ``start`` must be before ``end`` and at most ``max_range_days`` apart.

The window is resolved once, on the first page, and carried by the cursor, so "now" does not
move under a client that pages. In ingestion order the window is only a filter on the events'
timestamps: absent bounds stay open, because a poller pages by sequence, not by time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from multidict import MultiMapping

from connectors.api.config import ApiSettings
from connectors.api.cursor import Order, filter_digest
from connectors.api.problems import InvalidParam, InvalidParameters
from connectors.index.model import EventFilter
from streams.catalogue import category_names
from streams.event import ACTOR_TYPES, MAX_TIMESTAMP_MILLIS, OUTCOMES, parse_timestamp

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
ORDERS: tuple[Order, ...] = ("timestamp", "ingestion")
FILTER_PARAMS = (
    "start",
    "end",
    "action",
    "category",
    "actor_id",
    "actor_type",
    "resource_type",
    "resource_id",
    "outcome",
    "source_ip",
)
LIST_PARAMS = frozenset((*FILTER_PARAMS, "limit", "order", "cursor"))
END_OF_TIME_MS = MAX_TIMESTAMP_MILLIS + 1

_ACTION = re.compile(r"([a-z][a-z0-9_]*)\.(\*|[a-z][a-z0-9_]*)\Z")
_SNAKE = re.compile(r"[a-z][a-z0-9_]*\Z")
_DIGITS = re.compile(r"[0-9]{1,7}\Z")
_EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class ListQuery:
    """A checked request of ``GET /v1/audit-events`` (window not yet resolved)."""

    order: Order
    limit: int | None
    start_ms: int | None
    end_ms: int | None
    filters: dict[str, str] = field(default_factory=dict)
    cursor: str | None = None

    @property
    def digest(self) -> str:
        """What a cursor binds: the order and every filter, normalised; not limit or cursor."""
        canonical: dict[str, object] = {
            "order": self.order,
            "start": self.start_ms,
            "end": self.end_ms,
            **self.filters,
        }
        return filter_digest(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS))

    def window(self, settings: ApiSettings, now_ms: int) -> tuple[int, int]:
        """The [start, end) range of a first page in timestamp order (module docstring)."""
        start, end = self.start_ms, self.end_ms
        if start is not None and end is not None:
            return start, end
        if start is not None:
            return start, min(start + settings.max_range_ms, END_OF_TIME_MS)
        if end is not None:
            return max(0, end - settings.max_range_ms), end
        end = min(now_ms, END_OF_TIME_MS)
        return max(0, end - settings.default_window_ms), end

    def event_filter(self, window: tuple[int | None, int | None]) -> EventFilter:
        """The store filter of this query over ``window``."""
        action = self.filters.get("action")
        prefix = None
        if action is not None and action.endswith(".*"):
            prefix = action[:-1]
            action = None
        return EventFilter(
            start_ms=window[0],
            end_ms=window[1],
            action=action,
            action_prefix=prefix,
            category=self.filters.get("category"),
            actor_id=self.filters.get("actor_id"),
            actor_type=self.filters.get("actor_type"),
            resource_type=self.filters.get("resource_type"),
            resource_id=self.filters.get("resource_id"),
            outcome=self.filters.get("outcome"),
            source_ip=self.filters.get("source_ip"),
        )


def parse_list_query(query: MultiMapping[str], settings: ApiSettings) -> ListQuery:
    """Check the query string of the list endpoint; ``InvalidParameters`` names every problem."""
    problems = _unknown_or_repeated(query, LIST_PARAMS)
    values: dict[str, Any] = {}
    for name, check in _CHECKS.items():
        raw = query.get(name)
        if raw is None or any(p.name == name for p in problems):
            continue
        if raw == "":
            problems.append(InvalidParam(name, "must not be empty"))
            continue
        try:
            values[name] = check(raw)
        except ValueError as exc:
            problems.append(InvalidParam(name, str(exc)))
    start, end = values.pop("start", None), values.pop("end", None)
    order: Order = values.pop("order", "timestamp")
    if start is not None and end is not None:
        if end <= start:
            problems.append(InvalidParam("end", "must be later than start"))
        elif order == "timestamp" and end - start > settings.max_range_ms:
            problems.append(
                InvalidParam(
                    "end",
                    f"start..end may span at most {settings.max_range_days:g} days; "
                    "split the range into several requests",
                )
            )
    if problems:
        raise InvalidParameters(problems)
    limit = values.pop("limit", None)
    cursor = values.pop("cursor", None)
    return ListQuery(order, limit, start, end, values, cursor)


def check_no_params(query: MultiMapping[str]) -> None:
    """Refuse any query parameter (endpoints that take none)."""
    problems = _unknown_or_repeated(query, frozenset())
    if problems:
        raise InvalidParameters(problems)


def check_event_id(value: str) -> str:
    """The path's event id, or ``InvalidParameters`` when it cannot be an event id."""
    if not _EVENT_ID.match(value):
        raise InvalidParameters(
            [
                InvalidParam(
                    "event_id",
                    "must be 1 to 128 letters, digits or _ . : -, starting with a letter or digit",
                )
            ]
        )
    return value


def _unknown_or_repeated(query: MultiMapping[str], allowed: frozenset[str]) -> list[InvalidParam]:
    problems: list[InvalidParam] = []
    seen: set[str] = set()
    for name in query:
        if name in seen:
            continue
        seen.add(name)
        if name not in allowed:
            problems.append(InvalidParam(name, "unknown parameter"))
        elif len(query.getall(name)) > 1:
            problems.append(InvalidParam(name, "given more than once"))
    return problems


def _timestamp(raw: str) -> int:
    return parse_timestamp(raw)


def _action(raw: str) -> str:
    m = _ACTION.match(raw)
    if m is None or len(raw) > 128:
        raise ValueError(
            "must be an action like certificate.issue, or a category prefix like certificate.*"
        )
    _known_category(m.group(1))
    return raw


def _known_category(raw: str) -> str:
    known = category_names()
    if raw not in known:
        raise ValueError(f"unknown category {raw!r} (known: {', '.join(known)})")
    return raw


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def check(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw

    return check


def _text(max_len: int) -> Callable[[str], str]:
    def check(raw: str) -> str:
        if len(raw) > max_len:
            raise ValueError(f"must be at most {max_len} characters")
        if _BAD_CHARS.search(raw):
            raise ValueError("must not contain control characters")
        return raw

    return check


def _resource_type(raw: str) -> str:
    if len(raw) > 64 or not _SNAKE.match(raw):
        raise ValueError("must be lower snake_case of at most 64 characters, like certificate")
    return raw


def _source_ip(raw: str) -> str:
    try:
        if "%" in raw:
            raise ValueError(raw)
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address (no zone)") from None
    # The same canonical form the events carry (streams.event), so 2001:DB8::1 still matches.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def _limit(raw: str) -> int:
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValueError(f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _cursor(raw: str) -> str:
    return raw


_CHECKS: dict[str, Callable[[str], Any]] = {
    "start": _timestamp,
    "end": _timestamp,
    "action": _action,
    "category": _known_category,
    "actor_id": _text(256),
    "actor_type": _choice(ACTOR_TYPES),
    "resource_type": _resource_type,
    "resource_id": _text(256),
    "outcome": _choice(OUTCOMES),
    "source_ip": _source_ip,
    "limit": _limit,
    "order": _choice(ORDERS),
    "cursor": _cursor,
}
