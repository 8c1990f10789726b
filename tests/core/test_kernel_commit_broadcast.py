"""``broadcast_commit``: whether a leader tells its followers of a commit at once (an empty
append, etcd-raft's way) or lets the next append or heartbeat carry it (hashicorp/raft's).

Off, the followers still learn every commit: from the next append, or from a heartbeat
within ``heartbeat_tick``; a commit that covers a membership change, and a read a lease
releases to a follower, are still sent at once."""

from __future__ import annotations

from kernel_harness import Cluster, ack, drain, make_leader, make_stable_leader

from framework.core import (
    AppendEntries,
    ConfChange,
    ConfChangeType,
    Heartbeat,
    HeartbeatResponse,
    Message,
    RaftConfig,
    ReadIndexRequest,
    ReadIndexResponse,
)


def _appends(msgs: list[Message], dst: int | None = None) -> list[AppendEntries]:
    return [m for m in msgs if isinstance(m, AppendEntries) and (dst is None or m.dst == dst)]


def test_the_kernel_broadcasts_every_commit_by_default_as_etcd_raft() -> None:
    assert RaftConfig(id=1).broadcast_commit is True
    leader = make_stable_leader(1)
    index = leader.propose(b"x")
    drain(leader)
    ack(leader, 2, index)
    sent = _appends(drain(leader))
    assert {(m.dst, m.entries, m.commit) for m in sent} == {(2, (), index), (3, (), index)}


def test_without_broadcast_commit_a_commit_sends_nothing_and_the_next_heartbeat_carries_it() -> (
    None
):
    leader = make_stable_leader(1, broadcast_commit=False)
    index = leader.propose(b"x")
    assert {m.dst for m in _appends(drain(leader))} == {2, 3}
    ack(leader, 2, index)
    assert leader.log.committed == index
    assert drain(leader) == []  # no empty append, to either follower
    ack(leader, 3, index)
    assert drain(leader) == []
    leader.tick()  # heartbeat_tick=1
    beats = {m.dst: m.commit for m in drain(leader) if isinstance(m, Heartbeat)}
    assert beats == {2: index, 3: index}


def test_without_broadcast_commit_the_next_append_carries_the_commit() -> None:
    leader = make_stable_leader(1, broadcast_commit=False)
    first = leader.propose(b"x")
    drain(leader)
    ack(leader, 2, first)
    drain(leader)
    second = leader.propose(b"y")
    sent = _appends(drain(leader))
    assert {(m.dst, m.commit) for m in sent} == {(2, first), (3, first)}
    assert all(m.entries[-1].index == second for m in sent)


def test_without_broadcast_commit_a_membership_change_that_commits_is_sent_at_once() -> None:
    """The voters must learn that a change committed to elect the next leader without the
    nodes it removed (``_successor_after_removal``): such a commit is not left to wait."""
    leader = make_stable_leader(1, voters=(1, 2, 3, 4), broadcast_commit=False)
    index = leader.propose_conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id=4))
    drain(leader)
    ack(leader, 2, index)
    ack(leader, 3, index)
    sent = _appends(drain(leader))
    assert {m.dst for m in sent if m.commit == index} == {2, 3, 4}


def test_without_broadcast_commit_a_read_a_lease_releases_to_a_follower_carries_the_commit() -> (
    None
):
    """A follower serves a read once it has applied the index the leader gives: the leader
    sends it the commit index with the answer, not at the next heartbeat."""
    leader = make_leader(
        1, lease_reads=True, election_tick=10, lease_drift_ticks=2, broadcast_commit=False
    )
    noop = leader.log.last_index()
    ack(leader, 2, noop)
    ack(leader, 3, noop)
    drain(leader)
    index = leader.propose(b"x")
    drain(leader)
    ack(leader, 3, index)  # committed; follower 2 has not been told
    drain(leader)
    leader.tick()
    (round_,) = {m.sent_tick for m in drain(leader) if isinstance(m, Heartbeat)}
    leader.step(HeartbeatResponse(src=3, dst=1, term=leader.term, sent_tick=round_))
    drain(leader)  # now in the lease
    ack(leader, 2, index)  # follower 2 stores the entry; still no word of the commit
    assert drain(leader) == []
    leader.step(ReadIndexRequest(src=2, dst=1, term=leader.term, context=b"r"))
    sent = drain(leader)
    answers = [m for m in sent if isinstance(m, ReadIndexResponse)]
    assert [(m.dst, m.index) for m in answers] == [(2, index)]
    assert [(m.entries, m.commit) for m in _appends(sent, dst=2)] == [((), index)]


def test_without_broadcast_commit_every_follower_applies_every_entry_within_a_heartbeat() -> None:
    """Liveness in a cluster: once writes stop, one heartbeat brings every follower's
    commit index, and so what it applies, to the leader's."""
    c = Cluster(seed=7, broadcast_commit=False)
    c.add_nodes(3)
    c.stabilize()
    c.tick_election(1)
    c.stabilize()
    leader = c.leader()
    assert leader
    for i in range(5):
        c.node(leader).propose(f"w{i}".encode())
        c.stabilize()
    committed = c.node(leader).log.committed
    behind = [n for n in c.ids if c.node(n).log.committed < committed]
    assert behind  # the last commit waits for a heartbeat on at least one follower
    c.tick_heartbeat(leader)
    c.stabilize()
    assert {n: c.node(n).log.applied for n in c.ids} == {n: committed for n in c.ids}
    assert all(c.records[n].state == c.records[leader].state for n in c.ids)
