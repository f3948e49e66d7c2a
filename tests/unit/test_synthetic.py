"""The synthetic event factory: valid, realistic, all categories, deterministic with a seed."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from streams.catalogue import lookup
from streams.event import validate_event
from streams.synthetic import ACTIONS, EventFactory
from tests.spec_example import SPEC_CATEGORIES

pytestmark = pytest.mark.unit

CATEGORIES = set(SPEC_CATEGORIES)


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = list(EventFactory(20, seed=42).events(500))
    b = list(EventFactory(20, seed=42).events(500))
    c = list(EventFactory(20, seed=43).events(500))
    assert a == b
    assert a != c


def test_every_event_is_valid_and_every_action_is_catalogued() -> None:
    for action, *_ in ACTIONS:
        assert lookup(action) is not None, action
    for event in EventFactory(15, seed=1).events(3000):
        assert validate_event(event)["event_id"] == event["event_id"]


def test_realistic_mix() -> None:
    events = list(EventFactory(30, seed=7).events(20_000))
    categories = Counter(e["action"].split(".")[0] for e in events)
    assert set(categories) == CATEGORIES
    outcomes = Counter(e["outcome"] for e in events)
    assert 0.02 < outcomes["failure"] / len(events) < 0.15
    assert 0.01 < outcomes["denied"] / len(events) < 0.10
    actors = Counter(e["actor"]["type"] for e in events)
    assert actors["user"] > 0 and actors["machine_account"] > 0
    for e in events:
        if e["action"] == "authentication.login_failed":
            assert e["outcome"] == "failure"
        if e["action"] == "security.permission_denied":
            assert e["outcome"] == "denied"
        if e["actor"]["type"] == "machine_account":
            assert e["actor"]["email"] is None
        if e["source_ip"] is not None:
            assert ipaddress.ip_address(e["source_ip"]).is_private  # documentation ranges
    tenants = Counter(e["tenant_id"] for e in events)
    assert len(tenants) == 30
    top, *_, bottom = sorted(tenants.values(), reverse=True)
    assert top > 3 * bottom  # tenant sizes are skewed, like a real platform


def test_timestamps_are_ordered_and_millisecond_precise() -> None:
    events = list(EventFactory(3, seed=5).events(200))
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    assert stamps[0].startswith("2026-03-15T08:00:00.")
    assert all(len(s) == 24 and s.endswith("Z") for s in stamps)
