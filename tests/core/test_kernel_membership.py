"""Membership changes: dissertation (D) §4.1 single-server changes, §4.2.1 learners
(non-voting members that catch up first), §4.2.2 removing the leader."""

from __future__ import annotations

import random

import pytest
from kernel_harness import Cluster, ack, drain, fingerprint, make_leader, make_stable_leader

from framework.core import (
    AppendEntries,
    ConfChange,
    ConfChangeRejected,
    ConfChangeType,
    ConfState,
    Entry,
    HardState,
    RaftConfig,
    RawNode,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    VoteRequest,
    VoteResponse,
    encode_conf_change,
)
from framework.core.entries import EntryKind


def _cluster(n: int = 3, **config: object) -> Cluster:
    c = Cluster(seed=21, **config)
    c.add_nodes(n)
    c.stabilize()
    c.elect(1)
    return c


def _change(kind: str, node: int) -> ConfChange:
    return ConfChange(type=ConfChangeType(kind), node_id=node)


def _add_learner(c: Cluster, nid: int) -> None:
    c.add_nodes(1)
    assert c.ids[-1] == nid
    c.node(1).propose_conf_change(_change("add_learner", nid))
    c.stabilize()
    c.tick_heartbeat(1)
    c.stabilize()


def test_4_2_1_added_learner_catches_up_without_changing_the_quorum() -> None:
    """D §4.2.1: a new server joins "as a non-voting member"; the leader replicates to it
    but it counts neither for elections nor for commitment."""
    c = _cluster()
    c.propose(1, b"a")
    c.stabilize()
    _add_learner(c, 4)
    assert c.node(1).conf_state.voters == (1, 2, 3)
    assert c.node(1).conf_state.learners == (4,)
    assert c.state(4) == c.state(1) == [b"a"]
    # The learner learned the membership from the log, including the bootstrap voters.
    assert c.node(4).conf_state == c.node(1).conf_state
    # Leader + learner are 2 of 4 members but 1 of 3 voters: nothing commits.
    c.isolate(2)
    c.isolate(3)
    index = c.propose(1, b"b")
    c.stabilize()
    assert c.node(4).log.last_index() == index
    assert c.node(1).log.committed < index
    c.heal()
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.node(1).log.committed == index


def test_4_2_1_new_member_is_contacted_as_soon_as_the_change_applies() -> None:
    """The leader starts replicating to a new member in the Ready after it applies the
    change, without waiting for a heartbeat round (the member's log end is unknown, so
    the first append is an empty probe)."""
    leader = make_stable_leader(1)
    index = leader.propose_conf_change(_change("add_learner", 4))
    drain(leader)
    ack(leader, 2, index)
    out = drain(leader)
    assert leader.conf_state.learners == (4,)
    probes = [m for m in out if isinstance(m, AppendEntries) and m.dst == 4]
    assert len(probes) == 1 and probes[0].prev_index == leader.log.last_index()


def test_4_2_1_learner_acknowledgements_never_commit() -> None:
    """Two learners plus the leader are a majority of the five members but one of three
    voters: nothing commits until a voter acknowledges."""
    leader = make_stable_leader(1, voters=(1, 2, 3), learners=(4, 5))
    index = leader.propose(b"x")
    drain(leader)
    ack(leader, 4, index)
    ack(leader, 5, index)
    assert leader.log.committed < index
    ack(leader, 2, index)
    assert leader.log.committed == index


def test_4_2_1_learner_neither_campaigns_nor_votes_count() -> None:
    c = _cluster()
    _add_learner(c, 4)
    c.isolate(1)
    for _ in range(50):
        c.tick(4)
        c.stabilize()
    assert c.node(4).role is Role.FOLLOWER
    assert c.node(4).term == c.node(1).term


def test_4_2_1_promotion_refused_until_the_learner_holds_every_committed_entry() -> None:
    c = _cluster()
    _add_learner(c, 4)
    c.isolate(4)
    c.propose(1, b"while-away")
    c.stabilize()
    leader = c.node(1)
    before = fingerprint(leader)
    with pytest.raises(ConfChangeRejected, match="learner 4 has not caught up"):
        leader.propose_conf_change(_change("promote", 4))
    assert fingerprint(leader) == before
    c.heal()
    c.tick_heartbeat(1)
    c.stabilize()
    leader.propose_conf_change(_change("promote", 4))
    c.stabilize()
    for nid in c.ids:
        assert c.node(nid).conf_state.voters == (1, 2, 3, 4)
        assert c.node(nid).conf_state.learners == ()
    # Now 4 counts: with 2 and 3 cut off, leader + 4 are 2 of 4 voters, not a majority.
    c.isolate(2)
    c.isolate(3)
    index = c.propose(1, b"x")
    c.stabilize()
    assert c.node(1).log.committed < index
    c.heal()
    c.isolate(3)
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.node(1).log.committed == index  # 1, 2, 4: 3 of 4


