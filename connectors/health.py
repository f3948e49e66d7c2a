"""Health of customers' destinations, shared by every connector (webhook, syslog, storage).

Each connector reports the outcome of every delivery attempt to one ``DestinationHealth``:
``success`` when the destination acknowledged, ``failure`` when it did not. Per tenant and
endpoint a small state machine turns that into alerts for the platform's notifier::

    healthy --(failing_after_failures consecutive failures, or failing_after_seconds since
               the first failure of the streak, or a misconfiguration: HTTP 401/403/404)--> failing
    failing --(disabled_after_seconds since the first failure, or disable=True)--> disabled
    healthy --(disable=True, e.g. HTTP 410 Gone)--> disabled
    failing | disabled --(a success, or the tenant's destination configuration changed)--> healthy

One alert is published per transition (never one per failure), with ``state`` ``failing``,
``disabled`` or ``recovered``. A connector stops sending to a disabled endpoint
(``is_disabled``) until the tenant changes its configuration (``reconfigured``).

Alert record (the contract for the notifier; also in docs/alerts.md). UTF-8 JSON object,
keys always in this order, Kafka key = tenant id::

    {"type": "siem_export.destination_health",  constant
     "version": 1,                              bumped on incompatible changes
     "tenant_id": "tnt_0001",
     "method": "webhook",                       webhook | syslog | storage | ...
     "endpoint": "https://siem.example.com/hook",  without credentials, query or userinfo
     "state": "failing",                        failing | disabled | recovered
     "reason": "HTTP 503 Service Unavailable",  short, human readable, no secrets
     "since": "2025-01-31T12:00:00.000Z",       failing/disabled: first failure of the streak;
                                                recovered: when it recovered
     "at": "2025-01-31T12:05:00.000Z",          when the alert was produced
     "consecutive_failures": 5}                 length of the streak (for recovered: the
                                                streak that just ended)

Timestamps are RFC 3339 UTC with milliseconds and ``Z``. ``endpoint`` and ``reason`` are cut
to ``MAX_TEXT_CHARS`` characters. Endpoints must be given ALREADY stripped of secrets by the
caller (a webhook URL without userinfo and query string, a syslog host:port, a bucket and
prefix): this module puts them in records and logs as they are.

Only endpoints with an open failure streak are kept in memory; a success forgets the entry,
so thousands of healthy tenants cost nothing. Metrics (bounded labels, no tenant ids):
``siem_export_destinations{method, state}`` (tracked endpoints by state; ``healthy`` counts
those with failures below the thresholds), ``siem_export_destination_alerts_total{method,
state}`` (alerts produced) and ``siem_export_destination_alert_errors_total{method, state}``
(alerts the alert callable failed to take; each is also logged at ERROR).

Not thread-safe: call it from the connector's asyncio loop (or one thread) only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streams.event import format_timestamp

_log = logging.getLogger(__name__)

HealthState = Literal["healthy", "failing", "disabled"]
AlertState = Literal["failing", "disabled", "recovered"]
ALERT_TYPE = "siem_export.destination_health"
ALERT_VERSION = 1
MAX_TEXT_CHARS = 512
"""Longest ``endpoint`` and ``reason`` put in a record; longer ones are cut."""

_HEALTH_STATES: tuple[HealthState, ...] = get_args(HealthState)
_ALERT_STATES: tuple[AlertState, ...] = get_args(AlertState)


class HealthThresholds(BaseModel):
    """When a failing destination alerts and when it is disabled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failing_after_failures: int = Field(
        default=5,
        ge=1,
        description="Consecutive failed deliveries after which the destination is failing.",
    )
    failing_after_seconds: float = Field(
        default=300,
        gt=0,
        description="Seconds since the first failure of a streak after which it is failing.",
    )
    disabled_after_seconds: float = Field(
        default=86400,
        gt=0,
        description=(
            "Seconds since the first failure of a streak after which the destination is"
            " disabled (no more deliveries until its configuration changes)."
        ),
    )

    @model_validator(mode="after")
    def _disabled_after_failing(self) -> HealthThresholds:
        if self.disabled_after_seconds < self.failing_after_seconds:
            raise ValueError("disabled_after_seconds must not be less than failing_after_seconds")
        return self


@dataclass(slots=True)
class _Streak:
    """An endpoint that failed and has not succeeded since."""

    first_failure: float
    failures: int = 0
    state: HealthState = "healthy"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 3] + "..."


def _rfc3339(seconds: float) -> str:
    return format_timestamp(int(seconds * 1000))


