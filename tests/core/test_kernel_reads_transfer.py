"""Linearizable reads (dissertation D §6.4 ReadIndex) and leadership transfer (D §3.10)."""

from __future__ import annotations

import pytest
from kernel_harness import Cluster, ack, drain, fingerprint, make_leader, make_node

from framework.core import (
    Heartbeat,
    HeartbeatResponse,
    ProposalRejected,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Role,
    TimeoutNow,
    TransferInProgress,
    VoteRequest,
)

# == ReadIndex (D §6.4) ========================================================================


def _heartbeats(msgs: list[object]) -> list[Heartbeat]:
    return [m for m in msgs if isinstance(m, Heartbeat)]


def _read_states(node: object) -> list[ReadState]:
    out: list[ReadState] = []
    while node.has_ready():  # type: ignore[attr-defined]
        rd = node.ready()  # type: ignore[attr-defined]
        out.extend(rd.read_states)
        node.advance(rd)  # type: ignore[attr-defined]
    return out


def test_6_4_new_leader_serves_no_read_before_committing_an_entry_of_its_term() -> None:
    """D §6.4 step 1: "If the leader has not yet marked an entry from its current term
    committed, it waits until it has done so.\""""
    leader = make_leader(1)
    leader.read_index(b"r")
    rd = leader.ready()
    assert rd.read_states == () and _heartbeats(list(rd.messages)) == []
    leader.advance(rd)
    noop = leader.log.last_index()
    ack(leader, 2, noop)
    msgs = drain(leader)
    beats = _heartbeats(msgs)
    assert {m.dst for m in beats} == {2, 3} and {m.context for m in beats} == {b"r"}


def test_6_4_read_released_only_after_a_heartbeat_quorum() -> None:
    """D §6.4 steps 2-3: record the commit index as the read index, then confirm
    leadership with a round of heartbeats to a majority before serving."""
    leader = make_leader(1, voters=(1, 2, 3, 4, 5))
    noop = leader.log.last_index()
    for peer in (2, 3):
        ack(leader, peer, noop)
    drain(leader)
    leader.read_index(b"r")
    drain(leader)
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term, context=b"r"))
    assert _read_states(leader) == []  # 2 of 5
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term, context=b"r"))
    assert _read_states(leader) == []  # the same voter twice is still 2 of 5
    leader.step(HeartbeatResponse(src=3, dst=1, term=leader.term, context=b"r"))
    assert _read_states(leader) == [ReadState(index=noop, context=b"r")]


def test_6_4_read_index_is_the_commit_index_when_the_read_arrived() -> None:
    """Later commits do not move a pending read's index (it is already linearizable)."""
    leader = make_leader(1)
    noop = leader.log.last_index()
    ack(leader, 2, noop)
    drain(leader)
    leader.read_index(b"r")
    drain(leader)
    index = leader.propose(b"x")
    drain(leader)
    ack(leader, 2, index)
    assert leader.log.committed == index
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term, context=b"r"))
    assert _read_states(leader) == [ReadState(index=noop, context=b"r")]


def test_6_4_a_quorum_for_a_later_read_confirms_earlier_ones() -> None:
    leader = make_leader(1)
    ack(leader, 2, leader.log.last_index())
    drain(leader)
    leader.read_index(b"r1")
    leader.read_index(b"r2")
    drain(leader)
    leader.step(HeartbeatResponse(src=3, dst=1, term=leader.term, context=b"r2"))
    assert [rs.context for rs in _read_states(leader)] == [b"r1", b"r2"]


def test_6_4_learner_acknowledgements_do_not_confirm_a_read() -> None:
    leader = make_leader(1, voters=(1, 2, 3), learners=(4,))
    ack(leader, 2, leader.log.last_index())
    drain(leader)
    leader.read_index(b"r")
    drain(leader)
    leader.step(HeartbeatResponse(src=4, dst=1, term=leader.term, context=b"r"))
    assert _read_states(leader) == []


