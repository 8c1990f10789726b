"""``AdaptiveTimeouts``: per-operation timeouts that follow the measured round trips.

Theory of operation
-------------------
The legacy policy (``legacy.timeouts.FixedTimeouts``) gives an operation the same deadline
on every attempt, so a slow link times out again and again and a retry storm follows the
first timeout. This policy keeps an RFC 6298 estimator per operation
(``plugins.adaptive_timeout.estimator``) and, for every operation whose
``[performance.timeouts.<operation>]`` says ``enable_adaptive = true``:

- **no measurement yet**: the timeout is ``base_timeout``, as with the flag off;
- **measured**: the timeout is RTO = SRTT + 4 * RTTVAR, clamped to
  ``[base_timeout, max_timeout]``. The floor is ``base_timeout`` on purpose: it is the
  deadline the operator configured and the legacy policy uses, so switching the flag on
  never makes a node give up sooner than it did before, only later, when the measurements
  show that the configured deadline is too tight for this network. (The RFC has a floor
  for the same reason, §2.4: on a quiet fast path SRTT + 4 * RTTVAR collapses towards
  zero and the first delayed answer would be declared lost.) Shrinking below
  ``base_timeout`` would need its own setting (a ``min_timeout``); there is none.
- **timed out**: RTO doubles (RFC 6298 §5.5), still at most ``max_timeout``; the next
  finished operation recomputes it from SRTT and RTTVAR;
- **retry attempt n > 0**: the timeout is multiplied by ``2**n`` and by a jitter factor
  drawn uniformly from ``[1, 1 + JITTER)`` with the injected ``random.Random``, then clamped
  to ``max_timeout`` (``framework.retry.attempt_deadline``, the rule the client's retries
  and the peer redials follow too). Jitter only lengthens, and with ``JITTER = 0.5`` the
  ranges of two consecutive attempts do not overlap (``1.5 * 2**n < 2**(n+1)``): every retry waits
  longer than the one before, yet retries that timed out together do not fire together.

Operations with ``enable_adaptive = false`` get ``base_timeout`` and operations the table
does not name get ``client.request_timeout``, whatever the attempt, exactly as
``FixedTimeouts`` gives them; their round trips are still estimated and shown in
``stats()``, so an operator can see what enabling adaptation would do.

``client_request`` is a deadline, not a round trip
--------------------------------------------------
The runtime asks for ``timeout("client_request")`` as the deadline of a client's KV request
on this node and, when it passes, answers ``retry`` (outcome unknown); the client retries
with the same ``(client_id, seq)``, possibly on another node, until *its own* deadline
(``client.request_timeout``, retries included). So:

- it may grow with the measured commit latency (fewer needless ``retry`` answers under
  load, each of which costs the client a round trip and the leader a duplicate proposal),
  but never shrinks below its ``base_timeout``: a node must not give up on a client sooner
  than the configured deadline, which is also what the flag-off policy grants it;
- it never grows beyond ``client.request_timeout`` (nor ``max_timeout``): past that the
  client has given up, and holding the request only delays the ``retry`` that would send
  the client to a node that can answer. If ``base_timeout`` alone exceeds it, the timeout
  stays at ``base_timeout``;
- a request that expired does **not** back off: an expiry does not mean "the deadline was
  too short" the way a lost packet does; it usually means this node cannot commit (it lost
  its quorum or its leadership), and a longer deadline would only keep clients stuck on it.

Only the Ready loop's task calls this policy (it is not shared between threads), so it
takes no lock; every call is a few dict lookups and float operations.

Swap state: ``{operation: {"count": n, "timeouts": n, "srtt": s, "rttvar": s}}`` (the
estimates only when known), a superset of ``FixedTimeouts``' ``{"count", "timeouts"}``,
which ignores the keys it does not know. ``import_state`` takes either: counts add up,
estimates are taken over (a back-off in progress is not), malformed entries are skipped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from framework.config import Settings
from framework.retry import attempt_deadline
from framework.seams import LockStats
from plugins.adaptive_timeout.estimator import RttEstimator

__all__ = ["CLIENT_REQUEST", "JITTER", "AdaptiveTimeouts"]

CLIENT_REQUEST = "client_request"
"""The operation whose timeout is a client's deadline on this node (see the module doc)."""

JITTER = 0.5
"""A retry's timeout is stretched by a factor drawn from ``[1, 1 + JITTER)``."""


@dataclass(frozen=True, slots=True)
class _Rule:
    """How one operation's timeout is chosen, read once from the settings."""

    base: float
    """The timeout with no measurement (and always, when not adaptive)."""
    ceiling: float
    """The most it may grow to, backoff and jitter included."""
    adaptive: bool
    backs_off: bool
    """Whether a timed-out observation doubles the timeout."""