class DestinationHealth:
    """The health state machine of one connector's destinations (see the module docstring)."""

    def __init__(
        self,
        method: str,
        thresholds: HealthThresholds,
        alert: Callable[[str, bytes], None],
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.method = method
        self.thresholds = thresholds
        self._alert = alert
        self._clock = clock
        self._streaks: dict[str, dict[str, _Streak]] = {}  # tenant -> endpoint -> streak
        self._counts: dict[HealthState, int] = dict.fromkeys(_HEALTH_STATES, 0)
        reg = registry or REGISTRY
        gauge = Gauge(
            "siem_export_destinations",
            "Destinations with an open failure streak, by state (healthy: below the thresholds).",
            ["method", "state"],
            registry=reg,
        )
        alerts = Counter(
            "siem_export_destination_alerts",
            "Destination health alerts produced, by state.",
            ["method", "state"],
            registry=reg,
        )
        errors = Counter(
            "siem_export_destination_alert_errors",
            "Destination health alerts the alert publisher failed to take.",
            ["method", "state"],
            registry=reg,
        )
        self._gauge = {s: gauge.labels(method, s) for s in _HEALTH_STATES}
        self._alerts = {s: alerts.labels(method, s) for s in _ALERT_STATES}
        self._errors = {s: errors.labels(method, s) for s in _ALERT_STATES}
        for child in self._gauge.values():
            child.set(0)

    # ------------------------------------------------------------------ queries

    def state(self, tenant_id: str, endpoint: str) -> HealthState:
        """``healthy``, ``failing`` or ``disabled``."""
        streak = self._streaks.get(tenant_id, {}).get(endpoint)
        return "healthy" if streak is None else streak.state

    def is_disabled(self, tenant_id: str, endpoint: str) -> bool:
        """True once the endpoint is disabled: stop sending until ``reconfigured``."""
        return self.state(tenant_id, endpoint) == "disabled"

    @property
    def tracked(self) -> int:
        """How many endpoints have an open failure streak (and so use memory)."""
        return sum(self._counts.values())

    # ------------------------------------------------------------------ outcomes

    def success(self, tenant_id: str, endpoint: str) -> None:
        """The endpoint acknowledged a delivery: end its streak; alert if it was not healthy."""
        endpoints = self._streaks.get(tenant_id)
        if endpoints is None:
            return  # the common case: nothing tracked for this tenant
        streak = endpoints.pop(endpoint, None)
        if streak is None:
            return
        if not endpoints:
            del self._streaks[tenant_id]
        self._count(streak.state, -1)
        if streak.state != "healthy":
            now = self._clock()
            self._transition(
                tenant_id, endpoint, "recovered", "delivery succeeded", now, now, streak.failures
            )

    def failure(
        self,
        tenant_id: str,
        endpoint: str,
        reason: str,
        *,
        disable: bool = False,
        misconfigured: bool = False,
    ) -> HealthState:
        """Count one failed delivery; returns the endpoint's state afterwards.

        ``misconfigured`` (e.g. HTTP 401/403/404) makes a healthy endpoint failing at once;
        ``disable`` (e.g. HTTP 410 Gone) disables it at once, from any state.
        """
        now = self._clock()
        endpoints = self._streaks.setdefault(tenant_id, {})
        streak = endpoints.get(endpoint)
        if streak is None:
            streak = endpoints[endpoint] = _Streak(first_failure=now)
            self._count("healthy", 1)
        streak.failures += 1
        elapsed = now - streak.first_failure
        limits = self.thresholds
        new: HealthState = streak.state
        if streak.state != "disabled" and (disable or elapsed >= limits.disabled_after_seconds):
            new = "disabled"
        elif streak.state == "healthy" and (
            misconfigured
            or streak.failures >= limits.failing_after_failures
            or elapsed >= limits.failing_after_seconds
        ):
            new = "failing"
        if new != streak.state:
            self._count(streak.state, -1)
            self._count(new, 1)
            streak.state = new
            alert_state: AlertState = "disabled" if new == "disabled" else "failing"
            self._transition(
                tenant_id, endpoint, alert_state, reason, streak.first_failure, now, streak.failures
            )
        return new

    def reconfigured(self, tenant_id: str, new_endpoint: str) -> None:
        """The tenant's destination configuration changed: forget its streaks.

        If an endpoint was failing or disabled, publish ``recovered`` ("configuration changed")
        for ``new_endpoint``: the destination is enabled again and gets a fresh start.
        """
        endpoints = self._streaks.pop(tenant_id, None)
        if not endpoints:
            return
        for streak in endpoints.values():
            self._count(streak.state, -1)
        worst = max(endpoints.values(), key=lambda s: _HEALTH_STATES.index(s.state))
        if worst.state != "healthy":
            now = self._clock()
            self._transition(
                tenant_id,
                new_endpoint,
                "recovered",
                "configuration changed",
                now,
                now,
                worst.failures,
            )

    # ------------------------------------------------------------------ internals

    def _count(self, state: HealthState, delta: int) -> None:
        self._counts[state] += delta
        self._gauge[state].set(self._counts[state])

    def _transition(
        self,
        tenant_id: str,
        endpoint: str,
        state: AlertState,
        reason: str,
        since: float,
        now: float,
        failures: int,
    ) -> None:
        endpoint = _cut(endpoint)
        reason = _cut(reason)
        since_text = _rfc3339(since)
        record = orjson.dumps(
            {
                "type": ALERT_TYPE,
                "version": ALERT_VERSION,
                "tenant_id": tenant_id,
                "method": self.method,
                "endpoint": endpoint,
                "state": state,
                "reason": reason,
                "since": since_text,
                "at": _rfc3339(now),
                "consecutive_failures": failures,
            }
        )
        _log.log(
            logging.INFO if state == "recovered" else logging.WARNING,
            f"Destination {state}.",
            extra={
                "tenant": tenant_id,
                "method": self.method,
                "endpoint": endpoint,
                "state": state,
                "reason": reason,
                "since": since_text,
                "consecutive_failures": failures,
            },
        )
        self._alerts[state].inc()
        try:
            self._alert(tenant_id, record)
        except Exception as exc:
            # Delivery goes on; the alert publisher logs its own details.
            self._errors[state].inc()
            _log.error(
                "Destination health alert not published.",
                extra={
                    "tenant": tenant_id,
                    "method": self.method,
                    "endpoint": endpoint,
                    "state": state,
                    "error_type": type(exc).__name__,
                },
            )
