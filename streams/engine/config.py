"""Settings of the delivery engine (nested under ``engine`` in the process settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """Bounds and timings of the consumer-group runner shared by every connector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str | None = Field(
        default=None, description="Consumer group (default: siem-export-<connector>)."
    )
    lane_max_events: int = Field(
        default=20_000,
        ge=1,
        description="Events one tenant lane may hold in memory. Past it the lane parks and "
        "re-reads later, which costs a fetch restart: keep it well above a fetch batch and "
        "above a busy tenant's share of a backlog (bench/webhook.py: 5000 made the largest "
        "of 100 tenants re-read, 0.49x vs 0.56x of the ceiling). A failing lane drops its "
        "queue anyway after park_after_failures; process_max_events bounds the total.",
    )
    process_max_events: int = Field(
        default=100_000,
        ge=1,
        description="Events all lanes may hold together (queued as fetched, about 0.5 KB "
        "each; decoded only in batches on their way to the sink); past it every partition "
        "is paused.",
    )
    park_after_failures: int = Field(
        default=3,
        ge=1,
        description="Consecutive failures after which a lane drops its queue and re-reads later.",
    )
    retry_initial_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    paused_retry_seconds: float = Field(
        default=300.0, gt=0, description="Delay after a non-retriable (misconfiguration) error."
    )
    max_concurrent_sends: int = Field(default=256, ge=1)
    commit_interval_seconds: float = Field(default=2.0, gt=0)
    metadata_limit_bytes: int = Field(default=4096, ge=64)
    revoke_timeout_seconds: float = Field(default=10.0, ge=0)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    max_record_bytes: int = Field(default=1_048_576, ge=1024)
    fetch_batch: int = Field(default=2000, ge=1)
    fetch_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1_048_576,
        description="Most bytes one fetch response may carry (librdkafka fetch.max.bytes, 50 MiB "
        "by default there). Fetch buffers are most of the process's memory: over 300,000 "
        "events RSS grew by 135 MiB at librdkafka's default and by 75 MiB at 4 MiB, with "
        "less CPU per event, on a local broker (docs/engine.md). Raise it for a distant broker.",
    )
    queued_max_messages_kbytes: int = Field(
        default=8192,
        ge=1024,
        le=2_097_151,
        description="KiB of fetched records librdkafka may hold ahead of the engine (its "
        "queued.max.messages.kbytes, 64 MiB by default there). 8 MiB kept the full rate on a "
        "local broker at 65 MiB less RSS than 32 MiB; raise it for a distant broker.",
    )
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    session_timeout_ms: int = Field(default=45_000, ge=6000)
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest", description="Where a new consumer group starts."
    )
    on_offset_out_of_range: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where to resume when the committed offset was deleted by retention "
        "(always logged and counted with the size of the gap).",
    )
    stall_seconds: float = Field(
        default=120.0, gt=0, description="Lag > 0 and no progress for this long is a stall."
    )
    gc_young_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Allocations between two young-generation runs of Python's cyclic garbage "
        "collector while the engine runs (process-wide; 0 keeps Python's 700). Worth about a "
        "tenth of the engine's CPU while lanes held decoded events; since they hold records "
        "as fetched it is within the benchmark's noise, and it stays for sinks that hold many "
        "decoded events. Only reference cycles wait longer to be freed.",
    )
    decode_processes: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Worker processes that decode records for a sink that reads only the "
        "events' JSON (the storage sink): decoding is most of an event's CPU, and there it "
        "runs beside the event loop instead of on it. 0 decodes on the event loop. Other "
        "sinks always decode on the event loop (streams/engine/decoding.py).",
    )
    tenant_labels: bool = Field(
        default=False, description="Add tenant ids to lane metrics (unbounded labels)."
    )
