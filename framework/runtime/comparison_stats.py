"""The statistics of an A/B comparison: the run order, medians, spread, and whether a
difference is real.

Theory of operation. A comparison on a shared machine is noisy twice over: run to run
(±10 % on this VM) and drifting (the machine gets slower while another job runs). Two
rules keep both from posing as a result:

- **Counterbalanced order** (`interleaved_order`): A and B alternate in ABBA blocks, so a
  drift that slows later runs hurts both sides equally (A B | B A | A B ...), and neither
  side always runs first on a cold machine.
- **A confidence interval, not a point** (`compare_samples`): the relative difference of
  the medians, B over A minus one, with a 95 % percentile bootstrap interval (resample
  each side's runs with replacement, recompute the ratio of medians, take the 2.5th and
  97.5th percentiles). The generator is seeded, so the same runs give the same interval.
  When the interval holds 0 the verdict says "no difference detectable at this noise";
  otherwise it says which side is better by how much, with the interval.

Medians, not means: one run spoiled by a neighbour's burst moves a mean, not a median.
Fewer than ``MIN_RUNS`` runs a side give no interval (a bootstrap of two values is not an
estimate of anything) and say so. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "METRICS",
    "MIN_RUNS",
    "MetricSpec",
    "SampleComparison",
    "compare_samples",
    "describe_change",
    "interleaved_order",
]

MIN_RUNS: Final = 3
"""Runs per side below which no confidence interval is given."""
_RESAMPLES: Final = 2000
_MAX_REPEAT: Final = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    key: str
    """The run summary's field (dotted for nested: ``latency_ms.p99``)."""
    label: str
    better: Literal["higher", "lower"]
    words: tuple[str, str]
    """How B reads when it is better / worse: ("faster", "slower")."""
    fmt: str = ",.1f"


METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(key="ops_per_second", label="committed writes/s", better="higher",
               words=("faster", "slower"), fmt=",.0f"),
    MetricSpec(key="latency_ms.p50", label="latency p50 (ms)", better="lower",
               words=("lower", "higher"), fmt=".2f"),
    MetricSpec(key="latency_ms.p99", label="latency p99 (ms)", better="lower",
               words=("lower", "higher"), fmt=".2f"),
    MetricSpec(key="latency_ms.p999", label="latency p999 (ms)", better="lower",
               words=("lower", "higher"), fmt=".2f"),
    MetricSpec(key="latency_ms.max", label="latency max (ms)", better="lower",
               words=("lower", "higher"), fmt=".2f"),
    MetricSpec(key="failover_ms", label="failover (ms)", better="lower",
               words=("shorter", "longer"), fmt=",.0f"),
    MetricSpec(key="term_changes", label="elections (term changes)", better="lower",
               words=("fewer", "more"), fmt=".0f"),
    MetricSpec(key="client_error_count", label="client errors", better="lower",
               words=("fewer", "more"), fmt=",.0f"),
    MetricSpec(key="peak_rss_mib_max", label="peak RSS, largest node (MiB)", better="lower",
               words=("smaller", "larger"), fmt=".1f"),
    MetricSpec(key="cpu_seconds_per_1000_writes", label="node CPU s per 1,000 writes",
               better="lower", words=("cheaper", "costlier"), fmt=".3f"),
    MetricSpec(key="recovery_ms", label="overload recovery (ms)", better="lower",
               words=("quicker", "slower"), fmt=",.0f"),
)  # fmt: skip


def interleaved_order(repeat: int) -> list[Literal["A", "B"]]:
    """``repeat`` runs of each side in ABBA blocks: A B B A A B B A ... (2 x ``repeat``)."""
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= _MAX_REPEAT:
        raise ValueError(f"repeat={repeat!r}: expected a whole number of runs, 1..{_MAX_REPEAT}")
    order: list[Literal["A", "B"]] = []
    for block in range(repeat):
        order += ["A", "B"] if block % 2 == 0 else ["B", "A"]
    return order


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleComparison:
    median_a: float | None
    median_b: float | None
    spread_a: tuple[float, float] | None
    """(min, max) of A's runs."""
    spread_b: tuple[float, float] | None
    difference: float | None
    """median(B) / median(A) - 1."""
    ci: tuple[float, float] | None
    """95 % bootstrap interval of ``difference``."""
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_a": self.median_a,
            "median_b": self.median_b,
            "spread_a": list(self.spread_a) if self.spread_a else None,
            "spread_b": list(self.spread_b) if self.spread_b else None,
            "difference": None if self.difference is None else round(self.difference, 4),
            "ci95": None if self.ci is None else [round(x, 4) for x in self.ci],
            "verdict": self.verdict,
        }