class AdaptiveTimeouts:
    """`TimeoutPolicy` that adapts each operation's timeout to its measured round trips.

    ``rng`` draws the jitter of retry attempts (pass a seeded one for reproducible runs).
    ``stats()`` maps each operation (configured or observed) to ``count`` (observations),
    ``timeouts`` (observations that did not finish in time), ``timeout_seconds`` (the
    timeout of a first attempt now) and, once measured, ``srtt`` and ``rttvar``.
    """

    __slots__ = ("_count", "_default", "_estimators", "_jitter", "_rng", "_rules", "_timeouts")

    def __init__(
        self, settings: Settings, *, rng: random.Random | None = None, jitter: float = JITTER
    ) -> None:
        if not (math.isfinite(jitter) and jitter >= 0.0):
            raise ValueError(f"jitter must be a finite fraction >= 0, not {jitter!r}")
        client_deadline = settings.client.request_timeout
        self._rules: dict[str, _Rule] = {}
        for operation, configured in settings.performance.timeouts.items():
            ceiling = configured.max_timeout
            if operation == CLIENT_REQUEST:
                ceiling = max(configured.base_timeout, min(ceiling, client_deadline))
            self._rules[operation] = _Rule(
                base=configured.base_timeout,
                ceiling=ceiling,
                adaptive=configured.enable_adaptive,
                backs_off=operation != CLIENT_REQUEST,
            )
        self._default = client_deadline
        self._rng = rng if rng is not None else random.Random()
        self._jitter = jitter
        self._estimators: dict[str, RttEstimator] = {}
        self._count: dict[str, int] = {}
        self._timeouts: dict[str, int] = {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    # -- the policy ---------------------------------------------------------------------------

    def timeout(self, operation: str, attempt: int = 0) -> float:
        rule = self._rules.get(operation)
        if rule is None:
            return self._default
        if not rule.adaptive:
            return rule.base
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {attempt!r}")
        estimator = self._estimators.get(operation)
        current = rule.base if estimator is None else estimator.rto
        return attempt_deadline(current, attempt, rule.ceiling, self._rng, jitter=self._jitter)

    def observe(self, operation: str, seconds: float, *, ok: bool) -> None:
        self._count[operation] = self._count.get(operation, 0) + 1
        estimator = self._estimator(operation)
        if ok:
            estimator.sample(seconds)
            return
        self._timeouts[operation] = self._timeouts.get(operation, 0) + 1
        rule = self._rules.get(operation)
        if rule is not None and rule.adaptive and rule.backs_off:
            estimator.backoff()

    def stats(self) -> Mapping[str, Mapping[str, float]]:
        operations = dict.fromkeys([*self._rules, *self._count, *self._estimators])
        stats: dict[str, Mapping[str, float]] = {}
        for operation in operations:
            entry: dict[str, float] = {
                "count": self._count.get(operation, 0),
                "timeouts": self._timeouts.get(operation, 0),
                "timeout_seconds": self.timeout(operation),
            }
            entry.update(self._estimate(operation))
            stats[operation] = entry
        return stats

    # -- swap state -----------------------------------------------------------------------------

    def export_state(self) -> dict[str, dict[str, float]]:
        state: dict[str, dict[str, float]] = {}
        for operation in dict.fromkeys([*self._count, *self._estimators]):
            entry: dict[str, float] = {
                "count": self._count.get(operation, 0),
                "timeouts": self._timeouts.get(operation, 0),
            }
            entry.update(self._estimate(operation))
            state[operation] = entry
        return state

    def import_state(self, state: Any) -> None:
        if state is None:
            return
        if not isinstance(state, Mapping):
            raise TypeError(
                "timeout policy state must be a mapping of operation -> "
                f'{{"count", "timeouts"[, "srtt", "rttvar"]}}, not {type(state).__name__}'
            )
        # Read everything before changing anything: a bad entry is skipped, never half-taken.
        taken: list[tuple[str, int, int, tuple[float, float] | None]] = []
        for operation, numbers in state.items():
            if not isinstance(operation, str) or not isinstance(numbers, Mapping):
                continue
            count, timeouts = numbers.get("count", 0), numbers.get("timeouts", 0)
            if not (_is_count(count) and _is_count(timeouts)):
                continue
            srtt, rttvar = _seconds(numbers.get("srtt")), _seconds(numbers.get("rttvar"))
            estimate = (srtt, rttvar) if srtt is not None and rttvar is not None else None
            taken.append((operation, count, timeouts, estimate))
        for operation, count, timeouts, estimate in taken:
            if count:
                self._count[operation] = self._count.get(operation, 0) + count
            if timeouts:
                self._timeouts[operation] = self._timeouts.get(operation, 0) + timeouts
            if estimate is not None:
                self._estimator(operation).restore(*estimate)

    def lock_stats(self) -> LockStats:
        return LockStats()

    # -- internals --------------------------------------------------------------------------------

    def _estimator(self, operation: str) -> RttEstimator:
        estimator = self._estimators.get(operation)
        if estimator is None:
            rule = self._rules.get(operation)
            if rule is not None and rule.adaptive:
                estimator = RttEstimator(rule.base, min_rto=rule.base, max_rto=rule.ceiling)
            else:
                # Estimated for the status page only; the timeout stays fixed.
                estimator = RttEstimator(self.timeout(operation))
            self._estimators[operation] = estimator
        return estimator

    def _estimate(self, operation: str) -> dict[str, float]:
        estimator = self._estimators.get(operation)
        if estimator is None or estimator.srtt is None or estimator.rttvar is None:
            return {}
        return {"srtt": estimator.srtt, "rttvar": estimator.rttvar}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seconds(value: object) -> float | None:
    """``value`` as a duration in seconds, or None unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None