def test_6_4_single_voter_serves_reads_at_once() -> None:
    node = make_node(1, voters=(1,))
    drain(node)
    node.campaign()
    drain(node)
    node.read_index(b"r")
    assert _read_states(node) == [ReadState(index=node.log.committed, context=b"r")]


def test_6_4_follower_forwards_the_read_and_gets_the_leaders_index() -> None:
    c = Cluster(seed=41)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.propose(1, b"x")
    c.stabilize()
    c.node(3).read_index(b"f")
    c.stabilize()
    assert c.records[3].read_states == [ReadState(index=c.node(1).log.committed, context=b"f")]


def test_6_4_read_dropped_when_no_leader_is_known() -> None:
    node = make_node(1)
    drain(node)
    node.read_index(b"r")
    rd = node.ready()
    assert rd.dropped_reads == (b"r",) and rd.read_states == () and rd.persisted_messages == ()
    node.advance(rd)


def test_6_4_reads_dropped_when_the_leader_steps_down() -> None:
    leader = make_leader(1)
    leader.read_index(b"waiting-commit")
    ack(leader, 2, leader.log.last_index())
    drain(leader)
    leader.read_index(b"waiting-quorum")
    drain(leader)
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term + 1))
    rd = leader.ready()
    assert leader.role is Role.FOLLOWER
    assert rd.dropped_reads == (b"waiting-commit", b"waiting-quorum")
    assert rd.read_states == ()
    leader.advance(rd)


def test_6_4_read_waiting_for_the_first_commit_is_dropped_on_step_down() -> None:
    leader = make_leader(1)
    leader.read_index(b"waiting-commit")
    drain(leader)
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term + 1))
    rd = leader.ready()
    assert rd.dropped_reads == (b"waiting-commit",)
    leader.advance(rd)


def test_6_4_follower_answers_a_misrouted_read_with_index_zero() -> None:
    node = make_node(2, term=2)
    drain(node)
    node.step(ReadIndexRequest(src=3, dst=2, term=2, context=b"r"))
    assert drain(node) == [ReadIndexResponse(src=2, dst=3, term=2, context=b"r", index=0)]


def test_6_4_index_zero_answer_drops_the_read_at_the_follower() -> None:
    node = make_node(2, term=2)
    drain(node)
    node.step(ReadIndexResponse(src=1, dst=2, term=2, context=b"r", index=0))
    rd = node.ready()
    assert rd.dropped_reads == (b"r",)
    node.advance(rd)


def test_lease_reads_are_served_without_a_heartbeat_round() -> None:
    """D §6.4.1 (opt-in): once a majority answered a heartbeat round, the leader answers
    reads from its lease until that round's send tick plus the election timeout, less the
    drift bound; then it falls back to a ReadIndex round."""
    leader = make_leader(1, lease_reads=True, election_tick=10, lease_drift_ticks=2)
    ack(leader, 2, leader.log.last_index())
    drain(leader)
    leader.tick()  # heartbeat_tick=1: one round
    (round_,) = {m.sent_tick for m in _heartbeats(drain(leader))}
    leader.step(HeartbeatResponse(src=2, dst=1, term=leader.term, sent_tick=round_))
    drain(leader)
    for _ in range(round_ + 10 - 2 - leader.clock - 1):
        leader.tick()
    drain(leader)  # the rounds of these ticks go unanswered
    leader.read_index(b"r")
    rd = leader.ready()
    assert rd.read_states == (ReadState(index=leader.log.committed, context=b"r"),)
    assert _heartbeats(list(rd.messages)) == []
    leader.advance(rd)
    leader.tick()  # the lease from that round has run out
    drain(leader)
    leader.read_index(b"s")
    rd = leader.ready()
    assert rd.read_states == ()
    assert {m.context for m in _heartbeats(list(rd.messages))} == {b"s"}
    leader.advance(rd)


# == leadership transfer (D §3.10) =============================================================


def _cluster(**config: object) -> Cluster:
    c = Cluster(seed=43, **config)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    return c


