"""``NodeHealth``: the per-node measurements a staged migration's analysis compares.

The status page's ``health`` section holds cumulative figures only: histograms as bucket
counts (log-spaced, fixed bounds) and counters since the node started, plus a few gauges
read when the page is built. A reader that wants a window (the migration controller)
takes two pages and subtracts: bucket counts subtract into the window's histogram, so
percentiles over any window need no state in the node and no clock of its own.

Measured where the node already is: client request latency as this node answers it
(``submit``), commit latency (an entry persisted here -> applied here), the Ready loop's
durations (one Ready handled, its disk write included: ``ready_pause_ms``), the event loop's
pauses (how late each tick woke: ``tick_late_ms``, and the largest, ``tick_late_max_ms``;
see ``framework/runtime/ticker.py``), rejections by reason, elections and leader changes (from the
``metrics`` seam's counters), lock wait (the components' lock stats), RSS (peak, from
``getrusage``: no file read on the event loop), and why the node's role changed
(``role_changes``, see ``framework/runtime/role_changes.py``). Each observation is O(1): a
``log``, an index, an increment.
"""

from __future__ import annotations

import math
import resource
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

from framework.runtime.role_changes import RoleChanges

__all__ = ["BUCKET_BOUNDS_MS", "Histogram", "NodeHealth", "percentile_ms"]

_SMALLEST_MS: Final = 0.05
_GROWTH: Final = math.sqrt(2.0)
_BUCKETS: Final = 44  # 0.05 ms .. ~150 s, then one overflow bucket
BUCKET_BOUNDS_MS: Final = tuple(_SMALLEST_MS * _GROWTH**k for k in range(_BUCKETS))
"""Upper bound (ms) of each bucket but the last, which holds everything larger."""
_PERSISTED_KEPT: Final = 4096


class Histogram:
    """Counts of observations per log-spaced bucket (cumulative)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * (_BUCKETS + 1)

    def observe_ms(self, ms: float) -> None:
        self.counts[_bucket(ms)] += 1


_SCALE: Final = 1.0 / math.log(_GROWTH)


def _bucket(ms: float) -> int:
    """The first bucket whose upper bound is >= ``ms`` (one log, no division by a base)."""
    if ms <= _SMALLEST_MS:
        return 0
    k = math.ceil(math.log(ms * (1.0 / _SMALLEST_MS)) * _SCALE - 1e-9)
    return k if k < _BUCKETS else _BUCKETS


def percentile_ms(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a bucket-count histogram, as its bucket's upper bound
    (ms); None when it is empty. The overflow bucket reports twice the last bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for k, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return BUCKET_BOUNDS_MS[k] if k < _BUCKETS else BUCKET_BOUNDS_MS[-1] * 2
    return BUCKET_BOUNDS_MS[-1] * 2  # pragma: no cover - seen reaches total


class NodeHealth:
    def __init__(self, role_changes: RoleChanges | None = None) -> None:
        self.role_changes = RoleChanges() if role_changes is None else role_changes
        """Why the role changed (``role_changes.py``): ``role_changes`` in the page."""
        self.client_latency = Histogram()
        self.commit_latency = Histogram()
        self.ready_pause = Histogram()
        self.tick_late = Histogram()
        self.tick_late_max = 0.0
        self.requests = 0
        self.rejections: dict[str, int] = {}
        self._persisted: deque[tuple[int, float]] = deque(maxlen=_PERSISTED_KEPT)

    def on_request(self, seconds: float, error: str | None) -> None:
        if error == "not_leader":
            return  # a redirect is not an answer: neither latency nor a rejection
        self.requests += 1
        self.client_latency.counts[_bucket(seconds * 1e3)] += 1
        if error is not None:
            self.rejections[error] = self.rejections.get(error, 0) + 1

    def on_ready(self, seconds: float) -> None:
        self.ready_pause.observe_ms(seconds * 1e3)

    def on_tick(self, late: float) -> None:
        """A tick woke ``late`` seconds after it was due (the event loop was held)."""
        self.tick_late.observe_ms(late * 1e3)
        self.tick_late_max = max(self.tick_late_max, late)

    def on_persisted(self, last_index: int, now: float) -> None:
        self._persisted.append((last_index, now))

    def on_applied(self, last_index: int, now: float) -> None:
        """Entries up to ``last_index`` applied: each persisted batch now fully applied
        gives one commit-latency observation."""
        persisted = self._persisted
        while persisted and persisted[0][0] <= last_index:
            _, at = persisted.popleft()
            self.commit_latency.observe_ms(max(0.0, now - at) * 1e3)

    def to_dict(
        self,
        *,
        commit: int,
        applied: int,
        performance: Mapping[str, Any],
        modes: Sequence[str],
    ) -> dict[str, Any]:
        """The ``health`` section of the status page (see the module doc)."""
        counters = performance.get("metrics", {})
        queues = performance.get("queues", {})
        locks = performance.get("locks", {})
        breakers = performance.get("circuit_breakers", {})
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
        return {
            "histograms": {
                "client_latency_ms": list(self.client_latency.counts),
                "commit_latency_ms": list(self.commit_latency.counts),
                "ready_pause_ms": list(self.ready_pause.counts),
                "tick_late_ms": list(self.tick_late.counts),
            },
            "counters": {
                "requests": self.requests,
                "rejections": sum(n for k, n in self.rejections.items() if k != "timeout"),
                "timeouts": self.rejections.get("timeout", 0),
                "elections": int(counters.get("elections_won", 0) or 0),
                "leader_changes": int(counters.get("leader_changes", 0) or 0),
                "queue_rejections": sum(int(q.get("rejected", 0)) for q in queues.values()),
                "lock_wait_ms": round(
                    sum(float(s.get("wait_seconds", 0.0)) for s in locks.values()) * 1e3, 3
                ),
            },
            "gauges": {
                "apply_lag": max(0, commit - applied),
                "queue_depth": sum(int(q.get("depth", 0)) for q in queues.values()),
                "breakers_open": sum(1 for state in breakers.values() if state == "open"),
                "rss_mb": round(rss_mb, 1),
                "tick_late_max_ms": round(self.tick_late_max * 1e3, 1),
            },
            "mode": list(modes),
            "role_changes": self.role_changes.to_dict(),
        }
