"""Log compaction and snapshots: P §7 ("InstallSnapshot"), restart from a snapshot."""

from __future__ import annotations

import pytest
from kernel_harness import Cluster, drain, make_node

from framework.core import (
    AppendResponse,
    ConfState,
    InstallSnapshot,
    KernelMisuse,
    Role,
    Snapshot,
    SnapshotMeta,
)


def _cluster(**config: object) -> Cluster:
    c = Cluster(seed=31, **config)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    return c


def test_7_compact_drops_applied_entries_and_keeps_the_rest() -> None:
    """§7: "the entire system state is written to a snapshot on stable storage, then the
    entire log up to that point is discarded"."""
    c = _cluster()
    for i in range(5):
        c.propose(1, f"v{i}".encode())
    c.stabilize()
    node = c.node(1)
    applied = node.log.applied
    snap = c.compact(1)
    assert (snap.meta.index, snap.meta.term) == (applied, node.term)
    assert snap.meta.conf_state == ConfState(voters=(1, 2, 3))
    assert node.log.first_index() == applied + 1
    assert node.log.term(applied) == node.term  # the snapshot's term is still known
    assert node.log.term(applied - 1) is None
    with pytest.raises(KernelMisuse, match="nothing to compact"):
        node.compact(b"again")


def test_7_compact_only_up_to_the_applied_index() -> None:
    node = make_node(1, log=[1, 1, 1], commit=3)  # entries 2..4, committed to 3
    drain(node)
    snap = node.compact(b"state")
    assert snap.meta.index == 3
    assert node.log.last_index() == 4 and node.log.first_index() == 4


def test_7_lagging_follower_gets_the_snapshot_then_the_entries_after_it() -> None:
    """§7: "the leader must occasionally send snapshots to followers that lag behind"."""
    c = _cluster()
    c.isolate(3)
    for i in range(5):
        c.propose(1, f"v{i}".encode())
        c.stabilize()
    c.compact(1)
    c.compact(2)
    c.heal()
    c.propose(1, b"after")
    c.tick_heartbeat(1)
    c.stabilize()
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.state(3) == c.state(1) == [f"v{i}".encode() for i in range(5)] + [b"after"]
    snaps = [m for m in c.records[3].store.load().snapshot.meta.conf_state.voters]
    assert snaps == [1, 2, 3]
    assert c.node(3).log.first_index() == c.node(1).log.first_index()
    assert c.node(1).progress[3].state.value == "replicate"


def _lose_the_first_snapshot(c: Cluster) -> None:
    """Node 3 is behind a compacted leader 1: run until the leader sends it a snapshot,
    and lose that message."""
    for _ in range(10):
        c.process_ready(1)
        if any(isinstance(m, InstallSnapshot) for m in c.network.queue):
            c.network.queue = [m for m in c.network.queue if not isinstance(m, InstallSnapshot)]
            return
        c.deliver()
        for nid in (2, 3):
            c.process_ready(nid)
        c.deliver()
    raise AssertionError("the leader never sent a snapshot")


def _behind_a_compacted_leader(**config: object) -> Cluster:
    c = _cluster(**config)
    c.isolate(3)
    for i in range(3):
        c.propose(1, f"v{i}".encode())
        c.stabilize()
    c.compact(1)
    c.heal()
    c.tick_heartbeat(1)
    return c


def test_7_leader_sends_one_snapshot_and_waits() -> None:
    """While a snapshot is in flight (SNAPSHOT state) nothing else is sent to the follower,
    even as new entries arrive and heartbeat rounds go out behind it."""
    c = _behind_a_compacted_leader()
    for _ in range(10):
        c.process_ready(1)
        if any(isinstance(m, InstallSnapshot) for m in c.network.queue):
            break
        c.deliver()
        for nid in (2, 3):
            c.process_ready(nid)
        c.deliver()
    assert c.node(1).progress[3].state.value == "snapshot"
    c.take_output()
    for i in range(3):
        c.propose(1, f"w{i}".encode())
        c.tick_heartbeat(1)
        c.stabilize([1, 2])  # node 3's link is slow: the snapshot has not arrived yet
    sent_to_3 = [line for line in c.take_output() if "send: 1->3" in line]
    assert sent_to_3 and all("Heartbeat" in line for line in sent_to_3)
    assert c.node(1).progress[3].state.value == "snapshot"
    assert c.state(3) == []
    c.stabilize()  # the snapshot arrives, then the rounds behind it: one snapshot was enough
    snapshots = [line for line in c.take_output() if "send: 1->3 Snapshot" in line]
    assert snapshots == []
    assert c.node(1).progress[3].state.value == "replicate"


def test_7_lost_snapshot_is_resent_once_a_later_heartbeat_round_is_answered() -> None:
    """Issue 14 item 6: links are FIFO, so a follower that answers a heartbeat round sent
    after the snapshot, but not the snapshot, lost it; the leader resends at once instead
    of stalling the follower until ``snapshot_retry_tick`` (10 election timeouts)."""
    c = _behind_a_compacted_leader()
    _lose_the_first_snapshot(c)
    c.tick_heartbeat(1)
    c.stabilize()
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.state(3) == c.state(1) == [b"v0", b"v1", b"v2"]
    assert c.node(1).progress[3].state.value == "replicate"