def test_3_10_transfer_to_an_up_to_date_voter() -> None:
    c = _cluster()
    c.propose(1, b"x")
    c.stabilize()
    term = c.node(1).term
    c.node(1).transfer_leader(3)
    c.stabilize()
    assert c.node(3).role is Role.LEADER and c.node(3).term == term + 1
    assert c.node(1).role is Role.FOLLOWER and c.node(1).leader == 3


def test_3_10_proposals_refused_during_a_transfer() -> None:
    """D §3.10: "the prior leader stops accepting client requests" while transferring."""
    c = _cluster()
    c.cut(1, 3)
    c.propose(1, b"x")
    c.stabilize()
    leader = c.node(1)
    leader.transfer_leader(3)
    before = fingerprint(leader)
    with pytest.raises(TransferInProgress, match="transferring leadership to node 3"):
        leader.propose(b"y")
    assert fingerprint(leader) == before


def test_3_10_timeout_now_only_once_the_target_is_caught_up() -> None:
    """D §3.10: the leader "transfers its log entries to the target server", then sends
    TimeoutNow."""
    leader = make_leader(1)
    noop = leader.log.last_index()
    ack(leader, 2, noop)
    ack(leader, 3, noop - 1)
    drain(leader)
    leader.transfer_leader(3)
    assert [m for m in drain(leader) if isinstance(m, TimeoutNow)] == []
    ack(leader, 3, noop)
    assert [m.dst for m in drain(leader) if isinstance(m, TimeoutNow)] == [3]


def test_3_10_transfer_catches_up_a_target_whose_appends_were_lost() -> None:
    """The leader brings the target up to date at once, even when what it streamed to it
    was lost (no heartbeat round needed to notice)."""
    c = _cluster()
    c.cut(1, 3)
    c.propose(1, b"x")
    c.stabilize()
    c.heal()
    c.node(1).transfer_leader(3)
    c.stabilize()  # no ticks
    assert c.node(3).role is Role.LEADER
    assert c.state(3) == [b"x"]


def test_3_10_transfer_times_out_after_an_election_timeout() -> None:
    """D §3.10: "If the transfer does not complete within one election timeout, the
    leader aborts the transfer and resumes accepting client requests.\""""
    c = _cluster(election_tick=10)
    c.isolate(3)
    leader = c.node(1)
    leader.transfer_leader(3)
    for _ in range(9):
        leader.tick()
        with pytest.raises(TransferInProgress):
            leader.propose(b"x")
    leader.tick()
    assert leader.status().transferee == 0
    leader.propose(b"x")
    assert leader.role is Role.LEADER


def test_3_10_target_campaigns_at_once_without_prevote_and_voters_ignore_the_lease() -> None:
    node = make_node(3, term=2)
    drain(node)
    node.step(Heartbeat(src=1, dst=3, term=2, commit=1))
    drain(node)
    node.step(TimeoutNow(src=1, dst=3, term=2))
    reqs = [m for m in drain(node) if isinstance(m, VoteRequest)]
    assert node.role is Role.CANDIDATE and node.term == 3
    assert {(m.dst, m.pre_vote, m.transfer) for m in reqs} == {(1, False, True), (2, False, True)}


@pytest.mark.parametrize(
    ("target", "error"),
    [(4, "not a voter"), (9, "not a voter")],
)
def test_3_10_transfer_only_to_a_voter(target: int, error: str) -> None:
    leader = make_leader(1, voters=(1, 2, 3), learners=(4,))
    with pytest.raises(ProposalRejected, match=error):
        leader.transfer_leader(target)
    assert leader.status().transferee == 0


def test_3_10_transfer_to_self_is_a_no_op_and_cancels() -> None:
    leader = make_leader(1)
    leader.transfer_leader(2)
    leader.transfer_leader(1)
    assert leader.status().transferee == 0
    leader.propose(b"x")


def test_3_10_transfer_on_a_follower_raises_not_leader() -> None:
    node = make_node(2)
    drain(node)
    with pytest.raises(ProposalRejected, match="not the leader"):
        node.transfer_leader(3)
