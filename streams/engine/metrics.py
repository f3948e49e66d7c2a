"""Prometheus metrics of the engine. Labels are bounded: connector, topic, partition, reason;
tenant ids only when an operator turns ``engine.tenant_labels`` on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.engine.histogram import BatchHistogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


class EngineMetrics:
    """Every series the engine exports, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, connector: str) -> None:
        self.connector = connector
        ns = "siem_export"
        self.consumed = Counter(
            f"{ns}_consumed",
            "Records fetched from Kafka.",
            ["connector", "topic"],
            registry=registry,
        )
        self.skipped = Counter(
            f"{ns}_skipped",
            "Records skipped: already handled (after a restart or re-read), or their lane is "
            "parked and will read them again.",
            ["connector"],
            registry=registry,
        )
        self.delivered = Counter(
            f"{ns}_delivered",
            "Events acknowledged by the destination.",
            ["connector"],
            registry=registry,
        )
        self.retried = Counter(
            f"{ns}_retried", "Batches sent again after a failure.", ["connector"], registry=registry
        )
        self.failed = Counter(
            f"{ns}_send_failures",
            "Failed send attempts by kind.",
            ["connector", "kind"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            f"{ns}_dead_lettered",
            "Records sent to the dead-letter topic.",
            ["connector", "reason"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{ns}_in_flight_events",
            "Events handed to the sink and not yet acknowledged.",
            ["connector"],
            registry=registry,
        )
        self.buffered = Gauge(
            f"{ns}_buffered_events", "Events held in lane queues.", ["connector"], registry=registry
        )
        self.lanes = Gauge(
            f"{ns}_lanes", "Tenant lanes by state.", ["connector", "state"], registry=registry
        )
        self.rereading = Gauge(
            f"{ns}_lanes_rereading",
            "Lanes whose next events are to be read again from Kafka: parked (full or failing) "
            "or catching up after a re-read or a restart.",
            ["connector"],
            registry=registry,
        )
        self.lag = Gauge(
            f"{ns}_partition_lag",
            "High watermark minus committed offset of owned partitions.",
            ["connector", "topic", "partition"],
            registry=registry,
        )
        self.stalled = Gauge(
            f"{ns}_partition_stalled",
            "1 while an owned partition has lag and made no progress for engine.stall_seconds.",
            ["connector", "topic", "partition"],
            registry=registry,
        )
        self.commits = Counter(
            f"{ns}_commits", "Offset commits by result.", ["connector", "result"], registry=registry
        )
        self.metadata_truncated = Counter(
            f"{ns}_commit_metadata_truncated",
            "Commits whose lagging-tenant list did not fit the size limit.",
            ["connector"],
            registry=registry,
        )
        self.offset_gap = Counter(
            f"{ns}_offset_gap_records",
            "Records lost to retention before delivery (committed offset no longer existed).",
            ["connector", "topic", "partition"],
            registry=registry,
        )
        self.paused = Gauge(
            f"{ns}_fetch_paused",
            "1 while fetching is paused because the process-wide buffer cap is reached.",
            ["connector"],
            registry=registry,
        )
        self.rebalances = Counter(
            f"{ns}_rebalances",
            "Partitions assigned, revoked or lost.",
            ["connector", "event"],
            registry=registry,
        )
        self.latency = BatchHistogram(
            f"{ns}_delivery_latency_seconds",
            "From the record's Kafka timestamp to the destination's acknowledgement.",
            ["connector"],
            LATENCY_BUCKETS,
            registry,
        )
        self.tenant_delivered = Counter(
            f"{ns}_tenant_delivered",
            "Events delivered per tenant (only with engine.tenant_labels).",
            ["connector", "tenant"],
            registry=registry,
        )
