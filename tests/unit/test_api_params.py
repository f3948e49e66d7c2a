"""Query parameters: every filter's checks, unknown and repeated names, the time window rules."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from connectors.api.params import (
    END_OF_TIME_MS,
    LIST_PARAMS,
    ListQuery,
    check_event_id,
    check_no_params,
    parse_list_query,
)
from connectors.api.problems import InvalidParameters
from connectors.index.model import EventFilter
from tests.api_support import T0, api_settings

pytestmark = pytest.mark.unit

SETTINGS = api_settings()
DAY = 86_400_000


def parse(*pairs: tuple[str, str]) -> ListQuery:
    return parse_list_query(MultiDict(pairs), SETTINGS)


def problems(*pairs: tuple[str, str]) -> dict[str, str]:
    with pytest.raises(InvalidParameters) as info:
        parse(*pairs)
    body = info.value.body()
    assert body["status"] == 400
    return {p.name: p.reason for p in info.value.invalid_params}


def test_no_parameters_is_the_default_query() -> None:
    q = parse()
    assert (q.order, q.limit, q.start_ms, q.end_ms, q.filters, q.cursor) == (
        "timestamp",
        None,
        None,
        None,
        {},
        None,
    )


def test_every_filter_reaches_the_store_filter() -> None:
    q = parse(
        ("start", "2026-03-15T00:00:00Z"),
        ("end", "2026-03-16T00:00:00+01:00"),
        ("action", "certificate.issue"),
        ("category", "certificate"),
        ("actor_id", "usr_1"),
        ("actor_type", "machine_account"),
        ("resource_type", "certificate"),
        ("resource_id", "crt_1"),
        ("outcome", "denied"),
        ("source_ip", "2001:DB8::1"),
    )
    assert q.start_ms == T0
    assert q.end_ms == T0 + DAY - 3_600_000
    assert q.event_filter((q.start_ms, q.end_ms)) == EventFilter(
        start_ms=T0,
        end_ms=T0 + DAY - 3_600_000,
        action="certificate.issue",
        category="certificate",
        actor_id="usr_1",
        actor_type="machine_account",
        resource_type="certificate",
        resource_id="crt_1",
        outcome="denied",
        source_ip="2001:db8::1",
    )


def test_action_prefix_becomes_a_store_prefix() -> None:
    where = parse(("action", "certificate.*")).event_filter((0, 1))
    assert where.action is None
    assert where.action_prefix == "certificate."


def test_ipv4_mapped_addresses_match_the_ipv4_form() -> None:
    assert parse(("source_ip", "::ffff:192.0.2.1")).filters["source_ip"] == "192.0.2.1"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("start", "2026-03-15", "ISO 8601"),
        ("start", "2026-03-15T00:00:00", "ISO 8601"),  # no offset: ambiguous
        ("start", "1969-12-31T23:59:59Z", "between"),
        ("end", "2026-02-30T00:00:00Z", "not a valid date"),
        ("action", "certificate", "certificate.*"),
        ("action", "Certificate.issue", "certificate.*"),
        ("action", "nosuch.issue", "unknown category"),
        ("action", "certificate.*.x", "certificate.*"),
        ("category", "nosuch", "unknown category"),
        ("actor_id", "a" * 257, "at most 256"),
        ("actor_id", "usr\x00", "control characters"),
        ("actor_type", "robot", "one of user, machine_account, system"),
        ("resource_type", "Certificate", "snake_case"),
        ("resource_id", "x\n", "control characters"),
        ("outcome", "ok", "one of success, failure, denied"),
        ("source_ip", "203.0.113.300", "IPv4 or IPv6"),
        ("source_ip", "fe80::1%eth0", "no zone"),
        ("source_ip", "10.0.0.0/8", "IPv4 or IPv6"),
        ("limit", "0", "1 to 1000"),
        ("limit", "1001", "1 to 1000"),
        ("limit", "-1", "1 to 1000"),
        ("limit", "1e3", "1 to 1000"),
        ("limit", " 5", "1 to 1000"),
        ("order", "sequence", "one of timestamp, ingestion"),
        ("actor_id", "", "must not be empty"),
        ("cursor", "", "must not be empty"),
    ],
)
def test_each_wrong_value_is_named_with_its_reason(name: str, value: str, reason: str) -> None:
    found = problems((name, value))
    assert list(found) == [name]
    assert reason in found[name]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(("limit", "0"), ("outcome", "x"), ("tenant_id", "tnt_b"), ("actorid", "u"))
    assert found == {
        "tenant_id": "unknown parameter",
        "actorid": "unknown parameter",
        "limit": "must be an integer from 1 to 1000",
        "outcome": "must be one of success, failure, denied",
    }


def test_a_repeated_parameter_is_refused() -> None:
    assert problems(("action", "certificate.issue"), ("action", "pki.key_create")) == {
        "action": "given more than once"
    }


def test_end_must_follow_start() -> None:
    assert (
        "later than start"
        in problems(("start", "2026-03-15T00:00:00Z"), ("end", "2026-03-15T00:00:00Z"))["end"]
    )


def test_time_order_bounds_the_range_but_ingestion_order_does_not() -> None:
    start, end = ("start", "2026-01-01T00:00:00Z"), ("end", "2026-02-01T00:00:01Z")
    assert "at most 31 days" in problems(start, end)["end"]
    assert parse(start, ("end", "2026-02-01T00:00:00Z")).end_ms is not None  # exactly 31 days
    q = parse(start, end, ("order", "ingestion"))
    assert q.event_filter((q.start_ms, q.end_ms)).end_ms == q.end_ms


def test_window_rules() -> None:
    settings = api_settings(max_range_days=31, default_window_hours=24)
    now = T0 + 10 * DAY
    assert parse().window(settings, now) == (now - DAY, now)
    assert parse(("start", "2026-03-15T00:00:00Z")).window(settings, now) == (T0, T0 + 31 * DAY)
    assert parse(("end", "2026-03-15T00:00:00Z")).window(settings, now) == (T0 - 31 * DAY, T0)
    both = parse(("start", "2026-03-15T00:00:00Z"), ("end", "2026-03-16T00:00:00Z"))
    assert both.window(settings, now) == (T0, T0 + DAY)
    assert parse(("end", "1970-01-02T00:00:00Z")).window(settings, now) == (0, DAY)
    late = parse(("start", "9999-12-31T00:00:00Z")).window(settings, now)
    assert late[1] == END_OF_TIME_MS


def test_default_window_never_exceeds_the_range_limit() -> None:
    settings = api_settings(max_range_days=1, default_window_hours=72)
    assert settings.default_window_ms == DAY


def test_digest_binds_filters_and_order_but_not_limit_or_cursor() -> None:
    base = parse(("action", "certificate.*"), ("start", "2026-03-15T00:00:00Z"))
    same = parse(
        ("start", "2026-03-15T01:00:00+01:00"),  # the same instant, spelt differently
        ("action", "certificate.*"),
        ("limit", "7"),
        ("cursor", "anything"),
    )
    assert base.digest == same.digest
    for changed in (
        parse(("action", "certificate.issue"), ("start", "2026-03-15T00:00:00Z")),
        parse(("action", "certificate.*"), ("start", "2026-03-15T00:00:00.001Z")),
        parse(
            ("action", "certificate.*"), ("start", "2026-03-15T00:00:00Z"), ("order", "ingestion")
        ),
        parse(
            ("action", "certificate.*"), ("start", "2026-03-15T00:00:00Z"), ("outcome", "success")
        ),
        parse(("action", "certificate.*")),
    ):
        assert changed.digest != base.digest


def test_every_list_parameter_is_checked() -> None:
    assert {
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
        "limit",
        "order",
        "cursor",
    } == LIST_PARAMS


def test_endpoints_without_parameters_refuse_any() -> None:
    check_no_params(MultiDict())
    with pytest.raises(InvalidParameters) as info:
        check_no_params(MultiDict([("tenant_id", "tnt_b")]))
    assert info.value.invalid_params[0].name == "tenant_id"


@pytest.mark.parametrize("event_id", ["evt_a1b2c3d4e5f6", "a", "A.b:c-d_e", "x" * 128])
def test_event_ids_that_can_exist(event_id: str) -> None:
    assert check_event_id(event_id) == event_id


@pytest.mark.parametrize("event_id", ["", "_evt", "evt 1", "evt/1", "x" * 129, "évt"])
def test_event_ids_that_cannot_exist(event_id: str) -> None:
    with pytest.raises(InvalidParameters):
        check_event_id(event_id)
