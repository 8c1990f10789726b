"""``LockFreeMetrics``: the plan's lock-free counters and histograms, the Python way.

The runtime updates metrics only from its event loop thread, so every counter and
histogram has exactly one writer: an update is a plain ``+=`` with no lock at all (the
analogue of a relaxed atomic in the Rust plan). Readers on the same loop see a consistent
value between two awaits; ``snapshot`` copies the numbers, so a status request never holds
anything the hot path needs (the legacy metrics sort samples under their lock instead).

The single-writer rule is enforced, not assumed: the first update binds the metrics to its
thread, and an update from any other thread raises `WrongWriterThread` naming the metric
and both threads (two unsynchronised ``+=`` would lose counts silently). A swap builds a
fresh instance, which binds on its own first update.

Histograms keep counts in logarithmic buckets (``BUCKETS_PER_DOUBLING`` per power of two,
so a percentile is within about 9% of the true value) instead of raw samples: constant
memory, O(1) ``record``, percentiles from cumulative counts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from framework.metrics_state import HistogramState, MetricsState
from framework.seams import LockStats

__all__ = ["BUCKETS_PER_DOUBLING", "LockFreeMetrics", "LogHistogram", "WrongWriterThread"]

BUCKETS_PER_DOUBLING: Final = 8
_ZERO_BUCKET: Final = -(10**9)
"""Bucket key for values <= 0 (they have no logarithm)."""


class LogHistogram:
    __slots__ = ("buckets", "count", "max", "sum")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.max = -math.inf

    def record(self, value: float) -> None:
        key = math.floor(math.log2(value) * BUCKETS_PER_DOUBLING) if value > 0 else _ZERO_BUCKET
        self.buckets[key] = self.buckets.get(key, 0) + 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile (0.0 when empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                if key == _ZERO_BUCKET:
                    return 0.0
                return min(2 ** ((key + 1) / BUCKETS_PER_DOUBLING), self.max)
        return self.max

    def representative_samples(self) -> list[float]:
        """Up to a few thousand values whose distribution matches the buckets (for swaps to
        an implementation that keeps samples)."""
        scale = max(1, self.count // 5_000)
        out: list[float] = []
        for key, n in sorted(self.buckets.items()):
            value = 0.0 if key == _ZERO_BUCKET else 2 ** ((key + 0.5) / BUCKETS_PER_DOUBLING)
            out.extend([value] * max(1, n // scale))
        return out


class WrongWriterThread(RuntimeError):
    """A metric was updated from a thread other than the one that owns the metrics."""


class LockFreeMetrics:
    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._histograms: dict[str, LogHistogram] = {}
        self._writer: int | None = None
        """Ident of the only thread allowed to update (bound by the first update)."""

    def _check_writer(self, name: str) -> None:
        me = threading.get_ident()
        if self._writer is None:
            self._writer = me
        elif me != self._writer:
            raise WrongWriterThread(
                f"lock_free metrics: {name!r} updated from thread "
                f"{threading.current_thread().name!r} "
                f"(ident {me}), but these metrics have one writer, thread ident {self._writer}; "
                "update them from the event loop (or run with lock_free off)"
            )

    # -- hot path ---------------------------------------------------------------------------

    def add(self, name: str, value: int = 1) -> None:
        if threading.get_ident() != self._writer:
            self._check_writer(name)
        counters = self._counters
        if name in self._histograms:
            raise ValueError(f"metric {name!r} is a histogram, not a counter")
        counters[name] = counters.get(name, 0) + value

    def record(self, name: str, value: float) -> None:
        if threading.get_ident() != self._writer:
            self._check_writer(name)
        histogram = self._histograms.get(name)
        if histogram is None:
            if name in self._counters:
                raise ValueError(f"metric {name!r} is a counter, not a histogram")
            histogram = self._histograms[name] = LogHistogram()
        histogram.record(value)

    # -- readers ----------------------------------------------------------------------------

    def snapshot(self) -> Mapping[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        for name, h in self._histograms.items():
            out[name] = {
                "count": h.count,
                "sum": h.sum,
                "p50": h.quantile(0.5),
                "p99": h.quantile(0.99),
                "max": h.max if h.count else 0.0,
            }
        return out

    def lock_stats(self) -> LockStats:
        return LockStats()

    # -- component --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def export_state(self) -> dict[str, Any]:
        """The legacy metrics' shape (``framework.metrics_state``), so swaps work both ways."""
        return MetricsState(
            counters=dict(self._counters),
            histograms={
                name: HistogramState(
                    count=h.count, sum=h.sum, max=h.max, samples=tuple(h.representative_samples())
                )
                for name, h in self._histograms.items()
            },
        ).to_plain()

    def import_state(self, state: Any) -> None:
        incoming = MetricsState.read(state)  # read and checked before anything changes
        if incoming is None:
            return
        incoming.check_kinds(self._counters, self._histograms)
        for name, value in incoming.counters.items():
            self._counters[name] = self._counters.get(name, 0) + value
        for name, theirs in incoming.histograms.items():
            h = LogHistogram()
            for sample in theirs.samples:
                h.record(sample)
            h.count, h.sum, h.max = theirs.count, theirs.sum, theirs.max
            self._histograms[name] = h