def test_4_1_only_one_change_pending_at_a_time() -> None:
    """D §4.1: "the leader ... does not begin a new change until the previous one has been
    committed" (here: applied, since a change takes effect when applied)."""
    c = _cluster()
    c.add_nodes(2)
    leader = c.node(1)
    leader.propose_conf_change(_change("add_learner", 4))
    with pytest.raises(ConfChangeRejected, match="one change at a time"):
        leader.propose_conf_change(_change("add_learner", 5))
    c.stabilize()
    leader.propose_conf_change(_change("add_learner", 5))
    c.stabilize()
    assert leader.conf_state.learners == (4, 5)


def test_new_leader_refuses_changes_until_earlier_entries_are_applied() -> None:
    """A new leader may hold an uncommitted change from an earlier term in its log; it
    refuses a new change until everything before its term is applied."""
    leader = make_leader(1, log=[1, 1], commit=1)
    with pytest.raises(ConfChangeRejected, match="not applied yet"):
        leader.propose_conf_change(_change("add_learner", 4))
    last = leader.log.last_index()
    ack(leader, 2, last)
    drain(leader)
    leader.propose_conf_change(_change("add_learner", 4))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("add_voter", 2), "already a voter"),
        (("add_learner", 3), "already a member"),
        (("promote", 2), "not a learner"),
        (("promote", 9), "not a learner"),
        (("remove", 9), "not a member"),
        (("add_voter", 0), "positive"),
    ],
)
def test_invalid_changes_are_rejected_naming_the_problem(
    change: tuple[str, int], fragment: str
) -> None:
    c = _cluster()
    leader = c.node(1)
    before = fingerprint(leader)
    with pytest.raises(ConfChangeRejected, match=fragment):
        leader.propose_conf_change(_change(*change))
    assert fingerprint(leader) == before


def test_only_voter_cannot_be_removed() -> None:
    c = Cluster(seed=1)
    c.add_nodes(1)
    c.stabilize()
    c.elect(1)
    with pytest.raises(ConfChangeRejected, match="only voter"):
        c.node(1).propose_conf_change(_change("remove", 1))


def test_removed_follower_leaves_the_quorum() -> None:
    c = _cluster()
    c.node(1).propose_conf_change(_change("remove", 3))
    c.stabilize()
    assert c.node(1).conf_state.voters == (1, 2)
    assert 3 not in c.node(1).progress
    # Node 3 is gone: 1 and 2 commit alone; node 3 hears nothing more.
    last3 = c.node(3).log.last_index()
    index = c.propose(1, b"x")
    c.stabilize()
    assert c.node(1).log.committed == index
    assert c.node(3).log.last_index() == last3
    # A removed node does not campaign: it is no longer a voter.
    for _ in range(50):
        c.tick(3)
    c.stabilize()
    assert c.node(3).role is Role.FOLLOWER and c.node(1).role is Role.LEADER


def test_4_2_2_removed_leader_steps_down_and_another_node_takes_over() -> None:
    """D §4.2.2: the leader "steps down once the Cnew entry is committed"; here it also
    hands over with TimeoutNow so the cluster does not wait for an election timeout."""
    c = _cluster()
    c.propose(1, b"before")
    c.stabilize()
    index = c.node(1).propose_conf_change(_change("remove", 1))
    c.stabilize()
    assert c.node(1).role is Role.FOLLOWER
    assert c.node(1).log.applied >= index
    (new,) = c.leaders()
    assert new in (2, 3)
    assert c.node(new).conf_state.voters == (2, 3)
    c.propose(new, b"after")
    c.stabilize()
    assert c.state(2) == c.state(3) == [b"before", b"after"]
    for _ in range(50):
        c.tick(1)
    assert c.node(1).role is Role.FOLLOWER


