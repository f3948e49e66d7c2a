"""The REST API's Prometheus series. Labels are bounded: routes, status codes and fixed reason
words, never tenant or account ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    """Series of one API process; tests give each app its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "siem_export_api_requests",
            "API requests by route template and HTTP status (aborted: an NDJSON stream cut short).",
            ["route", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "siem_export_api_request_seconds",
            "Time to answer an API request (to the last byte for NDJSON streams).",
            ["route"],
            buckets=_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.auth = Counter(
            "siem_export_api_authentications",
            "Authentications by outcome (success, failure, denied) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "siem_export_api_rate_limited",
            "Requests refused with 429 because the account's bucket was empty.",
            registry=self.registry,
        )
        self.auth_events = Counter(
            "siem_export_api_auth_events",
            "Authentication audit events: published, lost (not stored by Kafka), or "
            "unattributed (no tenant to publish to: missing, malformed or unknown token).",
            ["result"],
            registry=self.registry,
        )
        self.streamed = Counter(
            "siem_export_api_streamed_events",
            "Events written to NDJSON streams.",
            registry=self.registry,
        )
