"""How busy the machine was with other work while a comparison ran (Linux ``/proc``).

The machine's busy CPU time (``/proc/stat``: everything but idle and iowait) minus the CPU
time of the processes the run owns (this process and its node processes, from
``/proc/PID/stat``) is what other processes took. It is sampled every half second, so a
node killed during the run still has its CPU counted up to its last sample. A run where
others took more than ``BUSY_SHARE`` of the machine is flagged: its figures measure the
neighbours as much as the mode. Elsewhere than Linux the figures are None.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio

__all__ = ["BUSY_SHARE", "LoadSampler", "busy_jiffies", "process_jiffies"]

BUSY_SHARE: Final = 0.10
"""Share of the machine's CPU (all cores) others may take before a run is flagged."""
_PERIOD: Final = 0.5


def busy_jiffies(text: str | None = None) -> int | None:
    """Busy time of all CPUs, in clock ticks, from ``/proc/stat``'s ``cpu`` line."""
    try:
        text = text if text is not None else Path("/proc/stat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            # guest time is already inside user and nice
            return sum(values[:8]) - idle
    return None


def process_jiffies(pid: int) -> int | None:
    """User + system time of one process, in clock ticks (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@dataclass(slots=True)
class LoadSampler:
    pids: Callable[[], Iterable[int]]
    """The processes the run owns (asked at every sample: nodes restart)."""
    _first_busy: int | None = None
    _last_busy: int | None = None
    _first: dict[int, int] = field(default_factory=dict)
    _last: dict[int, int] = field(default_factory=dict)
    _started: float = 0.0
    _ended: float = 0.0

    def sample(self) -> None:
        busy = busy_jiffies()
        if busy is None:
            return
        if self._first_busy is None:
            self._first_busy = busy
            self._started = anyio.current_time()
        self._last_busy = busy
        self._ended = anyio.current_time()
        for pid in {os.getpid(), *self.pids()}:
            ticks = process_jiffies(pid)
            if ticks is not None:
                self._first.setdefault(pid, ticks)
                self._last[pid] = ticks

    async def run(self) -> None:
        """Sample until cancelled (start it in the run's task group)."""
        while True:
            self.sample()
            await anyio.sleep(_PERIOD)

    def owned_cpu_seconds(self) -> float | None:
        """CPU seconds the run's own processes (not this one) used between samples."""
        if not self._last:
            return None
        me = os.getpid()
        ticks = sum(self._last[p] - self._first[p] for p in self._last if p != me)
        return ticks / os.sysconf("SC_CLK_TCK")

    def report(self) -> dict[str, float | bool | None]:
        """Other processes' CPU seconds, their share of the machine, and the flag."""
        if self._first_busy is None or self._last_busy is None:
            return {"other_cpu_seconds": None, "other_share": None, "busy": None}
        tick = os.sysconf("SC_CLK_TCK")
        ours = sum(self._last[p] - self._first[p] for p in self._last)
        others = max(0, self._last_busy - self._first_busy - ours) / tick
        capacity = max(1e-9, (self._ended - self._started) * (os.cpu_count() or 1))
        share = others / capacity
        return {
            "other_cpu_seconds": round(others, 2),
            "other_share": round(share, 3),
            "busy": share > BUSY_SHARE,
        }