def test_7_lost_snapshot_is_resent_after_the_retry_timeout() -> None:
    """A lost InstallSnapshot would otherwise stall the follower forever."""
    c = _behind_a_compacted_leader(snapshot_retry_tick=5)
    _lose_the_first_snapshot(c)
    for _ in range(5):
        c.tick(1)
        c.stabilize()
    assert c.state(3) == c.state(1) == [b"v0", b"v1", b"v2"]


def test_7_report_snapshot_failure_resends() -> None:
    """The runtime reports a failed snapshot transfer; the leader probes and resends."""
    c = _behind_a_compacted_leader()
    _lose_the_first_snapshot(c)
    c.node(1).report_snapshot(3, success=False)
    c.tick_heartbeat(1)
    c.stabilize()
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.state(3) == c.state(1)


def test_7_follower_ignores_a_snapshot_older_than_its_commit_index() -> None:
    node = make_node(2, log=[2, 2, 2], term=2, commit=4)
    drain(node)
    before = list(node.log.entries)
    snap = Snapshot(meta=SnapshotMeta(index=3, term=2, conf_state=ConfState(voters=(1, 2, 3))))
    node.step(InstallSnapshot(src=1, dst=2, term=2, snapshot=snap))
    assert drain(node) == [AppendResponse(src=2, dst=1, term=2, index=4)]
    assert node.log.entries == before and node.log.offset == 1


def test_7_follower_holding_the_snapshot_entry_keeps_its_log_and_commits() -> None:
    """§7: "If the follower's log contains the entry at lastIncludedIndex, retain the log
    entries following it"."""
    node = make_node(2, log=[2, 2, 2, 2], term=2, commit=1)
    drain(node)
    snap = Snapshot(meta=SnapshotMeta(index=3, term=2, conf_state=ConfState(voters=(1, 2, 3))))
    node.step(InstallSnapshot(src=1, dst=2, term=2, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot is None
    assert [e.index for e in rd.committed_entries] == [2, 3]
    node.advance(rd)
    assert node.log.last_index() == 5 and node.log.committed == 3


def test_7_follower_with_a_conflicting_log_replaces_it_with_the_snapshot() -> None:
    """§7: "discard the entire log"; the snapshot's membership takes effect at once and
    nothing is applied before the snapshot is restored."""
    node = make_node(2, log=[2, 3, 3], term=4, commit=2)
    drain(node)
    conf = ConfState(voters=(1, 2, 3), learners=(4,))
    snap = Snapshot(meta=SnapshotMeta(index=6, term=4, conf_state=conf), data=b"state")
    node.step(InstallSnapshot(src=1, dst=2, term=4, snapshot=snap))
    rd = node.ready()
    assert rd.snapshot == snap and rd.must_sync
    assert rd.committed_entries == ()
    assert rd.persisted_messages == (AppendResponse(src=2, dst=1, term=4, index=6),)
    assert rd.hard_state is not None and rd.hard_state.commit == 6
    node.advance(rd)
    assert node.log.last_index() == 6 and node.log.applied == 6
    assert node.conf_state == conf
    assert not node.has_ready()


def test_7_node_does_not_campaign_with_a_snapshot_it_has_not_restored() -> None:
    node = make_node(2, log=[2], term=2, pre_vote=False)
    drain(node)
    snap = Snapshot(meta=SnapshotMeta(index=6, term=2, conf_state=ConfState(voters=(1, 2, 3))))
    node.step(InstallSnapshot(src=1, dst=2, term=2, snapshot=snap))
    node.campaign()
    assert node.role is Role.FOLLOWER
    drain(node)
    node.campaign()
    assert node.role is Role.CANDIDATE


def test_7_restart_from_snapshot_and_later_entries() -> None:
    """A crash keeps the stored snapshot and entries; the restarted node re-applies the
    entries after the snapshot and rejoins with the same state."""
    c = _cluster()
    for i in range(4):
        c.propose(1, f"a{i}".encode())
    c.stabilize()
    c.compact(2)
    for i in range(3):
        c.propose(1, f"b{i}".encode())
    c.stabilize()
    expected = c.state(2)
    snap_index = c.node(2).log.offset
    c.restart(2)
    node = c.node(2)
    assert node.log.offset == snap_index
    assert node.log.applied == snap_index
    assert node.role is Role.FOLLOWER
    c.stabilize()
    assert c.state(2) == expected
    assert [e.index for e in c.records[2].applied] == list(
        range(snap_index + 1, node.log.last_index() + 1)
    )
    c.propose(1, b"c")
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.state(2) == [*expected, b"c"]


def test_7_restarted_leader_log_and_state_survive() -> None:
    c = _cluster()
    for i in range(3):
        c.propose(1, f"a{i}".encode())
    c.stabilize()
    c.compact(1)
    c.restart(1)
    c.stabilize()
    assert c.state(1) == [f"a{i}".encode() for i in range(3)]
    for _ in range(40):
        for nid in c.ids:
            c.tick(nid)
        c.stabilize()
    assert len(c.leaders()) == 1
    leader = c.leader()
    c.propose(leader, b"z")
    c.stabilize()
    assert {tuple(c.state(n)) for n in c.ids} == {(b"a0", b"a1", b"a2", b"z")}
