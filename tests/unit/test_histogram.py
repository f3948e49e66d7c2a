"""The batch histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

from array import array

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.engine.histogram import BatchHistogram

pytestmark = pytest.mark.unit

BUCKETS = (0.05, 0.1, 1, 86400)


def _series(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


NOW_MS = 1_700_000_000_123.0


def _stamps(ages: list[float]) -> list[int]:
    """Record timestamps (ms) that are ``ages`` seconds old at NOW_MS."""
    return [int(NOW_MS - age * 1000) for age in ages]


def test_same_exposition_as_the_library_histogram() -> None:
    reference, ours = CollectorRegistry(), CollectorRegistry()
    hist = Histogram("lat_seconds", "doc", ["connector"], buckets=BUCKETS, registry=reference)
    batch = BatchHistogram("lat_seconds", "doc", ["connector"], BUCKETS, ours)
    # On a bound, just above one, far past the last; -2.5 is a timestamp 2.5 s in the future
    # (a producer's clock ahead of ours): age 0.
    ages = [0.0, 0.05, 0.051, 0.07, 0.1, 0.5, 1.0, 2.0, 100_000.0, -2.5, 0.05]
    for age in ages:
        hist.labels("webhook").observe(max(0.0, age))
    for age in ages[:3]:
        hist.labels("syslog").observe(max(0.0, age))
    # Unsorted input, batches of several sizes, an empty one.
    batch.observe_ages(("webhook",), NOW_MS, _stamps(ages[:5])[::-1])
    batch.observe_ages(("webhook",), NOW_MS, _stamps(ages[5:]))
    batch.observe_ages(("syslog",), NOW_MS, _stamps(ages[:1]))
    batch.observe_ages(("syslog",), NOW_MS, array("q", _stamps(ages[1:3])))
    batch.observe_ages(("syslog",), NOW_MS, [])
    assert _series(ours) == _series(reference)
    assert ours.get_sample_value(
        "lat_seconds_bucket", {"connector": "webhook", "le": "0.05"}
    ) == pytest.approx(4)
    assert ours.get_sample_value(
        "lat_seconds_bucket", {"connector": "webhook", "le": "+Inf"}
    ) == pytest.approx(11)
    assert ours.get_sample_value("lat_seconds_sum", {"connector": "webhook"}) == pytest.approx(
        sum(max(0.0, age) for age in ages)
    )
    assert ours.get_sample_value("lat_seconds_count", {"connector": "syslog"}) == 3


def test_ages_against_bounds_at_or_below_zero() -> None:
    reference, ours = CollectorRegistry(), CollectorRegistry()
    bounds = (-1.0, 0.0, 0.5)
    hist = Histogram("h_seconds", "doc", ["c"], buckets=bounds, registry=reference)
    batch = BatchHistogram("h_seconds", "doc", ["c"], bounds, ours)
    ages = [-3.0, 0.0, 0.25, 0.5, 9.0]
    for age in ages:
        hist.labels("x").observe(max(0.0, age))
    batch.observe_ages(("x",), NOW_MS, _stamps(ages))
    # (The library leaves out _sum when a bound is negative; the buckets must agree.)
    buckets = [line for line in _series(reference) if "_bucket" in line]
    assert len(buckets) == 4
    assert [line for line in _series(ours) if "_bucket" in line] == buckets


def test_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError, match="buckets"):
        BatchHistogram("h", "doc", [], (), None)
    with pytest.raises(ValueError, match="buckets"):
        BatchHistogram("h", "doc", [], (1, 1), None)