def _ratio(a: Sequence[float], b: Sequence[float]) -> float | None:
    ma, mb = statistics.median(a), statistics.median(b)
    if ma == 0:
        return 0.0 if mb == 0 else None
    return mb / ma - 1.0


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (``ordered`` sorted, non-empty)."""
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def compare_samples(
    a: Sequence[float | None],
    b: Sequence[float | None],
    spec: MetricSpec,
    *,
    name_b: str = "B",
    seed: int = 0,
    level: float = 0.95,
    resamples: int = _RESAMPLES,
) -> SampleComparison:
    """Medians, spreads, the relative difference with its bootstrap interval, and a verdict
    in words. Runs without a value (None: a fault that did not apply) are left out."""
    xs = [float(v) for v in a if v is not None]
    ys = [float(v) for v in b if v is not None]
    median_a = statistics.median(xs) if xs else None
    median_b = statistics.median(ys) if ys else None
    spread_a = (min(xs), max(xs)) if xs else None
    spread_b = (min(ys), max(ys)) if ys else None
    if not xs or not ys:
        return SampleComparison(
            median_a=median_a, median_b=median_b, spread_a=spread_a, spread_b=spread_b,
            difference=None, ci=None, verdict="no data",
        )  # fmt: skip
    difference = _ratio(xs, ys)
    if len(set(xs + ys)) == 1:
        return SampleComparison(
            median_a=median_a, median_b=median_b, spread_a=spread_a, spread_b=spread_b,
            difference=0.0, ci=None, verdict=f"the same in every run ({xs[0]:g})",
        )  # fmt: skip
    if difference is None:
        verdict = "A is 0: no relative difference"
        return SampleComparison(
            median_a=median_a, median_b=median_b, spread_a=spread_a, spread_b=spread_b,
            difference=None, ci=None, verdict=verdict,
        )  # fmt: skip
    if min(len(xs), len(ys)) < MIN_RUNS:
        return SampleComparison(
            median_a=median_a, median_b=median_b, spread_a=spread_a, spread_b=spread_b,
            difference=difference, ci=None,
            verdict=f"too few runs for an interval (need {MIN_RUNS} a side: --repeat {MIN_RUNS})",
        )  # fmt: skip
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        ratio = _ratio(rng.choices(xs, k=len(xs)), rng.choices(ys, k=len(ys)))
        if ratio is not None:
            ratios.append(ratio)
    ratios.sort()
    tail = (1.0 - level) / 2
    ci = (_quantile(ratios, tail), _quantile(ratios, 1.0 - tail)) if ratios else None
    return SampleComparison(
        median_a=median_a,
        median_b=median_b,
        spread_a=spread_a,
        spread_b=spread_b,
        difference=difference,
        ci=ci,
        verdict=_verdict(difference, ci, spec, name_b),
    )


def _verdict(
    difference: float, ci: tuple[float, float] | None, spec: MetricSpec, name_b: str
) -> str:
    if ci is None or ci[0] <= 0.0 <= ci[1]:
        return "no difference detectable at this noise"
    up = difference > 0
    better = up == (spec.better == "higher")
    word = spec.words[0] if better else spec.words[1]
    low, high = sorted(abs(x) * 100 for x in ci)
    return f"{name_b} {word} by {abs(difference) * 100:.0f} % (CI {low:.0f}-{high:.0f} %)"


def describe_change(
    difference: float | None, ci95: Sequence[float] | None, *, sep: str = " "
) -> str:
    """``+18 %`` and its interval ``(+12 … +25 %)``, as a table cell (``sep`` between them)."""
    text = "" if difference is None else f"{difference * 100:+.0f} %"
    if ci95 is not None:
        text += f"{sep}({ci95[0] * 100:+.0f} … {ci95[1] * 100:+.0f} %)"
    return text
