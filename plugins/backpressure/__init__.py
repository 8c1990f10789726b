"""Backpressure for the queues between tasks (flag ``backpressure``).

`BoundedPriorityQueue` is the ``MessageQueue`` built when the flag is on: bounded by
``performance.backpressure.max_pending``, drained CRITICAL > HIGH > NORMAL (FIFO within
each), shedding client (NORMAL) work when full, under memory pressure, or early while the
consumer falls behind, and keeping a small reserve so Raft's own CRITICAL traffic always
gets through. The hook implementations live in ``plugins.backpressure.plugin``.
"""

from plugins.backpressure.queue import (
    BackpressureSnapshot,
    BoundedPriorityQueue,
    ProcessMemoryProbe,
    memory_budget_bytes,
    read_memory_fraction,
)

__all__ = [
    "BackpressureSnapshot",
    "BoundedPriorityQueue",
    "ProcessMemoryProbe",
    "memory_budget_bytes",
    "read_memory_fraction",
]
