"""``Backoff``: the delays between redials, shared by the transport and the connection pools."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Redial delays: doubling from ``low`` up to ``high``, each drawn from the upper half of
    its step (jitter keeps restarted nodes from redialling in lockstep), never below ``low``.

    A ``low`` of zero (settings allow it) doubles from 1ms instead, or the delays would stay
    zero forever and a redial loop would spin.
    """

    __slots__ = ("_ceiling", "_high", "_low", "_rng", "_start")

    def __init__(self, low: float, high: float, rng: random.Random | None = None) -> None:
        if not 0 <= low <= high:
            raise ValueError(f"backoff low={low} high={high}: expected 0 <= low <= high")
        self._low = low
        self._high = high
        self._rng = rng or random.Random()
        self._start = low if low > 0 else min(high, 0.001)
        self._ceiling = self._start

    def reset(self) -> None:
        self._ceiling = self._start

    def next_delay(self) -> float:
        ceiling = self._ceiling
        self._ceiling = min(self._high, ceiling * 2)
        return self._rng.uniform(max(self._low, ceiling / 2), ceiling)
