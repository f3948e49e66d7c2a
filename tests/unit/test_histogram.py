"""The batch histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.engine.histogram import BatchHistogram

pytestmark = pytest.mark.unit

BUCKETS = (0.05, 0.1, 1, 86400)


def _series(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_same_exposition_as_the_library_histogram() -> None:
    reference, ours = CollectorRegistry(), CollectorRegistry()
    hist = Histogram("lat_seconds", "doc", ["connector"], buckets=BUCKETS, registry=reference)
    batch = BatchHistogram("lat_seconds", "doc", ["connector"], BUCKETS, ours)
    values = [0.0, 0.05, 0.07, 0.1, 0.5, 1.0, 2.0, 100_000.0]
    for value in values:
        hist.labels("webhook").observe(value)
    for value in values[:3]:
        hist.labels("syslog").observe(value)
    batch.observe_batch(("webhook",), values[:5])
    batch.observe_batch(("webhook",), values[5:])
    batch.observe_batch(("syslog",), values[:3])
    batch.observe_batch(("syslog",), [])
    assert _series(ours) == _series(reference)
    assert ours.get_sample_value(
        "lat_seconds_bucket", {"connector": "webhook", "le": "0.1"}
    ) == pytest.approx(4)
    assert ours.get_sample_value("lat_seconds_count", {"connector": "syslog"}) == 3


def test_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError, match="buckets"):
        BatchHistogram("h", "doc", [], (), None)
    with pytest.raises(ValueError, match="buckets"):
        BatchHistogram("h", "doc", [], (1, 1), None)
