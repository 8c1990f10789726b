"""Directed tests for the corner cases of issue 14, each a scenario that broke the kernel
before its fix: lease reads (D §6.4.1), a transfer during a lease, a conf change from an
outstanding Ready re-applied over a newer snapshot, a read whose confirming round was lost,
the campaign guard (the etcd-io/raft#456 shape), and what pre-vote alone does."""

from __future__ import annotations

import random

import pytest
from kernel_harness import Cluster, ack, drain, make_leader, make_node, make_stable_leader

from framework.core import (
    AppendEntries,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InvalidMessage,
    Message,
    RaftConfig,
    RawNode,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    encode_conf_change,
)

LEASE = {"lease_reads": True, "election_tick": 10, "heartbeat_tick": 1, "lease_drift_ticks": 2}


def _lease_cluster() -> Cluster:
    c = Cluster(seed=7, **LEASE)
    c.add_nodes(3)
    c.stabilize()
    for n in c.ids:  # new kernels honour a lease they may have granted before a restart
        c.tick(n, LEASE["election_tick"])
    c.stabilize()
    c.elect(1)
    c.propose(1, b"x=1")
    c.stabilize()
    return c


def _newest_commit_elsewhere(c: Cluster, old_leader: int) -> int:
    """The highest commit index of a leader of a later term than ``old_leader``'s."""
    term = c.node(old_leader).term
    return max(
        (
            c.node(n).log.committed
            for n in c.ids
            if n != old_leader and c.node(n).term > term and c.node(n).role is Role.LEADER
        ),
        default=0,
    )


# == item 1: a lease lasts from a round's send tick, less the drift bound ======================


def test_partitioned_leader_serves_no_lease_read_once_another_leader_may_commit() -> None:
    """Issue 14 item 1, with lockstep clocks: the leader is cut off right after its
    check-quorum passed. Every read it still serves from its lease must be at least as new
    as anything another leader has committed by then; it serves some (the lease works)."""
    c = _lease_cluster()
    while True:
        for n in c.ids:
            c.tick(n)
        c.stabilize()
        if c.node(1).election_elapsed == 0:  # its check-quorum just passed
            break
    c.isolate(1)
    served_after_cut = 0
    new_commit_seen = 0
    for step in range(40):
        for n in c.ids:
            c.tick(n)
        new_leader = next((n for n in c.leaders() if n != 1), 0)
        if new_leader and c.node(new_leader).log.committed >= c.node(new_leader).log.last_index():
            c.propose(new_leader, f"x={step + 2}".encode())
        c.stabilize()
        # A client reads from the old leader now; compare with what others committed.
        newer = _newest_commit_elsewhere(c, 1)
        new_commit_seen = max(new_commit_seen, newer)
        before = len(c.records[1].read_states)
        if c.node(1).role is Role.LEADER:
            c.node(1).read_index(f"r{step}".encode())
            c.process_ready(1)
        for rs in c.records[1].read_states[before:]:
            served_after_cut += 1
            assert rs.index >= newer, (
                f"stale lease read at tick {step}: index {rs.index}, another leader "
                f"committed {newer}"
            )
        c.stabilize()
    assert new_commit_seen > 0, "no other leader committed: the scenario did not happen"
    assert served_after_cut > 0, "the lease served nothing at all after the cut"


def test_a_read_outside_the_lease_falls_back_to_a_heartbeat_round() -> None:
    leader = make_stable_leader(1, **LEASE)
    leader.read_index(b"r")  # no round answered yet: no lease
    rd = leader.ready()
    assert rd.read_states == ()
    heartbeats = [m for m in rd.messages if isinstance(m, Heartbeat)]
    assert {m.context for m in heartbeats} == {b"r"}
    leader.advance(rd)
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term, context=b"r"))
    rd = leader.ready()
    assert rd.read_states == (ReadState(index=leader.log.committed, context=b"r"),)
    leader.advance(rd)


