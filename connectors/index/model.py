"""The values the index store takes and returns: rows to write, rows read, filters, accounts.

The index process turns each delivered event into an :class:`IndexedEvent` (the searchable
fields pulled out of the event, plus the exact JSON bytes that the API serves back). Readers get
:class:`StoredEvent` rows, which add the ingestion ``sequence`` the store assigned. An
:class:`EventFilter` is what a query asks for; the API builds it from validated query
parameters. :class:`Account` is a machine account as the API's authentication sees it (its
token is never here: the store keeps only the token's hash).

The constructors check what the store relies on (a category that matches its action, a prefix
that is not empty, scopes without spaces), so that a wrong value fails where it is made, with
a ``ValueError`` naming the field, instead of as a surprising query result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from streams.event import AuditEvent, parse_timestamp

__all__ = ["Account", "EventFilter", "IndexedEvent", "StoredEvent"]

_SCOPE = re.compile(r"[a-z][a-z0-9_]*:[a-z][a-z0-9_]*\Z")
MAX_TOKEN_HASH_BYTES = 64


def _check_int(name: str, value: object, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class IndexedEvent:
    """One event as the index writes it: searchable columns plus the delivered JSON."""

    tenant_id: str
    event_id: str
    timestamp_ms: int
    action: str
    category: str
    actor_id: str
    actor_type: str
    resource_type: str
    resource_id: str
    outcome: str
    source_ip: str | None
    body: bytes

    def __post_init__(self) -> None:
        _check_int("timestamp_ms", self.timestamp_ms)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("timestamp_ms", "body") or (f.name == "source_ip" and value is None):
                continue
            if not isinstance(value, str) or not value:
                raise ValueError(f"{f.name} must be a non-empty string, got {value!r}")
        if not isinstance(self.body, bytes):
            raise ValueError(f"body must be bytes, got {type(self.body).__name__}")
        # The store answers an action prefix "certificate." with the category column, which is
        # only right while category is exactly the part of the action before the first dot.
        if self.action.partition(".")[0] != self.category:
            raise ValueError(
                f"category {self.category!r} is not the category of action {self.action!r}"
            )

    @classmethod
    def from_event(cls, event: AuditEvent, body: bytes) -> IndexedEvent:
        """The row of a canonical event (``streams.event.validate_event`` or the codec) and the
        exact bytes it was delivered as (``streams.event.to_json_bytes``)."""
        actor = event["actor"]
        resource = event["resource"]
        return cls(
            tenant_id=event["tenant_id"],
            event_id=event["event_id"],
            timestamp_ms=parse_timestamp(event["timestamp"]),
            action=event["action"],
            category=event["action"].partition(".")[0],
            actor_id=actor["id"],
            actor_type=actor["type"],
            resource_type=resource["type"],
            resource_id=resource["id"],
            outcome=event["outcome"],
            source_ip=event["source_ip"],
            body=body,
        )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored event as a reader gets it back."""

    tenant_id: str
    event_id: str
    timestamp_ms: int
    sequence: int
    body: bytes

    @property
    def position(self) -> tuple[int, str]:
        """Its place in (timestamp, event_id) order: the ``after`` of the next page."""
        return (self.timestamp_ms, self.event_id)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a query wants; every field is optional and all given ones must match.

    ``start_ms`` is inclusive and ``end_ms`` exclusive (milliseconds since the epoch).
    ``action`` is an exact action; ``action_prefix`` (``"certificate."`` for the API's
    ``certificate.*``) matches every action that starts with it. They exclude each other.
    ``source_ip`` is compared as text: the API passes the canonical form the events carry.
    """

    start_ms: int | None = None
    end_ms: int | None = None
    action: str | None = None
    action_prefix: str | None = None
    category: str | None = None
    actor_id: str | None = None
    actor_type: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: str | None = None
    source_ip: str | None = None

    def __post_init__(self) -> None:
        for name in ("start_ms", "end_ms"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_ms") or value is None:
                continue
            if not isinstance(value, str) or not value:
                raise ValueError(f"{f.name} must be a non-empty string or None, got {value!r}")
        if self.action is not None and self.action_prefix is not None:
            raise ValueError("action and action_prefix exclude each other")

    def is_empty(self) -> bool:
        """Whether the filter matches every event of the tenant."""
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True, slots=True)
class Account:
    """A machine account: who may call the API for one tenant, with which scopes."""

    account_id: str
    tenant_id: str
    name: str
    scopes: tuple[str, ...]
    created_ms: int
    revoked_ms: int | None

    @property
    def active(self) -> bool:
        """Whether the account can still authenticate."""
        return self.revoked_ms is None


def check_account_fields(
    tenant_id: str, name: str, scopes: Any, token_hash: Any
) -> tuple[str, ...]:
    """Validate what ``create_account`` receives; the scopes as a tuple without duplicates.

    Scopes are ``area:verb`` words (``audit:read``); they are stored space-separated, so a
    scope cannot contain a space.
    """
    for field_name, value in (("tenant_id", tenant_id), ("name", name)):
        if not isinstance(value, str) or not value or not value.isprintable():
            raise ValueError(f"{field_name} must be a non-empty printable string")
    if isinstance(scopes, str):
        raise ValueError("scopes must be a sequence of scope names, not one string")
    result: list[str] = []
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE.match(scope):
            raise ValueError(f"scope {scope!r} is not of the form area:verb (audit:read)")
        if scope not in result:
            result.append(scope)
    if not result:
        raise ValueError("an account needs at least one scope")
    if not isinstance(token_hash, bytes) or not 16 <= len(token_hash) <= MAX_TOKEN_HASH_BYTES:
        raise ValueError(f"token_hash must be 16 to {MAX_TOKEN_HASH_BYTES} bytes (a digest)")
    return tuple(result)
