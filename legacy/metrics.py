"""The legacy metrics primitives: dicts and sample lists behind one lock.

Before the plan's lock-free counters, every counter bump and latency sample took the same
mutex, and a snapshot sorted the samples while holding it. In this runtime every update
comes from the event loop thread (worker threads persist and snapshot but count nothing),
so the lock is never contended: what it costs is one acquire and release per update, and a
status snapshot that sorts up to `HISTOGRAM_WINDOW` samples per histogram on the loop. The
lock still makes the metrics safe to update from any thread. It is counted (`lock_stats`)
so the A/B comparison can show what it costs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from framework.metrics_state import HistogramState, MetricsState
from framework.seams import LockStats
from legacy.rwlock import CountingThreadLock

__all__ = ["HISTOGRAM_WINDOW", "LockedMetrics"]

HISTOGRAM_WINDOW: Final = 10_000
"""Samples kept per histogram; percentiles are computed over these."""


class _Histogram:
    __slots__ = ("count", "max", "samples", "sum")

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=HISTOGRAM_WINDOW)
        self.count = 0
        self.sum = 0.0
        self.max = -math.inf

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        return {
            "count": self.count,
            "sum": self.sum,
            "p50": _percentile(ordered, 0.50),
            "p99": _percentile(ordered, 0.99),
            "max": self.max,
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least ``q`` of the samples at or below it
    (NaN without samples, which only a predecessor's state without samples can cause)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class LockedMetrics:
    """`MetricsPrimitives` with every access under one counted ``threading.Lock``.

    ``snapshot()`` is flat: a counter's name maps to its int, a histogram's to
    ``{count, sum, p50, p99, max}`` (count, sum and max over every sample recorded,
    p50 and p99 over the last `HISTOGRAM_WINDOW`). A name is a counter or a histogram, not
    both: using it as the other raises ``ValueError``.

    State carried across a swap: ``{"counters": {name: int}, "histograms": {name:
    {"count", "sum", "max", "samples": [...]}}}``; importing adds to what is here.
    """

    __slots__ = ("_counters", "_histograms", "_lock")

    def __init__(self) -> None:
        self._lock = CountingThreadLock()
        self._counters: dict[str, int] = {}
        self._histograms: dict[str, _Histogram] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            counter = self._counters.get(name)
            if counter is None:
                self._check_unused(name, self._histograms, "a histogram")
                counter = 0
            self._counters[name] = counter + value

    def record(self, name: str, value: float) -> None:
        with self._lock:
            histogram = self._histograms.get(name)
            if histogram is None:
                self._check_unused(name, self._counters, "a counter")
                histogram = self._histograms[name] = _Histogram()
            histogram.add(value)

    @staticmethod
    def _check_unused(name: str, other: Mapping[str, object], kind: str) -> None:
        if name in other:
            raise ValueError(f"metric {name!r} is {kind}; use another name")

    def snapshot(self) -> Mapping[str, Any]:
        with self._lock:
            # Sorting under the lock is the legacy cost this plugin exists to show.
            snapshot: dict[str, Any] = dict(self._counters)
            for name, histogram in self._histograms.items():
                snapshot[name] = histogram.summary()
            return snapshot

    def export_state(self) -> dict[str, Any]:
        with self._lock:
            return MetricsState(
                counters=dict(self._counters),
                histograms={
                    name: HistogramState(
                        count=h.count, sum=h.sum, max=h.max, samples=tuple(h.samples)
                    )
                    for name, h in self._histograms.items()
                },
            ).to_plain()

    def import_state(self, state: Any) -> None:
        incoming = MetricsState.read(state)  # read and checked before anything changes
        if incoming is None:
            return
        with self._lock:
            incoming.check_kinds(self._counters, self._histograms)
            for name, value in incoming.counters.items():
                self._counters[name] = self._counters.get(name, 0) + value
            for name, theirs in incoming.histograms.items():
                ours = self._histograms.setdefault(name, _Histogram())
                ours.samples.extend(theirs.samples)
                ours.count += theirs.count
                ours.sum += theirs.sum
                ours.max = max(ours.max, theirs.max)

    def lock_stats(self) -> LockStats:
        return self._lock.stats()
