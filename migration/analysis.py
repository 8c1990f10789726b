"""Analysis: named metrics over a window of node status pages, and the checks on them.

A window is two status pages of one node, taken ``interval`` apart (``health`` section,
see ``framework/runtime/node_health.py``): histograms and counters subtract into the
window's figures, gauges are read at its end. A metric is a function of (page before,
page after) -> a number or None (no data: a follower answers no client requests). Plugins
add metrics through ``raftmw_analysis_metrics``; they are used by name in plans like
the built-in ones.

A cohort's value is its worst node's (the largest): a canary is judged by its worst
member, not hidden in an average. A check compares the migrated cohort's value with

- ``max``: an absolute limit;
- ``max_ratio``: the old cohort's value over the same window (the reference is floored at
  ``min_reference``, so 0.2 ms against 0.1 ms is not a doubling);
- ``max_baseline_ratio``: the value of the whole cluster over a window taken before the
  first step.

A check with no data on the side it needs (no old cohort left at 100%, a metric the
cohort does not produce) is reported as "no data" and does not fail: absolute limits still
hold. A migrated node that does not answer its status request at all fails the
measurement (the new mode may be what stopped it); an old-cohort node that does not
answer only has no data. A measurement fails when any check fails; the gate fails when more than
``failure_limit`` measurements failed (it stops at once), and passes after
``measurements`` windows. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from framework.runtime.health_window import BUILTIN_METRICS, Metric, node_values
from migration.plan import Analysis, Check

__all__ = [
    "BUILTIN_METRICS",
    "CheckResult",
    "Measurement",
    "Metric",
    "cohort_value",
    "measure",
    "node_values",
]


def cohort_value(
    values: Mapping[int, Mapping[str, float | None]], nodes: Collection[int], metric: str
) -> float | None:
    """The worst (largest) value of ``metric`` among ``nodes``; None if none has data."""
    found = [v for n in nodes if (v := values.get(n, {}).get(metric)) is not None]
    return max(found) if found else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    check: str
    metric: str
    migrated: float | None
    old: float | None
    baseline: float | None
    ok: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "metric": self.metric,
            "migrated": self.migrated,
            "old": self.old,
            "baseline": self.baseline,
            "ok": self.ok,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    ok: bool
    results: tuple[CheckResult, ...]

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [r.to_dict() for r in self.results]}


def _judge(
    check: Check, migrated: float | None, old: float | None, baseline: float | None
) -> tuple[bool, str]:
    if migrated is None:
        return True, "no data from the migrated cohort"
    problems: list[str] = []
    notes: list[str] = []
    if check.max is not None and migrated > check.max:
        problems.append(f"{migrated:g} > limit {check.max:g}")
    for limit, reference, what in (
        (check.max_ratio, old, "old cohort"),
        (check.max_baseline_ratio, baseline, "baseline"),
    ):
        if limit is None:
            continue
        if reference is None:
            notes.append(f"no {what} data")
            continue
        ratio = migrated / max(reference, check.min_reference)
        if ratio > limit:
            problems.append(
                f"{migrated:g} is {ratio:.2f} x the {what}'s {reference:g} (limit {limit:g} x)"
            )
        else:
            notes.append(f"{ratio:.2f} x {what}")
    if problems:
        return False, "; ".join(problems)
    return True, ", ".join(notes) or "within limit"


def measure(
    analysis: Analysis,
    values: Mapping[int, Mapping[str, float | None]],
    *,
    migrated: Collection[int],
    old: Collection[int],
    baseline: Mapping[str, float | None] | None,
    silent: Collection[int] = (),
) -> Measurement:
    """Judge one window's per-node ``values`` against every check of ``analysis``;
    ``silent`` nodes did not answer (see the module doc)."""
    results = []
    for node in sorted(set(silent) & set(migrated)):
        results.append(
            CheckResult(
                check="migrated nodes answer",
                metric="status",
                migrated=None,
                old=None,
                baseline=None,
                ok=False,
                reason=f"migrated node {node} did not answer its status request",
            )
        )
    for check in analysis.checks:
        m = cohort_value(values, migrated, check.metric)
        o = cohort_value(values, old, check.metric)
        b = baseline.get(check.metric) if baseline is not None else None
        ok, reason = _judge(check, m, o, b)
        results.append(
            CheckResult(
                check=check.describe(),
                metric=check.metric,
                migrated=m,
                old=o,
                baseline=b,
                ok=ok,
                reason=reason,
            )
        )
    return Measurement(ok=all(r.ok for r in results), results=tuple(results))
