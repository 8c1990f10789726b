"""Terms and elections: Raft paper (P) §5.1, §5.2, §5.4.1; dissertation (D) §9.6 pre-vote,
§6.2 check-quorum, §4.2.3 disruptive servers."""

from __future__ import annotations

import random

import pytest
from kernel_harness import Cluster, drain, make_leader, make_node

from framework.core import (
    MAX_TERM,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InvalidMessage,
    RaftConfig,
    RawNode,
    ReadIndexRequest,
    Role,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from framework.core.entries import ConfState

# == §5.1 terms ================================================================================


def _higher_term_messages(src: int, dst: int, term: int) -> list[tuple[object, int]]:
    """(message of a later term, the leader the receiver should then know)."""
    snap = Snapshot(meta=SnapshotMeta(index=1, term=1, conf_state=ConfState(voters=(1, 2, 3))))
    return [
        (AppendEntries(src=src, dst=dst, term=term, prev_index=1, prev_term=1), src),
        (Heartbeat(src=src, dst=dst, term=term, commit=0), src),
        (InstallSnapshot(src=src, dst=dst, term=term, snapshot=snap), src),
        (AppendResponse(src=src, dst=dst, term=term, index=0), 0),
        (HeartbeatResponse(src=src, dst=dst, term=term), 0),
        (VoteResponse(src=src, dst=dst, term=term, granted=False), 0),
        (TimeoutNow(src=src, dst=dst, term=term), 0),
        (ReadIndexRequest(src=src, dst=dst, term=term, context=b"c"), 0),
    ]


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize("case", range(8))
def test_5_1_higher_term_makes_any_role_a_follower_of_that_term(role: Role, case: int) -> None:
    """§5.1: "If a server's current term is smaller than the other's, it updates its current
    term to the larger value. If a candidate or leader discovers that its term is out of
    date, it immediately reverts to follower state." """
    if role is Role.LEADER:
        node = make_leader(1, pre_vote=False)
    else:
        node = make_node(1, pre_vote=False, term=3)
        drain(node)
        if role is Role.CANDIDATE:
            node.campaign()
            drain(node)
    assert node.role is role
    term = node.term + 2
    msg, leader = _higher_term_messages(2, 1, term)[case]
    node.step(msg)  # type: ignore[arg-type]
    if isinstance(msg, TimeoutNow):
        # A TimeoutNow of a later term makes it a follower, which then campaigns at once.
        assert node.role is Role.CANDIDATE and node.term == term + 1
        return
    assert node.term == term
    assert node.role is Role.FOLLOWER
    assert node.leader == leader
    assert node.vote == 0
    assert node.ready().hard_state.term == term  # type: ignore[union-attr]


def test_5_1_stale_append_is_rejected_with_our_term_and_leaves_the_log_alone() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the
    request." The answer carries our term so the stale leader steps down."""
    node = make_node(1, log=[2, 3], term=5, commit=3)
    drain(node)
    before = list(node.log.entries)
    node.step(AppendEntries(src=2, dst=1, term=4, prev_index=3, prev_term=3, entries=(), commit=3))
    node.step(Heartbeat(src=2, dst=1, term=4, commit=3))
    out = drain(node)
    assert node.term == 5 and node.role is Role.FOLLOWER and node.leader == 0
    assert node.log.entries == before
    assert out == [
        AppendResponse(src=1, dst=2, term=5, index=0),
        AppendResponse(src=1, dst=2, term=5, index=0),
    ]


def test_5_1_stale_vote_request_gets_no_vote() -> None:
    """§5.1 with §5.2: a vote request from an earlier term is not granted (ignored)."""
    node = make_node(1, term=5)
    drain(node)
    node.step(VoteRequest(src=2, dst=1, term=4, last_index=9, last_term=4))
    assert drain(node) == []
    assert node.vote == 0 and node.term == 5


def test_5_1_stale_pre_vote_is_answered_with_a_rejection_carrying_our_term() -> None:
    node = make_node(1, term=5)
    drain(node)
    node.step(VoteRequest(src=2, dst=1, term=4, last_index=9, last_term=4, pre_vote=True))
    assert drain(node) == [VoteResponse(src=1, dst=2, term=5, granted=False, pre_vote=True)]


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_node_at_the_term_ceiling_stays_a_follower_instead_of_campaigning_past_it(
    pre_vote: bool,
) -> None:
    """A term inflated to MAX_TERM (by a faulty or hostile peer) stops there: the node does
    not send a term its peers must refuse, nor one its store cannot hold."""
    node = make_node(1, term=MAX_TERM, pre_vote=pre_vote)
    drain(node)
    for _ in range(100):
        node.tick()
    assert drain(node) == []
    assert node.term == MAX_TERM and node.role is Role.FOLLOWER


def test_a_node_one_term_below_the_ceiling_still_campaigns_to_it() -> None:
    node = make_node(1, term=MAX_TERM - 1, pre_vote=False)
    drain(node)
    for _ in range(100):
        node.tick()
    assert node.term == MAX_TERM and node.role is Role.CANDIDATE


def test_a_message_with_a_term_past_the_ceiling_is_refused_before_it_changes_anything() -> None:
    node = make_node(1, term=5)
    drain(node)
    with pytest.raises(InvalidMessage, match=f"term={MAX_TERM + 1} exceeds the bound {MAX_TERM}"):
        node.step(Heartbeat(src=2, dst=1, term=MAX_TERM + 1, commit=0))
    assert node.term == 5


def test_5_1_leader_steps_down_on_an_answer_from_a_later_term() -> None:
    leader = make_leader(1)
    term = leader.term
    leader.step(AppendResponse(src=2, dst=1, term=term + 1, index=0))
    assert leader.role is Role.FOLLOWER and leader.term == term + 1
    with pytest.raises(Exception, match="not the leader"):
        leader.propose(b"x")


# == §5.2 leader election ======================================================================


def test_5_2_one_vote_per_term_persisted_before_the_answer() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis." Figure 2: votedFor is persistent state, so the vote is
    in the same Ready's hard state and the answer waits for the write."""
    node = make_node(1, pre_vote=False)
    drain(node)
    node.step(VoteRequest(src=2, dst=1, term=2, last_index=1, last_term=1))
    rd = node.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (2, 2)
    assert rd.must_sync
    assert rd.messages == ()
    assert rd.persisted_messages == (VoteResponse(src=1, dst=2, term=2, granted=True),)
    node.advance(rd)
    # Another candidate of the same term is refused; the first one is re-granted.
    node.step(VoteRequest(src=3, dst=1, term=2, last_index=1, last_term=1))
    node.step(VoteRequest(src=2, dst=1, term=2, last_index=1, last_term=1))
    assert drain(node) == [
        VoteResponse(src=1, dst=3, term=2, granted=False),
        VoteResponse(src=1, dst=2, term=2, granted=True),
    ]
    assert node.vote == 2


def test_5_2_vote_survives_restart() -> None:
    """The vote is durable: a restarted node (hard state vote=2) refuses node 3 in term 2."""
    node = make_node(1, term=2, vote=2, pre_vote=False)
    drain(node)
    node.step(VoteRequest(src=3, dst=1, term=2, last_index=5, last_term=2))
    assert drain(node) == [VoteResponse(src=1, dst=3, term=2, granted=False)]


def test_5_2_candidate_votes_for_itself_and_asks_every_other_voter() -> None:
    node = make_node(1, voters=(1, 2, 3), learners=(4,), pre_vote=False)
    drain(node)
    node.campaign()
    rd = node.ready()
    assert rd.hard_state is not None and (rd.hard_state.term, rd.hard_state.vote) == (2, 1)
    assert {m.dst for m in rd.persisted_messages} == {2, 3}  # not the learner
    assert all(isinstance(m, VoteRequest) and m.term == 2 for m in rd.persisted_messages)


def _campaign_tick(seed: int, election_tick: int) -> int:
    node = RawNode(
        RaftConfig(id=1, election_tick=election_tick),
        rng=random.Random(seed),
        conf_state=ConfState(voters=(1, 2, 3)),
    )
    drain(node)  # apply the bootstrap membership
    for ticks in range(1, 3 * election_tick):
        node.tick()
        if node.role is not Role.FOLLOWER:
            return ticks
    raise AssertionError("never campaigned")


@pytest.mark.parametrize("election_tick", [2, 5, 10])
def test_5_2_randomized_election_timeout_in_election_tick_to_twice(election_tick: int) -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval"; here
    [election_tick, 2 * election_tick), drawn from the injected random.Random only."""
    seen = {_campaign_tick(seed, election_tick) for seed in range(60)}
    assert seen <= set(range(election_tick, 2 * election_tick))
    assert len(seen) > 1, "the timeout is not randomized"
    # Deterministic: the same seed gives the same timeout.
    assert _campaign_tick(7, election_tick) == _campaign_tick(7, election_tick)


def test_5_2_timeout_is_redrawn_for_each_term() -> None:
    """A candidate whose election failed waits a fresh random timeout (no lock-step)."""
    node = make_node(1, pre_vote=False, election_tick=10, seed=3)
    drain(node)
    timeouts = set()
    for _ in range(20):
        node.campaign()
        timeouts.add(node.randomized_election_timeout)
    assert len(timeouts) > 1
    assert timeouts <= set(range(10, 20))


def test_5_2_split_vote_then_a_later_term_elects_one_leader() -> None:
    """§5.2: with a split vote "each candidate will time out and start a new election by
    incrementing its term"; randomized timeouts make the retry converge."""
    c = Cluster(seed=11, pre_vote=False)
    c.add_nodes(4)
    c.stabilize()
    # Node 1 can reach only node 2, node 3 only node 4: two votes each, 3 are needed.
    c.cut(1, 3)
    c.cut(1, 4)
    c.cut(3, 2)
    c.node(1).campaign()
    c.node(3).campaign()
    c.stabilize()
    assert c.node(1).role is Role.CANDIDATE and c.node(3).role is Role.CANDIDATE
    assert c.node(1).term == c.node(3).term == 2
    assert c.leaders() == []
    c.heal()
    for _ in range(200):
        for nid in c.ids:
            c.tick(nid)
        c.stabilize()
        if c.leaders():
            break
    assert len(c.leaders()) == 1
    leader = c.node(c.leaders()[0])
    assert leader.term >= 3
    assert all(c.node(n).term == leader.term for n in c.ids)


def test_5_2_candidate_becomes_follower_on_append_from_winner_of_same_term() -> None:
    """§5.2: "If the leader's term ... is at least as large as the candidate's current term,
    then the candidate recognizes the leader as legitimate and returns to follower"."""
    node = make_node(1, pre_vote=False)
    drain(node)
    node.campaign()
    drain(node)
    node.step(AppendEntries(src=2, dst=1, term=node.term, prev_index=1, prev_term=1))
    assert node.role is Role.FOLLOWER and node.leader == 2


def test_5_2_candidate_gives_up_when_a_majority_refuses() -> None:
    node = make_node(1, voters=(1, 2, 3), pre_vote=False)
    drain(node)
    node.campaign()
    drain(node)
    node.step(VoteResponse(src=2, dst=1, term=2, granted=False))
    assert node.role is Role.CANDIDATE  # node 3 could still make it 2 of 3
    node.step(VoteResponse(src=3, dst=1, term=2, granted=False))
    assert node.role is Role.FOLLOWER and node.term == 2


def test_5_2_votes_from_non_voters_do_not_count() -> None:
    node = make_node(1, voters=(1, 2, 3), learners=(4,), pre_vote=False)
    drain(node)
    node.campaign()
    drain(node)
    node.step(VoteResponse(src=4, dst=1, term=2, granted=True))
    assert node.role is Role.CANDIDATE
    node.step(VoteResponse(src=2, dst=1, term=2, granted=True))
    assert node.role is Role.LEADER


def test_5_2_learner_never_campaigns() -> None:
    node = make_node(4, voters=(1, 2, 3), learners=(4,))
    drain(node)
    for _ in range(100):
        node.tick()
    node.campaign()
    assert node.role is Role.FOLLOWER and drain(node) == []


def test_5_2_single_voter_elects_itself() -> None:
    node = make_node(1, voters=(1,))
    drain(node)
    node.campaign()
    assert node.role is Role.LEADER


# == §5.4.1 election restriction ===============================================================

# (voter's log terms after 1@t1, candidate last index, candidate last term, granted)
UP_TO_DATE = [
    pytest.param([2, 2], 3, 2, True, id="same last term, same length"),
    pytest.param([2, 2], 4, 2, True, id="same last term, longer"),
    pytest.param([2, 2], 2, 2, False, id="same last term, shorter"),
    pytest.param([2, 2], 2, 3, True, id="later last term, shorter"),
    pytest.param([2, 3], 9, 2, False, id="earlier last term, longer"),
    pytest.param([], 1, 1, True, id="both at the snapshot"),
    pytest.param([2], 1, 1, False, id="candidate lacks our last entry"),
]


@pytest.mark.parametrize("pre_vote", [False, True])
@pytest.mark.parametrize(("log", "last_index", "last_term", "granted"), UP_TO_DATE)
def test_5_4_1_vote_only_for_an_up_to_date_log(
    log: list[int], last_index: int, last_term: int, granted: bool, pre_vote: bool
) -> None:
    """§5.4.1: "If the logs have last entries with different terms, then the log with the
    later term is more up-to-date. If the logs end with the same term, then whichever log
    is longer is more up-to-date." The same rule applies to pre-votes (D §9.6)."""
    node = make_node(1, log=log, term=3)
    drain(node)
    node.step(
        VoteRequest(
            src=2, dst=1, term=4, last_index=last_index, last_term=last_term, pre_vote=pre_vote
        )
    )
    (resp,) = drain(node)
    assert isinstance(resp, VoteResponse) and resp.granted is granted
    assert resp.pre_vote is pre_vote
    if pre_vote:
        # A pre-vote never changes the voter's term or vote (D §9.6).
        assert (node.term, node.vote) == (3, 0)
        assert resp.term == (4 if granted else 3)
    else:
        # §5.1: the later term is adopted even when the vote is refused.
        assert node.term == 4
        assert node.vote == (2 if granted else 0)


# == pre-vote (D §9.6) =========================================================================


def _rejoin(pre_vote: bool) -> tuple[int, int, int, int]:
    """Isolate node 3 of a healthy cluster for several election timeouts, then heal.

    Returns (term before, node 3's term while isolated, term after, leader after)."""
    c = Cluster(seed=5, pre_vote=pre_vote, check_quorum=pre_vote)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    before = c.node(1).term
    c.isolate(3)
    for _ in range(4):
        c.tick_election(3)
        c.stabilize()
    isolated_term = c.node(3).term
    c.heal()
    c.tick_heartbeat(1)
    c.stabilize()
    for _ in range(2 * c.node(1).config.election_tick):  # let any disruption play out
        for nid in c.ids:
            c.tick(nid)
        c.stabilize()
    return before, isolated_term, c.node(1).term, c.leader()


def test_prevote_partitioned_node_rejoining_does_not_bump_the_term() -> None:
    """D §9.6: "the Pre-Vote algorithm ... a server ... only increments its term if it
    learns that it could win". The isolated node never gets a majority of pre-votes."""
    before, isolated, after, leader = _rejoin(pre_vote=True)
    assert isolated == before
    assert after == before
    assert leader == 1


def test_without_prevote_the_rejoining_node_disrupts_the_cluster() -> None:
    """The control for the test above: without pre-vote the isolated node's term runs
    ahead and its return forces the leader to step down."""
    before, isolated, after, _ = _rejoin(pre_vote=False)
    assert isolated > before
    assert after > before


def test_prevote_grant_does_not_record_a_vote_and_does_not_reset_the_timer() -> None:
    node = make_node(1, term=2)
    drain(node)
    for _ in range(3):
        node.tick()
    node.step(VoteRequest(src=2, dst=1, term=3, last_index=1, last_term=1, pre_vote=True))
    assert drain(node) == [VoteResponse(src=1, dst=2, term=3, granted=True, pre_vote=True)]
    assert (node.term, node.vote, node.election_elapsed) == (2, 0, 3)


def test_prevote_candidate_keeps_its_term_until_it_could_win() -> None:
    node = make_node(1, term=2)
    drain(node)
    node.campaign()
    rd = node.ready()
    assert node.role is Role.PRE_CANDIDATE
    assert rd.hard_state is None  # neither term nor vote changed
    assert {m.term for m in rd.persisted_messages} == {3}  # asks about the next term
    node.advance(rd)
    node.step(VoteResponse(src=2, dst=1, term=3, granted=True, pre_vote=True))
    assert node.role is Role.CANDIDATE and node.term == 3 and node.vote == 1


def test_prevote_rejection_from_a_later_term_makes_the_precandidate_follow_it() -> None:
    node = make_node(1, term=2)
    drain(node)
    node.campaign()
    drain(node)
    node.step(VoteResponse(src=2, dst=1, term=7, granted=False, pre_vote=True))
    assert node.role is Role.FOLLOWER and node.term == 7


# == check-quorum and leases (D §6.2, §4.2.3) ==================================================


def test_check_quorum_isolated_leader_steps_down_within_two_election_timeouts() -> None:
    """D §6.2: "a leader steps down if an election timeout elapses without a successful
    round of heartbeats to a majority of its cluster"."""
    c = Cluster(seed=1)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.isolate(1)
    et = c.node(1).config.election_tick
    for _ in range(2 * et):
        c.tick(1)
        c.stabilize()
    assert c.node(1).role is Role.FOLLOWER
    assert c.node(1).leader == 0


def test_check_quorum_leader_with_a_majority_stays() -> None:
    c = Cluster(seed=1)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.isolate(3)  # one follower lost; 2 of 3 still answer
    for _ in range(5 * c.node(1).config.election_tick):
        c.tick(1)
        c.stabilize()
    assert c.node(1).role is Role.LEADER


def test_without_check_quorum_an_isolated_leader_stays_leader() -> None:
    """The control: check-quorum is what makes the leader step down."""
    c = Cluster(seed=1, check_quorum=False)
    c.add_nodes(3)
    c.stabilize()
    c.elect(1)
    c.isolate(1)
    for _ in range(5 * c.node(1).config.election_tick):
        c.tick(1)
        c.stabilize()
    assert c.node(1).role is Role.LEADER


@pytest.mark.parametrize("pre_vote", [False, True])
def test_follower_in_lease_ignores_vote_requests_of_a_later_term(pre_vote: bool) -> None:
    """D §4.2.3: "if a server receives a RequestVote request within the minimum election
    timeout of hearing from a current leader, it does not update its term or grant its
    vote"."""
    node = make_node(1, term=2)
    drain(node)
    node.step(Heartbeat(src=2, dst=1, term=2, commit=1))
    drain(node)
    node.step(VoteRequest(src=3, dst=1, term=3, last_index=5, last_term=2, pre_vote=pre_vote))
    assert drain(node) == []
    assert (node.term, node.leader) == (2, 2)


def test_lease_expires_after_an_election_timeout_without_the_leader() -> None:
    node = make_node(1, term=2, election_tick=10, seed=1)
    drain(node)
    node.step(Heartbeat(src=2, dst=1, term=2, commit=1))
    drain(node)
    for _ in range(10):
        if node.role is not Role.FOLLOWER:
            break
        node.tick()
    node.step(VoteRequest(src=3, dst=1, term=3, last_index=5, last_term=2))
    assert node.term == 3


def test_transfer_vote_requests_bypass_the_lease() -> None:
    """D §3.10: votes for a leadership-transfer target must not be refused for the lease."""
    node = make_node(1, term=2)
    drain(node)
    node.step(Heartbeat(src=2, dst=1, term=2, commit=1))
    drain(node)
    node.step(VoteRequest(src=3, dst=1, term=3, last_index=1, last_term=1, transfer=True))
    assert drain(node) == [VoteResponse(src=1, dst=3, term=3, granted=True)]
