"""Why a node's role changed (``framework/runtime/role_changes.py``): recorded where the
runtime steps the input that changed it, for the status page's health."""

from __future__ import annotations

import sys
from pathlib import Path

from framework.core import (
    AppendEntries,
    Heartbeat,
    InvalidMessage,
    Role,
    VoteRequest,
    VoteResponse,
)
from framework.runtime.kernel_inputs import step_inputs
from framework.runtime.node_health import NodeHealth
from framework.runtime.role_changes import KEPT, RoleChanges

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from kernel_harness import drain, make_node, make_stable_leader

ELECTION = 10


def _fail(exc: InvalidMessage) -> None:
    raise AssertionError(exc)


def test_an_election_timeout_records_the_ticks_since_the_leader_and_the_burst() -> None:
    follower = make_node(2, term=2, election_tick=ELECTION, pre_vote=True, check_quorum=True)
    drain(follower)
    changes = RoleChanges()
    heartbeat = Heartbeat(src=1, dst=2, term=2, commit=1)
    step_inputs(follower, [heartbeat], 3, on_invalid=_fail, changes=changes)
    assert changes.heard_at == 0 and changes.total == 0
    # A pause: every tick of two election timeouts comes in one drain. A follower is given
    # half an election timeout of them (kernel_inputs' point 5): no campaign on that alone.
    step_inputs(follower, [], 2 * ELECTION, on_invalid=_fail, changes=changes)
    assert follower.role is Role.FOLLOWER
    assert changes.ticks_dropped == 2 * ELECTION - ELECTION // 2
    # Then its loop is held two ticks at a time, and nothing comes from the leader.
    while follower.role is Role.FOLLOWER:
        step_inputs(follower, [], 2, on_invalid=_fail, changes=changes)
    assert follower.role is Role.PRE_CANDIDATE
    (change,) = changes.to_dict()["last"]
    assert change["reason"] == "election_timeout"
    assert (change["from"], change["to"]) == ("follower", "pre_candidate")
    assert change["burst"] == 2
    assert change["ticks_since_leader"] == change["tick"] >= ELECTION
    assert changes.counts == {"follower->pre_candidate election_timeout": 1}


def test_a_check_quorum_step_down_and_a_higher_term_are_told_apart() -> None:
    leader = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    changes = RoleChanges()
    step_inputs(leader, [], 2 * ELECTION, on_invalid=_fail, changes=changes)  # nobody answers
    assert leader.role is Role.FOLLOWER
    assert changes.to_dict()["last"][-1]["reason"] == "check_quorum"

    other = make_stable_leader(check_quorum=True, election_tick=ELECTION, heartbeat_tick=1)
    newer = AppendEntries(src=3, dst=1, term=other.term + 1, prev_index=0, prev_term=0)
    step_inputs(other, [newer], 0, on_invalid=_fail, changes=changes)
    last = changes.to_dict()["last"][-1]
    assert (last["reason"], last["peer"], last["message"]) == ("higher_term", 3, "AppendEntries")
    assert (last["from"], last["to"], last["term"]) == ("leader", "follower", other.term)
    assert changes.counts == {
        "leader->follower check_quorum": 1,
        "leader->follower higher_term": 1,
    }


def test_the_record_is_bounded_and_shown_in_the_health_page() -> None:
    changes = RoleChanges()
    node = make_node(1, term=2, election_tick=ELECTION, pre_vote=False)
    drain(node)
    for _ in range(KEPT + 5):  # each vote request of a later term: candidate -> follower
        for _tick in range(2 * ELECTION):
            step_inputs(node, [], 1, on_invalid=_fail, changes=changes)
        request = VoteRequest(src=2, dst=1, term=node.term + 1, last_index=9, last_term=2)
        step_inputs(node, [request], 0, on_invalid=_fail, changes=changes)
        drain(node)
    page = NodeHealth(changes).to_dict(commit=0, applied=0, performance={}, modes=[])
    shown = page["role_changes"]
    assert shown["total"] == 2 * (KEPT + 5) and len(shown["last"]) == KEPT
    assert shown["last"][-1]["n"] == shown["total"]
    assert shown["counts"]["candidate->follower higher_term"] == KEPT + 5


def test_a_won_pre_vote_and_vote_are_named_as_such() -> None:
    node = make_node(1, term=2, election_tick=ELECTION, pre_vote=True)
    drain(node)
    changes = RoleChanges()
    for _ in range(2 * ELECTION):
        step_inputs(node, [], 1, on_invalid=_fail, changes=changes)
    assert node.role is Role.PRE_CANDIDATE
    granted = VoteResponse(src=2, dst=1, term=3, granted=True, pre_vote=True)
    step_inputs(node, [granted], 0, on_invalid=_fail, changes=changes)
    assert node.role is Role.CANDIDATE and node.term == 3
    vote = VoteResponse(src=2, dst=1, term=3, granted=True)
    step_inputs(node, [vote], 0, on_invalid=_fail, changes=changes)
    assert node.role is Role.LEADER
    reasons = [(c["to"], c["reason"]) for c in changes.to_dict()["last"]]
    assert reasons == [
        ("pre_candidate", "election_timeout"),
        ("candidate", "pre_vote_won"),
        ("leader", "vote_won"),
    ]