def test_4_2_2_removed_leader_without_a_caught_up_successor_is_replaced_by_election() -> None:
    c = _cluster(election_tick=5)
    # Node 3 lags, node 2 is cut off from node 1 right after the removal commits.
    c.cut(1, 3)
    c.node(1).propose_conf_change(_change("remove", 1))
    c.stabilize()
    assert c.node(1).role is Role.FOLLOWER
    c.heal()
    c.isolate(1)
    for _ in range(40):
        for nid in (2, 3):
            c.tick(nid)
        c.stabilize()
        if c.leaders():
            break
    (new,) = c.leaders()
    assert new in (2, 3)
    c.heal()
    c.propose(new, b"x")
    c.stabilize()
    assert c.state(2) == c.state(3) == [b"x"]


def test_add_voter_directly_then_it_votes() -> None:
    c = _cluster()
    c.add_nodes(1)
    c.node(1).propose_conf_change(_change("add_voter", 4))
    c.stabilize()
    c.tick_heartbeat(1)
    c.stabilize()
    assert c.node(4).conf_state.voters == (1, 2, 3, 4)
    assert c.node(4).log.last_index() == c.node(1).log.last_index()


def test_4_2_2_removed_leader_confirms_reads_with_the_new_voters() -> None:
    """A removed leader waiting for its successor to catch up stays leader; its voter set
    is then a single node, but not itself, so a read needs that voter's answer. Before the
    fix it answered reads at once ("a single voter leads alone"), after the successor had
    been elected and had committed: a stale read (simulator sweep, seed 63758)."""
    c = Cluster(seed=21)
    c.add_nodes(2)
    c.stabilize()
    c.elect(1)
    c.propose(1, b"before")
    c.stabilize()
    removal = c.node(1).propose_conf_change(_change("remove", 1))
    c.process_ready(1)
    c.deliver(2)
    c.process_ready(2)
    c.propose(1, b"unacknowledged")  # node 1's log now runs past what node 2 stores
    c.process_ready(1)
    c.network.take(2)  # ... and node 2 never gets it
    c.deliver(1)  # node 2's ack commits the removal
    c.stabilize([1])
    old = c.node(1)
    assert old.log.applied >= removal
    assert old.role is Role.LEADER and old.conf_state.voters == (2,)
    # Node 2 learns the commit from a heartbeat, applies its removal of node 1, and is
    # then cut off from node 1; it wins an election alone and commits.
    c.tick_heartbeat(1)
    c.process_ready(1)
    c.deliver(2)
    c.process_ready(2)
    assert c.node(2).conf_state.voters == (2,)
    c.isolate(1)
    c.stabilize([2])
    c.tick_election(2)
    c.stabilize([2])
    assert c.node(2).role is Role.LEADER
    new_write = c.propose(2, b"after")
    c.stabilize([2])
    assert c.node(2).log.committed >= new_write
    # The old leader, cut off, still believes it leads term 1: a read must not be served
    # from its commit index, which predates node 2's write.
    old.read_index(b"r")
    c.stabilize([1])
    assert c.records[1].read_states == []
    # Healed, node 2's answer (of a higher term) deposes it and the read is dropped.
    c.heal()
    c.stabilize()
    assert c.records[1].read_states == []
    assert c.records[1].dropped_reads == [b"r"]
    assert c.node(1).role is Role.FOLLOWER


def _remove_leader_of_two_with_a_longer_log(c: Cluster) -> int:
    """Leader 1 of {1, 2} commits its own removal while its log runs one entry past node
    2's, and node 2 does not learn that the removal committed. Returns the removal index."""
    c.add_nodes(2)
    c.stabilize()
    c.elect(1)
    removal = c.node(1).propose_conf_change(_change("remove", 1))
    c.process_ready(1)
    c.deliver(2)
    c.process_ready(2)
    c.propose(1, b"unacknowledged")  # node 1's log now runs past node 2's ...
    c.process_ready(1)
    c.network.take(2)  # ... and node 2 never gets it
    c.deliver(1)  # node 2's ack commits the removal
    c.stabilize([1])
    assert c.node(1).log.applied >= removal
    assert c.node(1).conf_state.voters == (2,)
    c.network.take(2)  # the commit index never reaches node 2
    assert c.node(2).log.committed < removal
    return removal


