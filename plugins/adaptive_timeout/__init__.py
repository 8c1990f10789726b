"""Adaptive per-operation timeouts (flag ``adaptive_timeout``).

`AdaptiveTimeouts` is the ``TimeoutPolicy`` built when the flag is on: an RFC 6298 round
trip estimate per operation (`RttEstimator`), clamped to ``[base_timeout, max_timeout]``,
doubled on a timeout, and backed off with jitter on retries. The hook implementations live
in ``plugins.adaptive_timeout.plugin``.
"""

from plugins.adaptive_timeout.estimator import RttEstimator
from plugins.adaptive_timeout.policy import CLIENT_REQUEST, JITTER, AdaptiveTimeouts

__all__ = ["CLIENT_REQUEST", "JITTER", "AdaptiveTimeouts", "RttEstimator"]
