"""The destination health lifecycle (``connectors.health``) with a fake clock and alert sink."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from connectors.health import MAX_TEXT_CHARS, DestinationHealth, HealthThresholds
from streams.errors import PublishError

pytestmark = pytest.mark.unit

T0 = 1_738_324_800.0  # 2025-01-31T12:00:00Z
URL = "https://siem.example.com/hook"
RFC3339_MS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"

# The record as docs/alerts.md describes it.
ALERT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "type",
        "version",
        "tenant_id",
        "method",
        "endpoint",
        "state",
        "reason",
        "since",
        "at",
        "consecutive_failures",
    ],
    "properties": {
        "type": {"const": "siem_export.destination_health"},
        "version": {"const": 1},
        "tenant_id": {"type": "string", "minLength": 1},
        "method": {"type": "string", "minLength": 1},
        "endpoint": {"type": "string", "maxLength": 512},
        "state": {"enum": ["failing", "disabled", "recovered"]},
        "reason": {"type": "string", "maxLength": 512},
        "since": {"type": "string", "pattern": RFC3339_MS},
        "at": {"type": "string", "pattern": RFC3339_MS},
        "consecutive_failures": {"type": "integer", "minimum": 1},
    },
}
FIELD_ORDER = ALERT_SCHEMA["required"]
VALIDATOR = Draft202012Validator(ALERT_SCHEMA)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Alerts:
    """The alert callable: records what it is given; raises while ``broken``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.broken = False

    def __call__(self, tenant_id: str, record: bytes) -> None:
        if self.broken:
            raise PublishError("the producer queue is full", retriable=True)
        body = orjson.loads(record)
        VALIDATOR.validate(body)
        assert list(body) == FIELD_ORDER
        assert body["tenant_id"] == tenant_id
        self.sent.append((tenant_id, body))

    def states(self) -> list[str]:
        return [body["state"] for _, body in self.sent]


class Env:
    def __init__(self, thresholds: HealthThresholds | None = None) -> None:
        self.clock = Clock()
        self.alerts = Alerts()
        self.registry = CollectorRegistry()
        self.health = DestinationHealth(
            "webhook",
            thresholds or HealthThresholds(),
            self.alerts,
            registry=self.registry,
            clock=self.clock,
        )

    def gauge(self, state: str) -> float | None:
        return self.registry.get_sample_value(
            "siem_export_destinations", {"method": "webhook", "state": state}
        )

    def alerted(self, state: str) -> float | None:
        return self.registry.get_sample_value(
            "siem_export_destination_alerts_total", {"method": "webhook", "state": state}
        )

    def alert_errors(self, state: str) -> float | None:
        return self.registry.get_sample_value(
            "siem_export_destination_alert_errors_total", {"method": "webhook", "state": state}
        )

    def fail(self, n: int, step: float = 1.0, **kw: Any) -> list[str]:
        out: list[str] = []
        for _ in range(n):
            out.append(self.health.failure("t1", URL, "HTTP 503 Service Unavailable", **kw))
            self.clock.now += step
        return out


@pytest.fixture
def env() -> Env:
    return Env()


