"""Histogram buckets cheap enough for the hot path: one ``observe`` per chunk or batch, weighted.

The actors record into plain Python objects (no locks, no label lookups); the metrics collector
turns them into Prometheus histograms at scrape time (``weir.observability.metrics``).
"""

from __future__ import annotations

from bisect import bisect_left

#: Events per batch written (the batch actor's max_events defaults to 500).
BATCH_SIZE_BOUNDS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
#: Seconds from receipt to durable.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Buckets:
    """A histogram's raw state: counts per bucket (not cumulative), their sum and count.

    ``counts[i]`` holds the observations ``bounds[i-1] < value <= bounds[i]``; the last slot is
    everything above the last bound (+Inf).
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, weight: int = 1) -> None:
        """Record ``weight`` observations of ``value`` (e.g. every event of a chunk at once)."""
        self.counts[bisect_left(self.bounds, value)] += weight
        self.sum += value * weight
        self.count += weight

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus-style ``(le, cumulative count)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts):
            total += count
            out.append((_le(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))
