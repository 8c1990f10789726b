"""``TickClock``: the kernel's logical ticks, counted from a monotonic clock.

The kernel's timeouts are counted in ticks, and lease reads (dissertation §6.4.1) are sound
only if a leader's tick count never falls behind real time: a leader whose process was
paused (SIGSTOP, a stalled event loop, a long garbage collection) must learn on waking that
its lease ran out while it slept, before it answers a read. A timer that adds one tick per
wake-up loses every tick of a pause. This clock instead says how many ticks are *due* at
``now``: all whole tick intervals since it started, less those already handed out. The
caller delivers them before anything else it steps into the kernel.
"""

from __future__ import annotations

import math

__all__ = ["TickClock"]


class TickClock:
    def __init__(self, interval: float, now: float) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"TickClock interval={interval!r}: expected a positive duration")
        self._interval = interval
        self._origin = now
        self._delivered = 0

    def due(self, now: float) -> int:
        """Ticks elapsed by ``now`` (a reading of the same monotonic clock) and not yet
        handed out; the caller must deliver exactly that many. A clock reading that goes
        backward hands out nothing."""
        elapsed = math.floor((now - self._origin) / self._interval)
        missing = elapsed - self._delivered
        if missing <= 0:
            return 0
        self._delivered = elapsed
        return missing

    @property
    def delivered(self) -> int:
        """Ticks handed out since the clock started."""
        return self._delivered
