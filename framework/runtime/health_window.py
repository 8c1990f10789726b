"""Named metrics over a window of node status pages: one home for the staged migration's
analysis (``migration/analysis.py``) and ``raftmw compare --live``.

A window is two status pages of one node, taken some time apart (``health`` section, see
``framework/runtime/node_health.py``): histograms and counters subtract into the window's
figures, gauges are read at its end. A metric is a function of (page before, page after)
-> a number or None (no data: a follower answers no client requests). Plugins add metrics
through ``raftmw_analysis_metrics``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from framework.runtime.node_health import percentile_ms

__all__ = ["BUILTIN_METRICS", "Metric", "node_values"]


Metric = Callable[[Mapping[str, Any], Mapping[str, Any]], float | None]
"""(status page at the window's start, at its end) -> the node's value, or None."""


def _health(page: Mapping[str, Any]) -> Mapping[str, Any]:
    health = page.get("health")
    return health if isinstance(health, Mapping) else {}


def _histogram(name: str, q: float) -> Metric:
    def metric(before: Mapping[str, Any], after: Mapping[str, Any]) -> float | None:
        new = _health(after).get("histograms", {}).get(name)
        old = _health(before).get("histograms", {}).get(name)
        if not isinstance(new, list):
            return None
        if not isinstance(old, list) or len(old) != len(new):
            old = [0] * len(new)
        window = [max(0, int(a) - int(b)) for a, b in zip(new, old, strict=True)]
        return percentile_ms(window, q)

    return metric


def _counter(name: str) -> Metric:
    def metric(before: Mapping[str, Any], after: Mapping[str, Any]) -> float | None:
        new = _health(after).get("counters", {}).get(name)
        old = _health(before).get("counters", {}).get(name, 0)
        if not isinstance(new, int | float):
            return None
        # A restarted node's counters start again from 0: count from there.
        return float(new - old) if new >= old else float(new)

    return metric


def _gauge(name: str) -> Metric:
    def metric(before: Mapping[str, Any], after: Mapping[str, Any]) -> float | None:
        value = _health(after).get("gauges", {}).get(name)
        return float(value) if isinstance(value, int | float) else None

    return metric


BUILTIN_METRICS: Final[Mapping[str, Metric]] = {
    "client_latency_p50": _histogram("client_latency_ms", 0.5),
    "client_latency_p99": _histogram("client_latency_ms", 0.99),
    "commit_latency_p50": _histogram("commit_latency_ms", 0.5),
    "commit_latency_p99": _histogram("commit_latency_ms", 0.99),
    "ready_pause_p99": _histogram("ready_pause_ms", 0.99),
    "ready_pause_max": _histogram("ready_pause_ms", 1.0),
    "apply_lag": _gauge("apply_lag"),
    "queue_depth": _gauge("queue_depth"),
    "breakers_open": _gauge("breakers_open"),
    "rss_mb": _gauge("rss_mb"),
    "rejections": _counter("rejections"),
    "timeouts": _counter("timeouts"),
    "queue_rejections": _counter("queue_rejections"),
    "elections": _counter("elections"),
    "leader_changes": _counter("leader_changes"),
    "lock_wait_ms": _counter("lock_wait_ms"),
}


def node_values(
    metrics: Mapping[str, Metric],
    names: Collection[str],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
) -> dict[str, float | None]:
    """The named metrics of one node over one window; a metric that raises has no data."""
    values: dict[str, float | None] = {}
    for name in names:
        try:
            values[name] = metrics[name](before, after)
        except Exception:  # a plugin's metric must not stop the analysis
            values[name] = None
    return values
