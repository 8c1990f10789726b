"""The state a metrics component hands its successor at a swap, and its one reading.

Both implementations of the metrics seam (the legacy ``LockedMetrics`` and the lock-free
``LockFreeMetrics``) export the same plain shape, so a swap works in either direction::

    {"counters": {name: int},
     "histograms": {name: {"count": int, "sum": float, "max": float, "samples": [float]}}}

A histogram's ``samples`` are what the exporter keeps (a window of raw values, or values
standing for its buckets); ``count``, ``sum`` and ``max`` cover every value recorded, and
default to what the samples say when absent. `MetricsState.read` checks a state whole
before the importer changes anything, and `MetricsState.check_kinds` refuses a name that
would end up both a counter and a histogram, so a refused state changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HistogramState", "MetricsState"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramState:
    count: int
    sum: float
    max: float
    samples: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsState:
    counters: Mapping[str, int]
    histograms: Mapping[str, HistogramState]

    @staticmethod
    def read(state: object) -> MetricsState | None:
        """The state a predecessor exported (None for None); `TypeError` naming what is
        not of the shape above."""
        if state is None:
            return None
        if not isinstance(state, Mapping):
            raise TypeError(f"metrics state must be a mapping, not {type(state).__name__}")
        counters = state.get("counters", {})
        histograms = state.get("histograms", {})
        if not isinstance(counters, Mapping) or not isinstance(histograms, Mapping):
            raise TypeError('metrics state must hold mappings under "counters" and "histograms"')
        return MetricsState(
            counters={str(name): _read_count(name, value) for name, value in counters.items()},
            histograms={str(name): _read_histogram(name, h) for name, h in histograms.items()},
        )

    def check_kinds(self, counters: Collection[str], histograms: Collection[str]) -> None:
        """`ValueError` if a name would be both a counter and a histogram once this state
        is added to an importer holding ``counters`` and ``histograms``."""
        clashes = (self.counters.keys() & {*histograms, *self.histograms}) | (
            self.histograms.keys() & set(counters)
        )
        if clashes:
            raise ValueError(
                f"metrics state: {sorted(clashes)} would be both counters and histograms"
            )

    def to_plain(self) -> dict[str, Any]:
        """The plain shape above, as ``export_state`` returns it."""
        return {
            "counters": dict(self.counters),
            "histograms": {
                name: {"count": h.count, "sum": h.sum, "max": h.max, "samples": list(h.samples)}
                for name, h in self.histograms.items()
            },
        }


def _read_count(name: object, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"metrics state: counter {name!r} is {value!r}; expected an int")
    return value


def _read_histogram(name: object, data: object) -> HistogramState:
    if not isinstance(data, Mapping):
        raise TypeError(f"metrics state: histogram {name!r} must be a mapping")
    samples = tuple(float(v) for v in data.get("samples", ()))
    return HistogramState(
        count=int(data.get("count", len(samples))),
        sum=float(data.get("sum", math.fsum(samples))),
        max=float(data.get("max", max(samples, default=-math.inf))),
        samples=samples,
    )