def test_an_answer_to_a_round_not_yet_sent_is_refused() -> None:
    """A response may not stretch the lease: its ``sent_tick`` must be a tick we reached."""
    leader = make_stable_leader(1, **LEASE)
    with pytest.raises(InvalidMessage, match="sent at tick 5"):
        leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term, sent_tick=5))


def test_with_lease_reads_a_restarted_node_honours_the_lease_it_may_have_granted() -> None:
    """A follower that answered a round just before it crashed must not help elect another
    leader before that lease ran out: a new kernel refuses disruptive votes for an election
    timeout. Without lease reads it does not wait (the classic behaviour)."""
    request = VoteRequest(src=3, dst=1, term=3, last_index=5, last_term=2)
    fresh = make_node(1, term=2, **LEASE)
    drain(fresh)
    fresh.step(request)
    assert drain(fresh) == [] and fresh.term == 2
    for _ in range(LEASE["election_tick"]):
        fresh.step(Heartbeat(src=2, dst=1, term=1))  # stale: keeps nothing alive
        fresh.tick()
        if fresh.role is not Role.FOLLOWER:
            break
    drain(fresh)
    fresh.step(request)
    assert fresh.term == 3
    classic = make_node(1, term=2)
    drain(classic)
    classic.step(request)
    assert classic.term == 3


# == item 2: a transfer ends the lease for the term ============================================


def test_transfer_ends_lease_reads_for_the_rest_of_the_term() -> None:
    """Issue 14 item 2: TimeoutNow lets the target campaign past the followers' lease, so
    the old leader must not answer a lease read at its old index after starting one."""
    c = _lease_cluster()
    c.tick(1)
    c.stabilize()  # a round answered by all: the lease holds
    c.node(1).read_index(b"before")
    c.process_ready(1)
    assert [rs.context for rs in c.records[1].read_states] == [b"before"]
    c.node(1).transfer_leader(2)
    c.process_ready(1)
    assert any(isinstance(m, TimeoutNow) for m in c.network.queue)
    c.deliver(2)
    c.isolate(1)
    c.stabilize([2, 3])
    assert c.node(2).role is Role.LEADER
    c.propose(2, b"x=2")
    c.stabilize([2, 3])
    assert c.node(2).log.committed > c.node(1).log.committed
    # Node 1 has not heard of it yet and still thinks it leads, within its lease.
    assert c.node(1).role is Role.LEADER
    c.node(1).read_index(b"after")
    c.process_ready(1)
    assert [rs.context for rs in c.records[1].read_states] == [b"before"]


# == item 3: a conf change from an outstanding Ready under a newer snapshot ====================


def _conf(change: ConfChangeType, node: int) -> bytes:
    return encode_conf_change(ConfChange(type=change, node_id=node))


def test_conf_change_in_an_outstanding_ready_is_not_reapplied_over_a_newer_snapshot() -> None:
    """Issue 14 item 3 (etcd#11510, TiKV#6344): a Ready carries "add learner 4"; before
    ``advance()`` an InstallSnapshot at index 20 with no learners is stepped. The snapshot's
    membership is newer: learner 4 must not come back."""
    node = make_node(2, log=[2], term=2, commit=1)
    drain(node)
    learner = Entry(2, 3, EntryKind.CONF_CHANGE, _conf(ConfChangeType.ADD_LEARNER, 4))
    node.step(
        AppendEntries(src=1, dst=2, term=2, prev_index=2, prev_term=2, entries=(learner,), commit=3)
    )
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [2, 3]
    snap = Snapshot(meta=SnapshotMeta(index=20, term=2, conf_state=ConfState(voters=(1, 2, 3))))
    node.step(InstallSnapshot(src=1, dst=2, term=2, snapshot=snap))  # between ready/advance
    node.advance(rd)
    drain(node)
    assert node.conf_state == ConfState(voters=(1, 2, 3))
    assert node.status().applied == 20


# == item 4: the newest pending read rides on every heartbeat ==================================


