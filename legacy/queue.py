"""The legacy queue between tasks: one unbounded FIFO.

The seed's ``mpsc::unbounded_channel`` (``node.rs``) and unbounded message buffer
(``iroh.rs``): a producer is never refused and never waits, so when the Ready loop falls
behind the queue, and memory, grow without limit. On purpose: the backpressure plugin
(bounded, priority classes, shedding) is measured against this.

What it does not do here: make votes wait behind proposals. The runtime gives peer
messages (the inbox) and client proposals queues of their own, and the Ready loop drains
the inbox first, so a vote or heartbeat never queues behind a proposal in this process;
inside one queue items leave in arrival order whatever their priority.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from framework.seams import LockStats, Priority, QueueStats

__all__ = ["UnboundedQueue"]

T = TypeVar("T")


class UnboundedQueue(Generic[T]):
    """`MessageQueue`: FIFO in arrival order whatever the priority; never raises `QueueFull`.

    The priority is kept with each item only so that a successor that honours priorities
    gets it on a swap. State carried across a swap: the queued items as a list of
    ``(item, priority)`` in arrival order; exporting takes them out of this queue, so
    draining the old queue after the swap cannot deliver them twice.
    """

    __slots__ = ("_enqueued", "_items", "_max_depth", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: deque[tuple[T, Priority]] = deque()
        self._enqueued = 0
        self._max_depth = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep_forever()

    def put_nowait(self, item: T, priority: Priority = Priority.NORMAL) -> None:
        self._items.append((item, priority))
        self._enqueued += 1
        if len(self._items) > self._max_depth:
            self._max_depth = len(self._items)

    def drain(self, limit: int | None = None) -> list[T]:
        """Up to ``limit`` items (all when None), oldest first."""
        if limit is None or limit >= len(self._items):
            items = [item for item, _ in self._items]
            self._items.clear()
            return items
        if limit < 0:
            raise ValueError(f"drain limit must be None or >= 0, not {limit}")
        return [self._items.popleft()[0] for _ in range(limit)]

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> QueueStats:
        return QueueStats(
            name=self.name,
            depth=len(self._items),
            capacity=None,
            max_depth=self._max_depth,
            enqueued=self._enqueued,
            rejected=0,
        )

    def export_state(self) -> list[tuple[T, Priority]]:
        items = list(self._items)
        self._items.clear()
        return items

    def import_state(self, state: Any) -> None:
        """Re-enqueue a predecessor's ``(item, priority)`` pairs, in order, behind anything
        already queued."""
        for item, priority in _pairs(state):
            self.put_nowait(item, priority)

    def lock_stats(self) -> LockStats:
        # An unbounded channel takes no lock the plan counts.
        return LockStats()


def _pairs(state: Any) -> list[tuple[Any, Priority]]:
    """The pairs of an exported queue state, all checked before any is enqueued."""
    if state is None:
        return []
    if isinstance(state, str | bytes) or not isinstance(state, Iterable):
        raise TypeError(
            f"queue state must be a list of (item, priority) pairs, not {type(state).__name__}"
        )
    pairs: list[tuple[Any, Priority]] = []
    for pair in state:
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise TypeError(f"queue state must be a list of (item, priority) pairs; got {pair!r}")
        try:
            pairs.append((pair[0], Priority(pair[1])))
        except ValueError:
            raise ValueError(
                f"queue state has priority {pair[1]!r}; expected one of "
                + ", ".join(f"{p.name} ({p.value})" for p in Priority)
            ) from None
    return pairs
