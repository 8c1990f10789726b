"""How long to wait before a retry, and how long to give the retry: one rule for every caller.

Theory of operation
-------------------
A retry has two numbers: the **delay** before it is sent and the **deadline** it is given.

- **Delay: exponential backoff with full jitter.** Before retry ``n`` (``n = 0`` for the
  first retry) wait a time drawn uniformly from ``[0, min(cap, base * 2**n))``. Full jitter
  ("Exponential Backoff and Jitter", AWS Architecture Blog, 2015) spreads the retries of
  many callers that failed together over the whole window instead of sending them together
  at its end: of the usual variants it does the least total work for the same completion
  time. A delay is never negative and never more than ``cap``.
- **Deadline: doubled per attempt, stretched by a little jitter.** Attempt ``n`` (``n = 0``
  for the first) gets ``first * 2**n`` times a factor drawn from ``[1, 1 + jitter)``, at
  most ``ceiling``. A caller whose attempts keep timing out gives each next one longer (a
  network slower than the configured deadline still gets an answer through, instead of
  timing out again and again); jitter only lengthens, and with ``jitter <= 1`` the ranges of
  two consecutive attempts do not overlap, so each attempt waits longer than the one before.

The node's adaptive timeout policy (``plugins.adaptive_timeout``) uses `attempt_deadline` for
``timeout(operation, attempt)`` (the TCP transport asks it for attempt ``n`` when it redials
after ``n`` dials that timed out); the client (``framework.client``) waits `backoff_delay`
between its rounds without a leader. Pure arithmetic: the random numbers come from the
caller's ``random.Random``.
"""

from __future__ import annotations

import math
import random
from typing import Final

__all__ = ["MAX_DOUBLINGS", "attempt_deadline", "backoff_delay"]

MAX_DOUBLINGS: Final = 64
"""Beyond this many doublings every positive time is past any cap; capping the exponent
keeps ``2.0 ** attempt`` from overflowing."""


def _check(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


def backoff_delay(base: float, cap: float, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0 for the first retry): drawn uniformly from
    ``[0, min(cap, base * 2**attempt))`` (full jitter). ``ValueError`` for a negative
    ``attempt`` or a ``base``/``cap`` that is not a finite number >= 0."""
    _check("base", base)
    _check("cap", cap)
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt!r}")
    window = min(cap, base * 2.0 ** min(attempt, MAX_DOUBLINGS))
    return rng.random() * window


def attempt_deadline(
    first: float, attempt: int, ceiling: float, rng: random.Random, *, jitter: float = 0.5
) -> float:
    """Seconds to give attempt ``attempt`` (0 for the first) when the first gets ``first``:
    ``first`` itself for attempt 0, else ``first * 2**attempt`` stretched by a factor from
    ``[1, 1 + jitter)``; never more than ``ceiling`` (nor less than ``first``, unless
    ``ceiling`` is less). ``ValueError`` for a negative ``attempt``, or a ``first``,
    ``ceiling`` or ``jitter`` that is not a finite number >= 0."""
    _check("first", first)
    _check("jitter", jitter)
    if not (ceiling >= 0.0):  # +inf is a valid ceiling (no bound); NaN is not
        raise ValueError(f"ceiling must be a number of seconds >= 0, not {ceiling!r}")
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt!r}")
    if attempt == 0:
        return min(ceiling, first)
    stretch = 1.0 + jitter * rng.random()
    return min(ceiling, first * 2.0 ** min(attempt, MAX_DOUBLINGS) * stretch)
