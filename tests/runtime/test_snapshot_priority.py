"""A snapshot is joined and written in a thread of lower CPU priority than the Ready loop
(issue #13): on a machine with few cores, the loop gets a CPU before the snapshot's copying
and hashing does (see ``framework/runtime/local_snapshots.py``)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import anyio
import pytest

from framework.core import Snapshot
from framework.runtime.local_snapshots import BACKGROUND_NICE, LocalSnapshots
from framework.storage import MemoryLogStore

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a nice value is per thread on Linux only"
)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class _PriorityStore(MemoryLogStore):
    """Records the nice value of the thread each write runs in."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshot_writes: list[tuple[int, int]] = []  # (thread id, nice value)
        self.ready_writes: set[int] = set()  # nice values

    def save_ready(self, *args: Any, **kwargs: Any) -> Any:
        self.ready_writes.add(_nice())
        return super().save_ready(*args, **kwargs)

    def prepare_snapshot(self, snapshot: Snapshot) -> Snapshot:
        self.snapshot_writes.append((threading.get_native_id(), _nice()))
        return super().prepare_snapshot(snapshot)


async def _take_snapshots(background_nice: int | None) -> _PriorityStore:
    import test_node_memory as memory

    from framework.runtime.node import NodeConfig, RaftNode

    settings = memory._settings(
        **{"raft.snapshot_threshold_entries": 20, "raft.snapshot_trailing_entries": 5}
    )
    store = _PriorityStore()
    async with anyio.create_task_group() as tg:
        c = memory.Cluster(network=memory.MemoryNetwork(seed=5), tg=tg, settings=settings)
        c.stores[1] = store
        config = NodeConfig(node_id=1, cluster_id="mem", peers=c.peers, settings=settings)
        node = RaftNode(config, store=store, transport=c.network.transport(1))
        if background_nice is not None:
            node.local_snapshots.background_nice = background_nice
        await tg.start(node.run)
        c.nodes[1] = node
        async with c.client() as client:
            await c.wait_leader()
            i = 0
            with anyio.fail_after(30):
                while node.local_snapshots.taken < 2:
                    await client.put(f"k{i}", str(i))
                    i += 1
            await client.put("after", "snapshots")  # a Ready written after them
        tg.cancel_scope.cancel()
    return store


@linux_only
@pytest.mark.anyio
async def test_a_snapshot_is_written_at_lower_priority_and_ready_writes_are_not() -> None:
    loop_nice = _nice()
    store = await _take_snapshots(None)
    assert len(store.snapshot_writes) >= 2
    loop_thread = threading.get_native_id()
    for thread_id, nice in store.snapshot_writes:
        assert thread_id != loop_thread
        assert nice == min(19, loop_nice + BACKGROUND_NICE)
    # The pool's worker threads (save_ready) were never slowed down.
    assert store.ready_writes == {loop_nice}


@linux_only
@pytest.mark.anyio
async def test_background_nice_zero_keeps_the_loops_priority() -> None:
    loop_nice = _nice()
    store = await _take_snapshots(0)
    assert {nice for _, nice in store.snapshot_writes} == {loop_nice}


@pytest.mark.parametrize("value", [-1, 20])
def test_background_nice_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match=f"background_nice={value}: expected 0 to 19"):
        LocalSnapshots(
            node_id=1,
            store=MemoryLogStore(),
            state_machine=object(),
            threshold=1,
            trailing=0,
            wake=lambda: None,
            background_nice=value,
        )