def test_read_whose_round_was_lost_is_confirmed_by_the_next_heartbeat() -> None:
    """Issue 14 item 4: regular heartbeats carry the newest pending read's context, so a
    read whose own round was lost does not wait for another read or a leader change."""
    leader = make_stable_leader(1)
    leader.read_index(b"r")
    drain(leader)  # its round is lost
    for _ in range(leader.config.heartbeat_tick):
        leader.tick()
    heartbeats = [m for m in drain(leader) if isinstance(m, Heartbeat)]
    assert heartbeats and {m.context for m in heartbeats} == {b"r"}
    for hb in heartbeats:
        leader.step(
            HeartbeatResponse(
                src=hb.dst, dst=1, term=hb.term, context=hb.context, sent_tick=hb.sent_tick
            )
        )
    rd = leader.ready()
    assert rd.read_states == (ReadState(index=leader.log.committed, context=b"r"),)
    leader.advance(rd)


# == item 5: the campaign guard (etcd-io/raft#456) =============================================


def _node_from_storage(
    nid: int, *, snapshot_at: int, conf: ConfState, entries: list[Entry], **config: object
) -> RawNode:
    meta = SnapshotMeta(index=snapshot_at, term=1, conf_state=conf)
    return RawNode(
        RaftConfig(id=nid, **config),  # type: ignore[arg-type]
        rng=random.Random(nid),
        hard_state=HardState(term=1, vote=0, commit=10),
        entries=entries,
        snapshot=Snapshot(meta=meta),
    )


def _pump(nodes: dict[int, RawNode], cut: set[frozenset[int]], rounds: int = 50) -> None:
    """One Ready per node per round (a node applies at its own pace), then deliver."""
    for _ in range(rounds):
        sent: list[Message] = []
        busy = False
        for node in nodes.values():
            if node.has_ready():
                busy = True
                rd = node.ready()
                sent.extend(rd.messages)
                sent.extend(rd.persisted_messages)
                node.advance(rd)
        if not busy:
            return
        for msg in sent:
            if frozenset((msg.src, msg.dst)) not in cut:
                nodes[msg.dst].step(msg)


def test_campaign_guard_a_node_with_unapplied_conf_changes_does_not_campaign() -> None:
    """Issue 14 item 5, the etcd-io/raft#456 shape. Membership went {1,2,3} -> +4 -> +5,
    committed at 9 and 10. Nodes 1, 4, 5 applied it; nodes 2 and 3 restarted and apply one
    entry per Ready (apply lag), so they still count votes with {1,2,3}. Split {2,3} from
    {1,4,5}: 4 wins with 3 of 5. Were 2 to campaign now, it would win with 2 of 3 in the
    same term: two leaders. The guard keeps it from campaigning until it applied 10."""
    c1, c3 = ConfState(voters=(1, 2, 3)), ConfState(voters=(1, 2, 3, 4, 5))
    lagging = [Entry(1, i, EntryKind.NORMAL, b"w") for i in range(4, 9)] + [
        Entry(1, 9, EntryKind.CONF_CHANGE, _conf(ConfChangeType.ADD_VOTER, 4)),
        Entry(1, 10, EntryKind.CONF_CHANGE, _conf(ConfChangeType.ADD_VOTER, 5)),
    ]
    nodes = {
        n: _node_from_storage(n, snapshot_at=3, conf=c1, entries=lagging, max_committed_per_ready=1)
        for n in (2, 3)
    }
    nodes.update({n: _node_from_storage(n, snapshot_at=10, conf=c3, entries=[]) for n in (1, 4, 5)})
    cut = {frozenset((a, b)) for a in (2, 3) for b in (1, 4, 5)}
    nodes[4].campaign()
    nodes[2].campaign()
    _pump(nodes, cut)
    leaders = {(n.term, n.id) for n in nodes.values() if n.role is Role.LEADER}
    assert (2, 4) in leaders
    assert len({term for term, _ in leaders}) == len(leaders), f"two leaders: {leaders}"
    assert nodes[2].role is Role.FOLLOWER and nodes[2].conf_state == c3


