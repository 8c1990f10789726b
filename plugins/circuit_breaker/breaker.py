"""`CircuitBreaker`: the state machine of one peer's breaker, and its `BreakerConfig`.

Theory of operation
-------------------
A breaker stands between this node and one peer and answers one question: may *bulky*
traffic go to the peer now (``admit_bulk``)? Which messages are bulky, and why the others
always pass, is the guard's business (``plugins.circuit_breaker.guard``); the breaker only
keeps the state, from the outcomes it is told (``record_failure`` / ``record_success``):

- CLOSED: everything goes. ``failure_threshold`` *consecutive* failures open the breaker
  (a success in between resets the count): one lost connection is noise, a run of them
  means the peer is down, and every further bulky send would only cost a connection
  attempt and its timeout (the seed's "one dead peer slows the sends to the live ones").
- OPEN: no bulky traffic. After ``timeout`` seconds the breaker becomes HALF_OPEN by
  itself (read lazily from the clock, so no task or timer is needed), or at once when the
  peer is heard from (a success: a batch of messages arrived from it). Failures while open
  are expected (the guard still lets the small Raft messages through, and those fail too)
  and do not restart the timeout. Waiting out the timeout for a peer that answers would
  cost Raft liveness: a follower that restarted would fall behind for the whole timeout,
  and a commit that needs it for its majority would wait as long. A peer in a crash loop
  makes the breaker go half-open and open again; half-open admits one bulky batch at a
  time, so that costs little.
- HALF_OPEN: bulky traffic goes one batch per *probe*. ``admit_bulk`` grants a probe when
  none is in flight; the probe is judged by the next outcome: a failure re-opens the
  breaker (and restarts the timeout), a success counts towards ``success_threshold``
  consecutive successes, which close it. The node reports every lost send
  (``peer_unreachable``) and every batch received from the peer (a success). A probe that
  no failure was reported for within ``probe_window`` seconds (the transport reports a
  failed dial or write within its connect timeout) is counted as delivered too, in case
  the peer has nothing to say, and the next probe is granted in the same call. Until then
  further bulky batches are refused.

The clock is injected (``clock``, default ``time.monotonic``) so tests advance time
instead of sleeping. Nothing here blocks, awaits or takes a lock: the breaker is used from
the event loop only.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "Clock"]

Clock = Callable[[], float]
"""Seconds from an arbitrary origin that never goes backwards (``time.monotonic``)."""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """The thresholds of every breaker of a guard (``performance.circuit_breaker``)."""

    failure_threshold: int
    """Consecutive failures that open a closed breaker."""
    timeout: float
    """Seconds an open breaker waits before it lets a probe through."""
    success_threshold: int
    """Consecutive successful probes that close a half-open breaker."""
    probe_window: float
    """Seconds after which a probe that no failure was reported for counts as delivered."""

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "success_threshold"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"circuit breaker {name} is {value!r}; expected an integer >= 1")
        for name in ("timeout", "probe_window"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"circuit breaker {name} is {value!r}; expected a number of seconds > 0"
                )


_STATES: Final = {state.value: state for state in BreakerState}


class CircuitBreaker:
    """One peer's breaker. See the module docstring for the rules."""

    __slots__ = (
        "_clock",
        "_config",
        "_consecutive_failures",
        "_probe_started",
        "_since",
        "_state",
        "_successes",
        "_total_failures",
    )

    def __init__(self, config: BreakerConfig, *, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._since = clock()
        """When the breaker entered ``_state`` (for OPEN: when it opened)."""
        self._consecutive_failures = 0
        self._successes = 0
        """Successful probes since the breaker became half-open."""
        self._probe_started: float | None = None
        """When the half-open probe in flight was granted; None when none is."""
        self._total_failures = 0
        """Every failure ever recorded, whatever the state (status pages, the legacy guard)."""

    # -- reading ----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._since >= self._config.timeout:
            self._enter(BreakerState.HALF_OPEN, self._since + self._config.timeout)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def successes(self) -> int:
        """Successful probes counted since the breaker became half-open."""
        return self._successes

    @property
    def total_failures(self) -> int:
        """Every failure recorded for this peer, in any state (carried across swaps)."""
        return self._total_failures

    @total_failures.setter
    def total_failures(self, value: int) -> None:
        if type(value) is not int or value < 0:
            raise ValueError(f"breaker total_failures is {value!r}; expected an integer >= 0")
        self._total_failures = value

    @property
    def probe_in_flight(self) -> bool:
        return self._probe_started is not None

    # -- deciding ---------------------------------------------------------------------------

    def admit_bulk(self) -> bool:
        """May one batch of bulky traffic go to the peer now?

        CLOSED: yes. OPEN: no. HALF_OPEN: yes if it becomes the probe (none in flight, or
        the one in flight outlived ``probe_window`` without a failure and so counts as
        delivered); no while a probe is still being judged.
        """
        if self._state is BreakerState.CLOSED:
            return True
        state = self.state
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        if self._probe_started is not None:
            if now - self._probe_started < self._config.probe_window:
                return False
            if self._probe_succeeded():
                return True  # that probe closed the breaker
        self._probe_started = now
        return True

    # -- learning ---------------------------------------------------------------------------

    def record_failure(self) -> None:
        self._total_failures += 1
        state = self.state
        if state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            if self._consecutive_failures >= self._config.failure_threshold:
                self._enter(BreakerState.OPEN, self._clock())
        elif state is BreakerState.HALF_OPEN:
            # The probe (or the peer) failed: the peer is not back yet. Wait a full timeout.
            self._consecutive_failures += 1
            self._enter(BreakerState.OPEN, self._clock())
        else:
            # Expected while open: the small messages still go, and fail. The timeout is
            # not restarted, so a peer that comes back is probed on schedule.
            self._consecutive_failures += 1

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._consecutive_failures = 0
        elif state is BreakerState.HALF_OPEN:
            self._probe_succeeded()
        else:
            # OPEN, and the peer answers: probe it now rather than after the timeout (see
            # the module docstring); this success is the first of ``success_threshold``.
            self._enter(BreakerState.HALF_OPEN, self._clock())
            self._probe_succeeded()

    def _probe_succeeded(self) -> bool:
        """Count a successful probe; True if it closed the breaker."""
        self._probe_started = None
        self._successes += 1
        if self._successes < self._config.success_threshold:
            return False
        self._enter(BreakerState.CLOSED, self._clock())
        return True

    def _enter(self, state: BreakerState, since: float) -> None:
        self._state = state
        self._since = since
        self._successes = 0
        self._probe_started = None
        if state is BreakerState.CLOSED:
            self._consecutive_failures = 0

    # -- swap state -------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """This breaker as plain data; times relative to now, so another clock can read it.

        A probe in flight is not carried: the successor grants a new one. Nor is
        ``total_failures``: the guard carries it in the legacy guard's format.
        """
        state = self.state
        return {
            "state": state.value,
            "consecutive_failures": self._consecutive_failures,
            "successes": self._successes,
            "elapsed": max(0.0, self._clock() - self._since),
        }

    @classmethod
    def restore(
        cls,
        config: BreakerConfig,
        data: Mapping[str, Any],
        *,
        clock: Clock = time.monotonic,
        total_failures: int = 0,
    ) -> CircuitBreaker:
        """The breaker ``export`` described, judged by ``config`` from the next event on.

        Raises ``TypeError`` / ``ValueError`` naming the field for data no breaker exports.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"breaker state must be a mapping, not {type(data).__name__}")
        raw_state = data.get("state")
        state = _STATES.get(raw_state) if isinstance(raw_state, str) else None
        if state is None:
            raise ValueError(f"breaker state {raw_state!r}; expected one of {sorted(_STATES)}")
        counts = {}
        for name in ("consecutive_failures", "successes"):
            value = data.get(name, 0)
            if type(value) is not int or value < 0:
                raise ValueError(f"breaker {name} is {value!r}; expected an integer >= 0")
            counts[name] = value
        elapsed = data.get("elapsed", 0.0)
        if (
            isinstance(elapsed, bool)
            or not isinstance(elapsed, int | float)
            or not math.isfinite(elapsed)
            or elapsed < 0
        ):
            raise ValueError(f"breaker elapsed is {elapsed!r}; expected seconds >= 0")
        breaker = cls(config, clock=clock)
        breaker._state = state
        breaker._since = clock() - float(elapsed)
        breaker._consecutive_failures = counts["consecutive_failures"]
        breaker._successes = counts["successes"] if state is BreakerState.HALF_OPEN else 0
        breaker.total_failures = total_failures
        return breaker