def _tick_until_node_2_leads(c: Cluster) -> None:
    """Tick nodes 1 and 2 (election timeout 5) for up to ten timeouts, until 2 leads."""
    for _ in range(10 * 5):
        c.tick(1)
        c.tick(2)
        c.stabilize()
        if c.node(2).role is Role.LEADER:
            break
    assert c.node(2).role is Role.LEADER


@pytest.mark.parametrize("guarded", [True, False], ids=["pre_vote+check_quorum", "neither"])
def test_voter_left_after_the_leader_of_two_removed_itself_is_elected(guarded: bool) -> None:
    """Node 1 of {1, 2} applied its own removal and lost leadership before node 2 learnt
    that the removal committed (here node 2 times out and campaigns). Node 2 still counts
    node 1's vote, and node 1's log is longer than node 2's (an entry appended while it
    led, never committed). Node 1 must grant it anyway: node 2 holds every committed
    entry, since every quorum since the removal includes it. Refusing left the cluster
    with no electable voter for good (simulator sweep, seed 40 of the membership
    schedule; the mutation check has it as ``removed_node_votes_by_log``)."""
    c = Cluster(seed=21, election_tick=5, pre_vote=guarded, check_quorum=guarded)
    removal = _remove_leader_of_two_with_a_longer_log(c)
    assert c.node(1).log.last_index() > c.node(2).log.last_index()
    c.isolate(2)  # node 1 hands over to nobody; node 2 hears nothing from it
    for _ in range(3 * 5):
        c.tick(1)
        c.tick(2)
        c.stabilize()
    c.heal()
    _tick_until_node_2_leads(c)
    assert c.node(2).log.applied >= removal
    assert c.node(2).conf_state.voters == (2,)
    index = c.propose(2, b"after")
    c.stabilize()
    assert c.node(2).log.committed >= index
    assert c.state(2) == [b"after"]


def test_removed_node_grants_no_log_free_vote_to_anyone_but_the_voter_left() -> None:
    """The exception is for the one voter of the membership it was removed from: a node
    removed from three voters keeps the log check for everyone."""
    c = _cluster()
    c.node(1).propose_conf_change(_change("remove", 3))
    c.stabilize()
    assert c.node(3).conf_state.voters == (1, 2)
    assert not c.node(3)._successor_after_removal(1)
    assert not c.node(3)._successor_after_removal(2)
    c2 = Cluster(seed=21)
    _remove_leader_of_two_with_a_longer_log(c2)
    assert c2.node(1)._successor_after_removal(2)
    assert not c2.node(2)._successor_after_removal(1)


def _commit_reaches_node_2(c: Cluster) -> None:
    """Replicate what leader 1 proposed, commit it, and deliver the commit to node 2 only
    (its next Ready is not yet taken)."""
    c.process_ready(1)
    c.deliver()
    for nid in (2, 3):
        c.process_ready(nid)
    c.deliver(1)
    c.process_ready(1)
    c.tick_heartbeat(1)
    c.process_ready(1)
    c.deliver(2)


def test_a_commit_that_covers_a_membership_change_is_synced_before_it_applies() -> None:
    """A commit index is normally stored unsynced (the leader can tell it again), but once
    it covers a membership change the node acts on that change, and the node that change
    removed may be shut down: a crash that lost the commit would bring the node back with
    the old membership, counting the vote of a node that is gone (simulator sweep, seed
    32055; ``conf_commit_not_synced`` in the mutation check)."""
    c = _cluster()

    def commit_reaches_node_2() -> Ready:
        _commit_reaches_node_2(c)
        rd = c.node(2).ready()
        assert not rd.entries and rd.hard_state is not None and rd.committed_entries
        return rd

    c.node(1).propose_conf_change(_change("add_learner", 4))
    rd = commit_reaches_node_2()
    assert [e.kind for e in rd.committed_entries] == [EntryKind.CONF_CHANGE]
    assert rd.must_sync
    c.node(2).advance(rd)
    c.stabilize()
    # An ordinary commit advance stays unsynced.
    c.propose(1, b"x")
    rd = commit_reaches_node_2()
    assert [e.kind for e in rd.committed_entries] == [EntryKind.NORMAL]
    assert not rd.must_sync


