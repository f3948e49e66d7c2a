"""The index store's values: rows made from canonical events, filters and account fields."""

from __future__ import annotations

import dataclasses

import pytest

from connectors.index.model import (
    Account,
    EventFilter,
    IndexedEvent,
    StoredEvent,
    check_account_fields,
)
from streams.event import to_json_bytes, validate_event
from tests.spec_example import SPEC_EXAMPLE

pytestmark = pytest.mark.unit


def test_from_event_takes_the_searchable_fields_and_keeps_the_bytes() -> None:
    event = validate_event(SPEC_EXAMPLE)
    body = to_json_bytes(event)
    row = IndexedEvent.from_event(event, body)
    assert row == IndexedEvent(
        tenant_id="tnt_7g8h9i0j",
        event_id="evt_a1b2c3d4e5f6",
        timestamp_ms=1773564137003,
        action="certificate.issue",
        category="certificate",
        actor_id="usr_k1l2m3n4",
        actor_type="user",
        resource_type="certificate",
        resource_id="crt_o5p6q7r8",
        outcome="success",
        source_ip="203.0.113.42",
        body=body,
    )


def test_from_event_without_source_ip() -> None:
    event = validate_event({**SPEC_EXAMPLE, "source_ip": None})
    assert IndexedEvent.from_event(event, b"{}").source_ip is None


def _row(**changes: object) -> IndexedEvent:
    base = IndexedEvent.from_event(validate_event(SPEC_EXAMPLE), b"{}")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_category_must_be_its_actions_prefix() -> None:
    with pytest.raises(ValueError, match="'pki' is not the category of action"):
        _row(category="pki")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenant_id", "", "tenant_id must be a non-empty string"),
        ("event_id", None, "event_id must be a non-empty string"),
        ("timestamp_ms", -1, "timestamp_ms must be an integer >= 0"),
        ("timestamp_ms", 1.5, "timestamp_ms must be an integer"),
        ("body", "{}", "body must be bytes"),
    ],
)
def test_an_indexed_event_refuses_wrong_fields(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _row(**{field: value})


def test_a_stored_events_position_is_its_keyset_key() -> None:
    assert StoredEvent("t", "e9", 17, 3, b"{}").position == (17, "e9")


def test_action_and_prefix_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        EventFilter(action="certificate.issue", action_prefix="certificate.")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action_prefix": ""}, "action_prefix must be a non-empty string"),
        ({"outcome": 3}, "outcome must be a non-empty string"),
        ({"start_ms": -5}, "start_ms must be an integer >= 0"),
        ({"end_ms": "5"}, "end_ms must be an integer"),
    ],
)
def test_a_filter_refuses_wrong_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventFilter(**changes)  # type: ignore[arg-type]


def test_account_fields_are_checked_and_scopes_deduplicated() -> None:
    scopes = check_account_fields("t1", "splunk", ["audit:read", "audit:read"], b"h" * 32)
    assert scopes == ("audit:read",)
    account = Account("ma_1", "t1", "splunk", scopes, 5, None)
    assert account.active
    assert not dataclasses.replace(account, revoked_ms=6).active


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "n", ["audit:read"], b"h" * 32), "tenant_id must be"),
        (("t", "", ["audit:read"], b"h" * 32), "name must be"),
        (("t", "n", "audit:read", b"h" * 32), "not one string"),
        (("t", "n", [], b"h" * 32), "at least one scope"),
        (("t", "n", ["audit read"], b"h" * 32), "not of the form area:verb"),
        (("t", "n", ["audit:read"], "h" * 32), "token_hash must be"),
        (("t", "n", ["audit:read"], b"short"), "token_hash must be"),
    ],
)
def test_account_fields_refuse_wrong_values(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_account_fields(*args)  # type: ignore[arg-type]
