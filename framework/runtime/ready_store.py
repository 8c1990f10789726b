"""``ReadyStore``: step 2 of a ``Ready`` (its snapshot, entries and hard state to the log
store, in the node's store thread), and when a commit index alone is worth a store transaction.

Theory of operation
-------------------
A ``Ready`` whose only durable change is a higher commit index (``must_sync`` is False and
``hard_state`` is set) protects nothing: the entries it commits are durable already, and
the commit index is not a promise to anyone (Raft recomputes it from a quorum after a
restart: a leader by committing an entry of its term, a follower from the leader's next
append). etcd/raft does not fsync it either. Storing it costs a thread hop and a SQLite
transaction on the Ready loop, and a single writer's next request waits for both (issue
#15: about 0.45 ms of a 3.4 ms write on the development machine).

So such a hard state is *deferred*: kept here and written with the next store transaction
(the next Ready with entries, a term, a vote or a snapshot carries the newest hard state
anyway, or this one when it has none), or on its own once no store has happened for an
election timeout (an idle node: a busy one on a starved machine can go a heartbeat
interval between two appends), before a local snapshot is taken, and at shutdown.
What is stored is never ahead of what the kernel had committed, so a restart only replays
fewer entries at first and learns the rest from the leader; ``load()``'s checks still hold
(the commit index never passes the last stored index: committed entries are never
truncated). A commit that covers a membership change is ``must_sync`` in the kernel and
is stored before it applies, as before.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from framework.core import HardState, RawNode, Ready
from framework.runtime.kernel_inputs import TimeKeeper
from framework.runtime.store_thread import StoreThread
from framework.storage import LogStore, SnapshotFile
from framework.storage.base import save_ready

__all__ = ["ReadyStore"]


class ReadyStore:
    """Writes Readys to ``store`` off the event loop, deferring commit-only hard states."""

    def __init__(
        self,
        store: LogStore,
        *,
        time_keeper: TimeKeeper,
        on_persisted: Callable[[int, float], None],
        idle_after: float,
    ) -> None:
        self._store = store
        self.thread = StoreThread("raftmw-store")
        """Where the stores run (``framework/runtime/store_thread.py``); the node runs it
        for its lifetime (``async with ready_store.thread.running()``)."""
        self._time_keeper = time_keeper
        self._on_persisted = on_persisted
        self._idle_after = idle_after
        """Seconds without a store after which a deferred hard state is written alone."""
        self.deferred: HardState | None = None
        """The newest commit-only hard state not yet stored."""
        self._last_store = 0.0
        self.deferred_writes = 0
        """Commit-only hard states that were folded into a later store (for tests)."""

    async def write(
        self, kernel: RawNode, rd: Ready, snapshot_file: SnapshotFile | None = None
    ) -> float:
        """Store ``rd`` (synced if it must be; its snapshot's data in ``snapshot_file``
        when given) with any deferred hard state; the event loop's clock once it is
        stored."""
        hard_state = rd.hard_state
        if hard_state is None and self.deferred is not None:
            hard_state = self.deferred
            self.deferred_writes += 1
        await self._save(kernel, hard_state, rd, sync=rd.must_sync, snapshot_file=snapshot_file)
        now = anyio.current_time()
        if rd.entries:
            self._on_persisted(rd.entries[-1].index, now)
        return now

    def defer(self, rd: Ready) -> None:
        """Keep the commit-only hard state of ``rd`` (not ``must_sync``) for a later store."""
        assert not rd.must_sync and rd.hard_state is not None
        self.deferred = rd.hard_state

    def idle(self, now: float) -> bool:
        """A deferred hard state waits and no store happened for ``idle_after`` seconds."""
        return self.deferred is not None and now - self._last_store >= self._idle_after

    async def flush(self, kernel: RawNode) -> None:
        """Store a deferred hard state now (idle, before a local snapshot, at shutdown)."""
        if self.deferred is not None:
            await self._save(kernel, self.deferred, None, sync=False)

    async def _save(
        self,
        kernel: RawNode,
        hard_state: HardState | None,
        rd: Ready | None,
        *,
        sync: bool,
        snapshot_file: SnapshotFile | None = None,
    ) -> None:
        with self._time_keeper.keeping(kernel):
            await self.thread.call(self._save_sync, hard_state, rd, sync, snapshot_file)
        self.deferred = None
        self._last_store = anyio.current_time()

    def _save_sync(
        self,
        hard_state: HardState | None,
        rd: Ready | None,
        sync: bool,
        snapshot_file: SnapshotFile | None,
    ) -> None:
        save_ready(
            self._store,
            hard_state=hard_state,
            entries=() if rd is None else rd.entries,
            snapshot=None if rd is None else rd.snapshot,
            sync=sync,
            snapshot_file=snapshot_file,
        )