def test_a_membership_change_applied_in_a_later_ready_still_syncs_its_commit() -> None:
    """With few committed entries per Ready, the commit index that covers a change can be
    stored, unsynced, by an earlier Ready than the one that applies the change: that later
    Ready must carry the hard state again, to sync it, before the change is applied."""
    c = _cluster(max_committed_per_ready=1)
    c.propose(1, b"before")
    c.node(1).propose_conf_change(_change("add_learner", 4))
    _commit_reaches_node_2(c)
    node = c.node(2)
    first = node.ready()
    assert [e.kind for e in first.committed_entries] == [EntryKind.NORMAL]
    assert first.hard_state is not None and not first.must_sync
    node.advance(first)
    second = node.ready()
    assert [e.kind for e in second.committed_entries] == [EntryKind.CONF_CHANGE]
    assert second.hard_state == first.hard_state
    assert second.must_sync
    node.advance(second)
    assert node.conf_state.learners == (4,)


def test_a_restarted_node_replaying_its_log_grants_no_log_free_vote() -> None:
    """After a restart the membership is rebuilt entry by entry: with only "add voter 1"
    re-applied, it reads {1}, without this node, which looks like a removal from {1, 2}
    but is none. A vote granted then without the log check elected a leader that lacked a
    committed entry (simulator sweep, seed 101277); only a removal the kernel applied
    counts."""
    bootstrap = [
        Entry(1, i, EntryKind.CONF_CHANGE, encode_conf_change(_change("add_voter", v)))
        for i, v in enumerate((1, 2, 3), start=1)
    ]
    entries = [*bootstrap, Entry(2, 4, EntryKind.NOOP, b""), Entry(2, 5, EntryKind.NORMAL, b"x")]
    node = RawNode(
        RaftConfig(id=2, max_committed_per_ready=1),
        rng=random.Random(2),
        hard_state=HardState(term=2, vote=0, commit=5),
        entries=entries,
    )
    rd = node.ready()
    node.advance(rd)
    assert node.conf_state.voters == (1,)  # mid-replay
    node.step(VoteRequest(src=1, dst=2, term=3, last_index=3, last_term=1))
    (response,) = [m for m in drain(node) if isinstance(m, VoteResponse)]
    assert not response.granted


@pytest.mark.parametrize("guarded", [True, False], ids=["pre_vote+check_quorum", "neither"])
def test_voter_left_is_elected_after_the_removed_node_restarts_from_a_snapshot(
    guarded: bool,
) -> None:
    """As above, but node 1 took a snapshot covering its removal and restarted: the
    removal is no longer an entry it re-applies, only the snapshot's membership {2}. It
    must still grant node 2 its vote; it refused it for its longer log, and no leader
    was ever elected again (simulator sweep, seed 37017)."""
    c = Cluster(seed=21, election_tick=5, pre_vote=guarded, check_quorum=guarded)
    removal = _remove_leader_of_two_with_a_longer_log(c)
    snapshot = c.compact(1)
    assert snapshot.meta.index >= removal and snapshot.meta.conf_state.voters == (2,)
    c.restart(1)
    assert c.node(1).log.last_index() > c.node(2).log.last_index()
    _tick_until_node_2_leads(c)
    assert c.node(2).conf_state.voters == (2,)
    index = c.propose(2, b"after")
    c.stabilize()
    assert c.node(2).log.committed >= index


def test_a_snapshot_inside_the_bootstrap_grants_no_log_free_vote() -> None:
    """A snapshot whose membership excludes this node while its log still holds changes
    after it (here: taken after "add voter 1" of the bootstrap) is no removal: the
    changes re-applied decide, and until then the log check holds (seed 101277's shape,
    from a snapshot)."""
    bootstrap = [
        Entry(1, i, EntryKind.CONF_CHANGE, encode_conf_change(_change("add_voter", v)))
        for i, v in enumerate((1, 2, 3), start=1)
    ]
    meta = SnapshotMeta(index=1, term=1, conf_state=ConfState(voters=(1,)))
    node = RawNode(
        RaftConfig(id=2),
        rng=random.Random(2),
        hard_state=HardState(term=2, vote=0, commit=5),
        entries=[
            *bootstrap[1:],
            Entry(2, 4, EntryKind.NOOP, b""),
            Entry(2, 5, EntryKind.NORMAL, b"x"),
        ],
        snapshot=Snapshot(meta=meta, data=b""),
    )
    assert node.conf_state.voters == (1,)
    node.step(VoteRequest(src=1, dst=2, term=3, last_index=3, last_term=1))
    (response,) = [m for m in drain(node) if isinstance(m, VoteResponse)]
    assert not response.granted