def test_thresholds_defaults_and_validation() -> None:
    t = HealthThresholds()
    assert (t.failing_after_failures, t.failing_after_seconds, t.disabled_after_seconds) == (
        5,
        300,
        86400,
    )
    for name in HealthThresholds.model_fields:
        assert HealthThresholds.model_fields[name].description
    with pytest.raises(ValidationError):
        HealthThresholds(surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        HealthThresholds(failing_after_failures=0)
    with pytest.raises(ValidationError):
        HealthThresholds(failing_after_seconds=600, disabled_after_seconds=60)
    with pytest.raises(ValidationError):
        t.failing_after_failures = 3


def test_metrics_exist_at_zero(env: Env) -> None:
    for state in ("healthy", "failing", "disabled"):
        assert env.gauge(state) == 0
    for state in ("failing", "disabled", "recovered"):
        assert env.alerted(state) == 0
        assert env.alert_errors(state) == 0


def test_failing_by_count_one_alert(env: Env) -> None:
    assert env.fail(4) == ["healthy"] * 4
    assert env.alerts.sent == []
    assert env.gauge("healthy") == 1
    assert env.fail(1) == ["failing"]
    assert env.fail(10) == ["failing"] * 10  # no alert per failure
    assert env.alerts.states() == ["failing"]
    tenant, body = env.alerts.sent[0]
    assert tenant == "t1"
    assert body == {
        "type": "siem_export.destination_health",
        "version": 1,
        "tenant_id": "t1",
        "method": "webhook",
        "endpoint": URL,
        "state": "failing",
        "reason": "HTTP 503 Service Unavailable",
        "since": "2025-01-31T12:00:00.000Z",
        "at": "2025-01-31T12:00:04.000Z",
        "consecutive_failures": 5,
    }
    assert env.health.state("t1", URL) == "failing"
    assert not env.health.is_disabled("t1", URL)
    assert (env.gauge("healthy"), env.gauge("failing"), env.gauge("disabled")) == (0, 1, 0)
    assert env.alerted("failing") == 1


def test_failing_by_time(env: Env) -> None:
    env.clock.now += 0.25
    env.health.failure("t1", URL, "timeout")
    env.clock.now += 299.5
    assert env.health.failure("t1", URL, "timeout") == "healthy"
    env.clock.now += 0.5
    assert env.health.failure("t1", URL, "timeout") == "failing"
    [(_, body)] = env.alerts.sent
    assert body["consecutive_failures"] == 3
    assert body["since"] == "2025-01-31T12:00:00.250Z"
    assert body["at"] == "2025-01-31T12:05:00.250Z"


def test_disabled_by_time_then_recovered(env: Env) -> None:
    env.fail(5)
    env.clock.now = T0 + 86399
    assert env.health.failure("t1", URL, "HTTP 502 Bad Gateway") == "failing"
    env.clock.now = T0 + 86400
    assert env.health.failure("t1", URL, "HTTP 502 Bad Gateway") == "disabled"
    assert env.health.failure("t1", URL, "HTTP 502 Bad Gateway") == "disabled"
    assert env.health.is_disabled("t1", URL)
    assert env.alerts.states() == ["failing", "disabled"]
    disabled = env.alerts.sent[1][1]
    assert disabled["since"] == "2025-01-31T12:00:00.000Z"
    assert disabled["at"] == "2025-02-01T12:00:00.000Z"
    assert disabled["consecutive_failures"] == 7
    assert (env.gauge("failing"), env.gauge("disabled")) == (0, 1)

    env.clock.now += 60
    env.health.success("t1", URL)
    assert env.alerts.states() == ["failing", "disabled", "recovered"]
    recovered = env.alerts.sent[2][1]
    assert recovered["reason"] == "delivery succeeded"
    assert recovered["since"] == recovered["at"] == "2025-02-01T12:01:00.000Z"
    assert recovered["consecutive_failures"] == 8
    assert env.health.state("t1", URL) == "healthy"
    assert env.health.tracked == 0
    assert (env.gauge("healthy"), env.gauge("failing"), env.gauge("disabled")) == (0, 0, 0)
    assert [env.alerted(s) for s in ("failing", "disabled", "recovered")] == [1, 1, 1]


def test_gone_disables_at_once_from_healthy(env: Env) -> None:
    assert env.health.failure("t1", URL, "HTTP 410 Gone", disable=True) == "disabled"
    [(_, body)] = env.alerts.sent
    assert (body["state"], body["reason"], body["consecutive_failures"]) == (
        "disabled",
        "HTTP 410 Gone",
        1,
    )


def test_gone_disables_at_once_from_failing(env: Env) -> None:
    env.fail(5)
    assert env.health.failure("t1", URL, "HTTP 410 Gone", disable=True) == "disabled"
    assert env.health.failure("t1", URL, "HTTP 410 Gone", disable=True) == "disabled"
    assert env.alerts.states() == ["failing", "disabled"]


def test_misconfigured_fails_at_once(env: Env) -> None:
    assert env.health.failure("t1", URL, "HTTP 401 Unauthorized", misconfigured=True) == "failing"
    assert env.health.failure("t1", URL, "HTTP 401 Unauthorized", misconfigured=True) == "failing"
    [(_, body)] = env.alerts.sent
    assert (body["state"], body["consecutive_failures"]) == ("failing", 1)


def test_success_without_streak_is_silent_and_free(env: Env) -> None:
    env.health.success("t1", URL)
    env.fail(3)
    env.health.success("t1", URL)  # healthy streak ended: nothing to announce
    assert env.alerts.sent == []
    assert env.health.tracked == 0
    assert env.gauge("healthy") == 0
    # The next streak starts from scratch.
    assert env.fail(4) == ["healthy"] * 4


def test_many_tenants_cost_nothing_when_healthy(env: Env) -> None:
    for i in range(2000):
        env.health.success(f"t{i}", URL)
    for i in range(2000):
        env.health.failure(f"t{i}", URL, "timeout")
    assert env.health.tracked == 2000
    assert env.gauge("healthy") == 2000
    for i in range(2000):
        env.health.success(f"t{i}", URL)
    assert env.health.tracked == 0
    assert env.health._streaks == {}


def test_endpoints_and_tenants_are_independent(env: Env) -> None:
    other = "https://other.example.com/hook"
    env.fail(5)
    assert env.health.state("t1", other) == "healthy"
    assert env.health.state("t2", URL) == "healthy"
    env.health.failure("t1", other, "timeout", misconfigured=True)
    env.health.failure("t2", URL, "timeout", disable=True)
    assert [(t, b["endpoint"], b["state"]) for t, b in env.alerts.sent] == [
        ("t1", URL, "failing"),
        ("t1", other, "failing"),
        ("t2", URL, "disabled"),
    ]
    assert (env.gauge("failing"), env.gauge("disabled")) == (2, 1)


def test_reconfigured_recovers_a_disabled_destination(env: Env) -> None:
    env.health.failure("t1", URL, "HTTP 410 Gone", disable=True)
    env.clock.now += 5
    new = "https://siem.example.com/hook/v2"
    env.health.reconfigured("t1", new)
    assert env.alerts.states() == ["disabled", "recovered"]
    body = env.alerts.sent[1][1]
    assert (body["endpoint"], body["reason"], body["consecutive_failures"]) == (
        new,
        "configuration changed",
        1,
    )
    assert body["since"] == body["at"] == "2025-01-31T12:00:05.000Z"
    assert env.health.state("t1", URL) == "healthy"
    assert not env.health.is_disabled("t1", URL)
    assert env.health.tracked == 0
    assert env.gauge("disabled") == 0
    # A fresh start: the new endpoint needs a whole streak again.
    assert [env.health.failure("t1", new, "timeout") for _ in range(4)] == ["healthy"] * 4


def test_reconfigured_healthy_or_unknown_is_silent(env: Env) -> None:
    env.health.reconfigured("t1", URL)
    env.fail(2)
    env.health.reconfigured("t1", URL)
    assert env.alerts.sent == []
    assert env.health.tracked == 0
    assert env.gauge("healthy") == 0


def test_raising_alert_callable_does_not_propagate(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.alerts.broken = True
    with caplog.at_level(logging.WARNING, logger="connectors.health"):
        assert env.fail(5)[-1] == "failing"
    assert env.health.state("t1", URL) == "failing"
    assert env.alert_errors("failing") == 1
    assert env.alerted("failing") == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == "Destination health alert not published."
    assert errors[0].__dict__["error_type"] == "PublishError"
    assert errors[0].__dict__["tenant"] == "t1"
    # The next transition is published again once the publisher works.
    env.alerts.broken = False
    env.health.success("t1", URL)
    assert env.alerts.states() == ["recovered"]


def test_transitions_are_logged(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="connectors.health"):
        env.fail(5)
        env.health.failure("t1", URL, "HTTP 410 Gone", disable=True)
        env.health.success("t1", URL)
    got = [(r.levelno, r.getMessage(), r.__dict__["state"]) for r in caplog.records]
    assert got == [
        (logging.WARNING, "Destination failing.", "failing"),
        (logging.WARNING, "Destination disabled.", "disabled"),
        (logging.INFO, "Destination recovered.", "recovered"),
    ]
    for r in caplog.records:
        assert {"tenant", "method", "endpoint", "state", "reason"} <= r.__dict__.keys()
        assert r.__dict__["tenant"] == "t1"
        assert r.__dict__["method"] == "webhook"


def test_long_texts_are_cut(env: Env) -> None:
    long_url = "https://siem.example.com/" + "p" * 2000
    env.health.failure("t1", long_url, "x" * 5000, misconfigured=True)
    [(_, body)] = env.alerts.sent
    assert len(body["endpoint"]) == len(body["reason"]) == MAX_TEXT_CHARS
    assert body["reason"].endswith("...")
    assert env.health.state("t1", long_url) == "failing"  # tracked under the full endpoint


def test_custom_thresholds() -> None:
    env = Env(
        HealthThresholds(
            failing_after_failures=2, failing_after_seconds=10, disabled_after_seconds=20
        )
    )
    assert env.fail(2, step=1) == ["healthy", "failing"]
    env.clock.now = T0 + 20
    assert env.health.failure("t1", URL, "timeout") == "disabled"
    assert env.alerts.states() == ["failing", "disabled"]


def test_old_streak_goes_straight_to_disabled() -> None:
    env = Env()
    env.health.failure("t1", URL, "timeout")
    env.clock.now = T0 + 90_000  # one more failure a day later: a single transition
    assert env.health.failure("t1", URL, "timeout") == "disabled"
    assert env.alerts.states() == ["disabled"]
