"""The legacy implementations: the plan's "before", one per seam, chosen when a flag is off.

They keep the seed's problems on purpose (a read-write lock on the node status, one
unbounded queue with no priorities, fixed timeouts, no circuit breakers, metrics behind one
mutex, peer connections behind one lock that is held while writing) and are correct, so
an A/B run can compare them with the new plugins. One was dropped because it cost more than
speed: dialling under the pool lock let one unreachable follower depose a leader that had a
quorum (issue #19; see ``legacy.pool``). The pluggy plugin module is
`legacy.plugin`, registered by entry point like any other plugin.
"""

from legacy.metrics import HISTOGRAM_WINDOW, LockedMetrics
from legacy.pool import LockedConnectionPool
from legacy.queue import UnboundedQueue
from legacy.rwlock import CountingLock, CountingThreadLock, RWLock
from legacy.send_guard import NoGuard
from legacy.status import LockedNodeStatus
from legacy.timeouts import FixedTimeouts

__all__ = [
    "HISTOGRAM_WINDOW",
    "CountingLock",
    "CountingThreadLock",
    "FixedTimeouts",
    "LockedConnectionPool",
    "LockedMetrics",
    "LockedNodeStatus",
    "NoGuard",
    "RWLock",
    "UnboundedQueue",
]
