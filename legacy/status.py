"""The legacy node status store: a `NodeStatus` behind a read-write lock.

The seed's ``Arc<RwLock<NodeStatus>>`` (``node.rs``): the Ready loop takes the write lock
to publish, every client and admin request takes the read lock to look. With many readers a
publishing Ready loop waits for them to drain, and a waiting publisher holds up every reader
that comes after it; the lock accounting (`lock_stats`) shows how much. The actor plugin
replaces this with a task that owns the status.
"""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskStatus

from framework.seams import LockStats, NodeStatus
from legacy.rwlock import RWLock

__all__ = ["LockedNodeStatus"]


class LockedNodeStatus:
    """`StatusStore`: publish under the write lock, read under the read lock.

    State carried across a swap: the current `NodeStatus`.
    """

    __slots__ = ("_lock", "_status")

    def __init__(self, node_id: int) -> None:
        self._status = NodeStatus(node_id=node_id)
        self._lock = RWLock()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Nothing to serve: callers take the lock themselves.
        task_status.started()
        await anyio.sleep_forever()

    async def publish(self, status: NodeStatus) -> None:
        async with self._lock.write():
            self._status = status

    async def read(self) -> NodeStatus:
        async with self._lock.read():
            return self._status

    def export_state(self) -> NodeStatus:
        return self._status

    def import_state(self, state: Any) -> None:
        if not isinstance(state, NodeStatus):
            raise TypeError(f"status store state must be a NodeStatus, not {type(state).__name__}")
        if state.node_id != self._status.node_id:
            raise ValueError(
                f"status of node {state.node_id} imported into the store of node "
                f"{self._status.node_id}"
            )
        self._status = state

    def lock_stats(self) -> LockStats:
        return self._lock.stats()
