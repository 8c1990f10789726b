"""Per-peer circuit breakers around peer sends, Raft-aware (flag ``circuit_breaker``).

`BreakerGuard` is the ``SendGuard`` built when the flag is on: one `CircuitBreaker` per
peer (closed -> open after ``failure_threshold`` consecutive failures -> half_open after
``timeout`` -> closed after ``success_threshold`` successful probes), holding back only
bulky traffic (AppendEntries with entries, InstallSnapshot) while a peer's breaker is not
closed, never the small messages Raft needs to elect and keep a leader. The hook
implementations live in ``plugins.circuit_breaker.plugin``.
"""

from plugins.circuit_breaker.breaker import BreakerConfig, BreakerState, CircuitBreaker
from plugins.circuit_breaker.guard import BreakerGuard, is_bulky

__all__ = ["BreakerConfig", "BreakerGuard", "BreakerState", "CircuitBreaker", "is_bulky"]
