"""Compaction keeps trailing entries (issue #13): a follower that is a little behind at
snapshot time catches up from the log, not from a whole snapshot; a restarted node rebuilds
its log from a store that kept them."""

from __future__ import annotations

import pytest
from kernel_harness import _SM_ENCODER, Cluster, make_stable_leader

from framework.core import AppendEntries, InstallSnapshot, KernelMisuse


def _lagging_cluster(trailing: int) -> tuple[Cluster, list[type]]:
    c = Cluster(seed=31)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.isolate(3)
    for i in range(20):
        c.propose(1, f"w{i}".encode())
    c.stabilize([1, 2])
    record = c.records[1]
    snapshot = record.node.compact(_SM_ENCODER.encode(record.state), trailing=trailing)
    record.store.save_snapshot(snapshot, compact_to=record.node.log.offset)
    c.heal()
    c.network.take()  # what was queued while isolated is lost
    sent: list[type] = []
    c.propose(1, b"after")
    for _ in range(100):  # stabilize, noting what node 3 is sent
        busy = any([c.process_ready(nid) for nid in c.ids])
        sent.extend(type(m) for m in c.network.queue if m.dst == 3)
        busy |= c.deliver() > 0
        if not busy:
            break
    return c, sent


def test_a_lagging_follower_catches_up_from_trailing_entries_without_a_snapshot() -> None:
    c, sent = _lagging_cluster(trailing=50)
    assert InstallSnapshot not in sent and AppendEntries in sent
    assert c.state(3) == c.state(1)
    assert c.node(1).log.first_index() < c.node(1).snapshot.meta.index - 20


def test_without_trailing_entries_the_same_follower_needs_the_snapshot() -> None:
    c, sent = _lagging_cluster(trailing=0)
    assert InstallSnapshot in sent
    assert c.node(3).log.committed == c.node(1).log.committed


def test_a_node_restarts_from_a_store_holding_trailing_entries() -> None:
    c, _ = _lagging_cluster(trailing=10)
    leader = c.node(1)
    first, snap = leader.log.first_index(), leader.snapshot.meta.index
    assert first < snap
    c.restart(1)
    node = c.node(1)
    assert node.snapshot.meta.index == snap
    assert node.log.applied == snap  # the state machine restores from the snapshot
    assert node.log.first_index() == first + 1  # the first kept entry is the new offset
    assert node.log.last_index() == leader.log.last_index()
    assert node.log.term(snap) == leader.log.term(snap)
    assert node.log.slice(first + 1, snap + 1) == leader.log.slice(first + 1, snap + 1)


def test_trailing_must_not_be_negative() -> None:
    leader = make_stable_leader()
    with pytest.raises(KernelMisuse, match="trailing=-1"):
        leader.compact(b"", trailing=-1)
