"""A round-trip time estimator for one operation: Jacobson/Karels, as TCP does it.

Theory of operation
-------------------
RFC 6298 ("Computing TCP's Retransmission Timer") keeps two numbers per path: SRTT, a
smoothed mean of the measured round trips, and RTTVAR, a smoothed mean deviation. The
timeout (RTO) is the mean plus four deviations, so a path whose round trips vary a lot gets
a wider margin than one whose round trips are steady at the same mean:

- §2.1, before any measurement: RTO is the initial value (here: the caller's, e.g. the
  operation's ``base_timeout``);
- §2.2, the first measurement R: ``SRTT = R``, ``RTTVAR = R / 2``;
- §2.3, each later measurement R': first ``RTTVAR = (1 - beta) * RTTVAR + beta * |SRTT -
  R'|`` (with the *old* SRTT), then ``SRTT = (1 - alpha) * SRTT + alpha * R'``, with
  ``alpha = 1/8`` and ``beta = 1/4``; after either, ``RTO = SRTT + 4 * RTTVAR`` (the
  clock granularity G of the RFC is taken as 0: our clocks are far finer than a tick);
- §2.4/§2.5, RTO is kept within ``[min_rto, max_rto]`` (the RFC's are 1 s and >= 60 s;
  the caller chooses ours);
- §5.5, when the timer expires RTO doubles ("back off the timer"), up to ``max_rto``;
  the next measurement recomputes RTO from SRTT and RTTVAR, which ends the back-off.

Only measurements of operations that finished (``sample``) feed SRTT and RTTVAR; an
operation that timed out says only that RTO was too short (``backoff``), not how long the
operation would have taken. This module is pure arithmetic: no clock, no I/O, no locks.
"""

from __future__ import annotations

import math

__all__ = ["ALPHA", "BETA", "K", "RttEstimator"]

ALPHA = 1 / 8
"""Gain of SRTT (RFC 6298 §2.3)."""
BETA = 1 / 4
"""Gain of RTTVAR (RFC 6298 §2.3)."""
K = 4
"""Deviations of margin in RTO (RFC 6298 §2)."""


class RttEstimator:
    """SRTT, RTTVAR and RTO of one operation (RFC 6298), in seconds.

    ``initial_rto`` is RTO before the first measurement; ``min_rto`` and ``max_rto`` bound
    RTO at all times (``0 <= min_rto <= initial_rto <= max_rto``, else ``ValueError``).
    """

    __slots__ = ("_rto", "_rttvar", "_srtt", "initial_rto", "max_rto", "min_rto")

    def __init__(
        self, initial_rto: float, *, min_rto: float = 0.0, max_rto: float = math.inf
    ) -> None:
        if not 0.0 <= min_rto <= initial_rto <= max_rto or math.isnan(initial_rto):
            raise ValueError(
                f"RTO bounds must satisfy 0 <= min_rto <= initial_rto <= max_rto; got "
                f"min_rto={min_rto!r}, initial_rto={initial_rto!r}, max_rto={max_rto!r}"
            )
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self._srtt: float | None = None
        self._rttvar: float | None = None
        self._rto = initial_rto

    @property
    def srtt(self) -> float | None:
        """The smoothed round trip; None before the first measurement."""
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        """The smoothed mean deviation of the round trip; None before the first measurement."""
        return self._rttvar

    @property
    def rto(self) -> float:
        """The current timeout: ``SRTT + 4 * RTTVAR`` within the bounds, doubled per
        unanswered back-off since the last measurement."""
        return self._rto

    def sample(self, seconds: float) -> None:
        """Take one measured round trip of an operation that finished in time.

        A measurement that is not a finite number >= 0 (a clock that went backwards, a NaN)
        is ignored: one bad reading must not poison every later timeout.
        """
        if not (math.isfinite(seconds) and seconds >= 0.0):
            return
        if self._srtt is None or self._rttvar is None:
            self._srtt = seconds
            self._rttvar = seconds / 2
        else:
            # §2.3: RTTVAR is updated with the SRTT from before this measurement.
            self._rttvar = (1 - BETA) * self._rttvar + BETA * abs(self._srtt - seconds)
            self._srtt = (1 - ALPHA) * self._srtt + ALPHA * seconds
        self._rto = self._bounded(self._srtt + K * self._rttvar)

    def backoff(self) -> None:
        """The operation timed out: double RTO (§5.5), at most to ``max_rto``."""
        self._rto = self._bounded(self._rto * 2)

    def restore(self, srtt: float, rttvar: float) -> None:
        """Continue from a predecessor's SRTT and RTTVAR (a component swap): RTO is
        recomputed from them, so a back-off in progress is not carried over.

        Raises ``ValueError`` unless both are finite numbers >= 0.
        """
        for name, value in (("srtt", srtt), ("rttvar", rttvar)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        self._srtt = srtt
        self._rttvar = rttvar
        self._rto = self._bounded(srtt + K * rttvar)

    def _bounded(self, rto: float) -> float:
        return min(self.max_rto, max(self.min_rto, rto))

    def __repr__(self) -> str:
        return f"RttEstimator(srtt={self._srtt!r}, rttvar={self._rttvar!r}, rto={self._rto!r})"