# == item 6: what pre-vote alone does ==========================================================


def test_pre_vote_without_check_quorum_lets_a_rejoining_node_depose_the_leader() -> None:
    """Documented limit (as in etcd): pre-vote only asks whether the node *could* win. With
    check-quorum off, followers have no lease to refuse it, so a node that rejoins with a
    log as up to date as theirs wins the pre-vote and deposes a healthy leader. Pre-vote
    with check-quorum (the default) refuses it (tests/core/test_kernel_elections.py)."""
    c = Cluster(seed=3, pre_vote=True, check_quorum=False)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.isolate(3)
    c.tick_election(3)
    c.stabilize()
    c.heal()
    c.tick_election(3)
    c.stabilize()
    assert c.node(3).role is Role.LEADER and c.node(1).role is Role.FOLLOWER


def test_leader_counts_heartbeat_answers_only_from_its_term() -> None:
    """The lease is per term: a new leader starts with no answered round."""
    leader = make_leader(1, **LEASE)
    ack(leader, 2, leader.log.last_index())
    drain(leader)
    assert not leader._in_lease()


# == found by the simulator sweep: a removed leader hands over only to a caught-up voter =======


def test_a_removed_leader_stays_until_a_voter_can_be_elected() -> None:
    """Simulator sweep seeds 6452 and 10598. Leader 2 of {1, 2} removes itself and appends
    one more entry; node 1 stores the removal but never hears that it committed, nor gets
    the last entry. Had node 2 stepped down on applying the removal (as it did), node 1
    would still count node 2's vote, which node 2 refuses while its log is longer: no
    leader, ever. Node 2 instead stays leader, brings node 1 up to date, then hands over."""
    c = Cluster(seed=3, election_tick=10, heartbeat_tick=1)
    c.add_nodes(2)
    c.stabilize()
    c.elect(2)
    c.propose(2, b"x=1")
    c.stabilize()
    removal = c.node(2).propose_conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id=2))
    c.process_ready(2)
    c.deliver(1)
    c.process_ready(1)
    c.deliver(2)  # node 1 stored and acknowledged the removal: it commits on node 2
    assert c.node(2).log.committed == removal
    assert c.node(1).log.committed < removal
    c.propose(2, b"x=2")
    c.process_ready(2)  # node 2 applies its removal; its append of x=2 (and commit) is lost
    c.network.take()
    assert c.node(2).conf_state.voters == (1,)
    assert c.node(2).log.last_index() > c.node(1).log.last_index()
    for _ in range(10 * 10):
        for n in c.ids:
            c.tick(n)
        c.stabilize()
        if c.node(1).role is Role.LEADER:
            break
    assert c.node(1).role is Role.LEADER, c.node(1).status()
    assert c.node(2).role is Role.FOLLOWER
    assert c.state(1)[-1:] == [b"x=2"]
    assert c.node(1).conf_state.voters == (1,)


# == found by the simulator sweep: a write torn between its entries and its hard state ========


def test_restart_after_a_torn_write_takes_the_term_of_its_last_entry() -> None:
    """Simulator sweep seed 53126. A follower at term 4 got entries of term 5 from the
    leader; its write (entries, then the hard state with term 5) was torn by a crash after
    the entries. Restarted at term 4 with a last entry of term 5, it campaigned with a
    VoteRequest that every peer refused as impossible (a last log term past the request's
    term), and so could never be elected. It now starts at the term of its last entry,
    with no vote in it, and stores that at once."""
    node = make_node(2, log=[2, 5], term=4, vote=3)
    assert (node.term, node.vote) == (5, 0)
    rd = node.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 5 and rd.must_sync
    node.advance(rd)
    node.campaign()
    requests = [m for m in drain(node) if isinstance(m, VoteRequest)]
    assert requests and all(m.last_term <= m.term for m in requests)
    peer = make_node(1, log=[2], term=4)
    drain(peer)
    peer.step(requests[0])  # accepted: before, InvalidMessage ("impossible for term ...")
