"""A Prometheus histogram that takes a whole batch of observations in one call.

Who uses it: the engine's delivery-latency metric. ``prometheus_client.Histogram.observe``
costs about a microsecond per event, which at tens of thousands of events per second is a
visible share of the loop thread; acknowledgements arrive in batches, so the engine records
them per batch: the record timestamps of a batch are sorted once (in C) and each bucket costs
at most one ``bisect``, so an event costs a few C-level operations; one lock per batch.
The exposition is the standard histogram (``_bucket{le=…}``, ``_sum``, ``_count``).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class _Series:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket (not cumulative); the last one is +Inf
        self.total = 0.0


class BatchHistogram(Collector):
    """A labelled histogram with ``observe_batch`` (labels are bounded by the caller)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("buckets must be distinct and non-empty")
        self._name = name
        self._doc = documentation
        self._label_names = tuple(label_names)
        self._bounds = bounds
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_ages(
        self, labels: tuple[str, ...], now_ms: float, stamps_ms: Sequence[int]
    ) -> None:
        """Record the age in seconds at ``now_ms`` of every timestamp (ms) of ``stamps_ms``
        under ``labels``; a timestamp after ``now_ms`` counts as age 0."""
        count = len(stamps_ms)
        if not count:
            return
        ordered = sorted(stamps_ms)
        oldest = ordered[0]
        # age <= bound  <=>  stamp >= now - bound: events at or under each bound, cumulative.
        # Integer thresholds (stamps are whole ms) keep the comparisons int-to-int; once the
        # oldest event is under a bound, it is under every larger one too.
        under: list[int] = []
        for bound in self._bounds:
            if bound < 0:
                under.append(0)
                continue
            threshold = math.ceil(now_ms - bound * 1000.0)
            if threshold <= oldest:
                break
            under.append(count - bisect_left(ordered, threshold))
        under.extend([count] * (len(self._bounds) - len(under)))
        past = bisect_right(ordered, now_ms)  # the others are in the future: age 0
        total = (past * now_ms - sum(ordered if past == count else ordered[:past])) / 1000.0
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = _Series(len(self._bounds) + 1)
            counts = series.counts
            below = 0
            for slot, cumulative in enumerate(under):
                counts[slot] += cumulative - below
                below = cumulative
            counts[-1] += count - below
            series.total += total

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._doc, labels=self._label_names)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._label_names)
        with self._lock:
            snapshot = [(k, list(s.counts), s.total) for k, s in self._series.items()]
        for labels, counts, total in snapshot:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip([*self._bounds, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric(list(labels), buckets, total)
        yield family


def _le(bound: float) -> str:
    if bound == float("inf"):
        return "+Inf"
    return repr(float(bound))
