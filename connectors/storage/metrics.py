"""The storage connector's own Prometheus series (the engine counts deliveries and latency).

Who uses it: ``StorageSink`` creates one ``StorageMetrics`` and shares it with its
``UploadQueue``. Labels are bounded: providers, results, close reasons, and the two fixed
labels of ``buffered_bytes``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class StorageMetrics:
    """Every series of the storage connector, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.objects = Counter(
            "siem_export_storage_objects",
            "Objects written, by provider and result (ok, failed).",
            ["provider", "result"],
            registry=registry,
        )
        self.bytes = Counter(
            "siem_export_storage_object_bytes",
            "Bytes of objects written (compressed, as stored).",
            ["provider"],
            registry=registry,
        )
        self.seconds = Histogram(
            "siem_export_storage_upload_seconds",
            "Time to write one object.",
            ["provider"],
            buckets=_UPLOAD_BUCKETS,
            registry=registry,
        )
        self.open = Gauge(
            "siem_export_storage_open_files",
            "Files being assembled.",
            registry=registry,
        )
        self.uploading = Gauge(
            "siem_export_storage_uploads_in_progress",
            "Files closed and being written (or waiting for an upload slot).",
            registry=registry,
        )
        self.waiting = Gauge(
            "siem_export_storage_uploads_waiting",
            "Files closed and waiting for an upload slot.",
            registry=registry,
        )
        self.backpressure = Gauge(
            "siem_export_storage_backpressure",
            "1 while tenants whose destination has files not yet written start no new file "
            "(max_waiting_files or max_waiting_events reached).",
            registry=registry,
        )
        buffered = Gauge(
            "siem_export_storage_buffered_bytes",
            "Content of files not yet written, by where it is held (memory, disk) and whether "
            "the file is open or closed (waiting for an upload slot or being written).",
            ["where", "files"],
            registry=registry,
        )
        self.open_memory = buffered.labels("memory", "open")
        self.open_disk = buffered.labels("disk", "open")
        self.closed_memory = buffered.labels("memory", "closed")
        self.closed_disk = buffered.labels("disk", "closed")
        self.closed = Counter(
            "siem_export_storage_files_closed",
            "Files closed, by why: events, bytes, interval, flush, reconfigured.",
            ["reason"],
            registry=registry,
        )
        self.budget_spills = Counter(
            "siem_export_storage_budget_spills",
            "Open files whose content moved to local disk before their own spill threshold, "
            "because the open files together held more than open_memory_bytes in memory.",
            registry=registry,
        )
        self.unrouted = Counter(
            "siem_export_storage_unrouted_events",
            "Events of tenants without a storage destination (acknowledged, not written).",
            registry=registry,
        )
