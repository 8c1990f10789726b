"""One write's way through the leader's Ready loop (issue #15: a single write's latency).

- A follower's acknowledgement that reaches the leader while the leader stores the same
  entry is stepped as soon as the store returns, so the entry commits, applies and its
  writer is answered in that pass of the Ready loop, not after another wake-up and pass.
- The writer is answered before the node's status is rebuilt and published (when neither
  leader, term nor membership changed): the indexes on the status page may lag a tick.

The leader's store is held, in its worker thread, until the follower's acknowledgement of
the write has been delivered to the leader, so the order of events is fixed, whatever the
machine's speed, and the leader's time keeper (which steps its inbox once per heartbeat
interval while it waits for its disk) is off during the write: a store takes well under a
heartbeat interval.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from framework.core import AppendResponse, Entry, HardState, Message, RawNode, Snapshot
from framework.runtime.node import RaftNode
from framework.runtime.pending import Waiter
from framework.storage import MemoryLogStore, SnapshotFile
from framework.transport.memory import MemoryNetwork
from framework.transport.wire import KVOp
from tests.runtime.inprocess_cluster import Cluster, fast_settings

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class AckGatedStore(MemoryLogStore):
    """Once armed with an index, holds the save of that entry until ``acked`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.index = 0
        self.acked = threading.Event()
        self.on_release: Any = None

    def save_ready(
        self,
        *,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        sync: bool,
        snapshot_file: SnapshotFile | None = None,
    ) -> None:
        if self.index and any(e.index == self.index for e in entries):
            self.index = 0
            assert self.acked.wait(timeout=10), "no acknowledgement reached the leader"
            if self.on_release is not None:
                self.on_release()
        super().save_ready(
            hard_state=hard_state,
            entries=entries,
            snapshot=snapshot,
            sync=sync,
            snapshot_file=snapshot_file,
        )


async def _write_with_ack_during_store(
    c: Cluster, events: list[str], *, record_publications: bool
) -> None:
    """Put one key on the leader, its store held until a follower's ack arrived; ``events``
    gets "store returns" (with the leader's count of input drains), "answered" (likewise),
    and, if asked, "published" for each status publication."""
    leader_id = await c.wait_leader()
    leader: RaftNode = c.nodes[leader_id]
    async with c.client() as client:
        await client.put("warm", "up")  # the term's first entries are committed
    kernel = leader.kernel
    assert kernel is not None
    store = c.stores[leader_id]
    assert isinstance(store, AckGatedStore)
    target = kernel.log.last_index() + 1
    term = kernel.term
    drains = 0
    drain = leader._drain_inputs

    def counting_drain(k: RawNode) -> None:
        nonlocal drains
        drains += 1
        drain(k)

    deliver = leader.deliver

    def watching_deliver(messages: Sequence[Message]) -> None:
        deliver(messages)
        if any(isinstance(m, AppendResponse) and m.index >= target for m in messages):
            store.acked.set()

    leader._drain_inputs = counting_drain  # type: ignore[method-assign,assignment]
    # A store longer than a heartbeat interval has the leader's inbox stepped during it
    # (kernel_inputs.TimeKeeper); a store takes well under one, which is the case tested.
    leader._time_keeper.keep = lambda: None  # type: ignore[method-assign]
    leader.deliver = watching_deliver  # type: ignore[method-assign]
    store.on_release = lambda: events.append(f"store returns after {drains} drains")
    if record_publications:  # a publication builds the status from kernel.status()
        build = kernel.status

        def watching_build() -> Any:
            same = (kernel.term, kernel.leader) == (term, leader_id)
            events.append("published" if same else "published a change of leader")
            return build()

        kernel.status = watching_build  # type: ignore[method-assign]
    await anyio.sleep(0.05)  # past the rate limit of the status's last publication
    store.index = target
    answered = anyio.Event()

    def on_done(waiter: Waiter) -> None:
        events.append(f"answered after {drains} drains")
        answered.set()

    waiter = Waiter(on_done)
    leader.clients.start(KVOp(op="put", key="k", value="v", client_id=7, seq=1), waiter)
    with anyio.fail_after(10):
        await answered.wait()
    assert waiter.error is None, waiter.error


async def _run(events: list[str], *, record_publications: bool) -> None:
    async with anyio.create_task_group() as tg:
        # Elections after 0.5-1s of silence: this test's write should keep its leader.
        settings = fast_settings(**{"raft.election_tick": 100})
        c = Cluster(network=MemoryNetwork(seed=7), tg=tg, settings=settings)
        for node_id in (1, 2, 3):
            c.stores[node_id] = AckGatedStore()
        for node_id in (1, 2, 3):
            await c.start(node_id)
        try:
            await _write_with_ack_during_store(c, events, record_publications=record_publications)
        finally:
            for store in c.stores.values():
                assert isinstance(store, AckGatedStore)
                store.acked.set()
            tg.cancel_scope.cancel()


async def test_an_ack_that_arrives_during_the_leaders_store_commits_in_the_same_pass() -> None:
    events: list[str] = []
    await _run(events, record_publications=False)
    released, answered = events
    # Before: the ack waited in the inbox for the loop's next wake-up and drain.
    assert released.removeprefix("store returns") == answered.removeprefix("answered"), events


async def test_a_writer_is_answered_before_the_status_is_published() -> None:
    events: list[str] = []
    await _run(events, record_publications=True)
    after_release = events[[e.startswith("store returns") for e in events].index(True) + 1 :]
    answered = [e.startswith("answered") for e in after_release].index(True)
    # Before: the commit's status was built and published first, then the writer answered.
    # (A leader that lost its quorum meanwhile, on a starved machine, publishes that first.)
    assert "published" not in after_release[:answered], events
    assert "published" in after_release[answered:], events  # and the status follows
