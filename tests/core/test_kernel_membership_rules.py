"""Table and property tests for the kernel's membership rules as pure functions
(``framework/core/membership.py``); the kernel's use of them is covered by the scenario
tests and the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.core import ConfChange, ConfChangeRejected, ConfChangeType, ConfState
from framework.core.membership import changed_membership, check_conf_change
from framework.core.progress import Progress

ADD, LEARN, PROMOTE, REMOVE = (
    ConfChangeType.ADD_VOTER,
    ConfChangeType.ADD_LEARNER,
    ConfChangeType.PROMOTE,
    ConfChangeType.REMOVE,
)
CONF = ConfState(voters=(1, 2, 3), learners=(4,))


def _progress(learner_match: int) -> dict[int, Progress]:
    progress = {nid: Progress(next_index=1, max_inflight=8) for nid in (1, 2, 3, 4)}
    progress[4].match = learner_match
    return progress


@pytest.mark.parametrize(
    ("kind", "nid", "match", "problem"),
    [
        (ADD, 0, 0, "node id 0: expected a positive integer"),
        (ADD, 2, 0, "node 2 is already a voter"),
        (LEARN, 4, 0, "node 4 is already a member"),
        (LEARN, 3, 0, "node 3 is already a member"),
        (PROMOTE, 5, 0, "node 5 is not a learner; cannot promote it"),
        (PROMOTE, 4, 9, "learner 4 has not caught up (matches index 9, commit index is 10)"),
        (ADD, 4, 9, "learner 4 has not caught up"),
        (REMOVE, 5, 0, "node 5 is not a member; cannot remove it"),
    ],
)
def test_a_change_that_cannot_be_made_is_refused_naming_why(
    kind: ConfChangeType, nid: int, match: int, problem: str
) -> None:
    with pytest.raises(ConfChangeRejected) as refused:
        check_conf_change(ConfChange(type=kind, node_id=nid), CONF, _progress(match), 10)
    assert problem in str(refused.value)


def test_the_only_voter_cannot_be_removed() -> None:
    with pytest.raises(ConfChangeRejected, match="node 1 is the only voter"):
        check_conf_change(ConfChange(type=REMOVE, node_id=1), ConfState(voters=(1,)), {}, 0)


@pytest.mark.parametrize(
    ("kind", "nid", "match"),
    [(ADD, 5, 0), (LEARN, 5, 0), (PROMOTE, 4, 10), (ADD, 4, 11), (REMOVE, 4, 0), (REMOVE, 3, 0)],
)
def test_a_change_that_can_be_made_passes(kind: ConfChangeType, nid: int, match: int) -> None:
    check_conf_change(ConfChange(type=kind, node_id=nid), CONF, _progress(match), 10)


@pytest.mark.parametrize(
    ("kind", "nid", "voters", "learners"),
    [
        (ADD, 5, (1, 2, 3, 5), (4,)),
        (ADD, 4, (1, 2, 3, 4), ()),  # a learner added as a voter is promoted
        (PROMOTE, 4, (1, 2, 3, 4), ()),
        (LEARN, 5, (1, 2, 3), (4, 5)),
        (LEARN, 2, (1, 2, 3), (4,)),  # a voter stays a voter
        (REMOVE, 2, (1, 3), (4,)),
        (REMOVE, 4, (1, 2, 3), ()),
    ],
)
def test_the_membership_after_a_change(
    kind: ConfChangeType, nid: int, voters: tuple[int, ...], learners: tuple[int, ...]
) -> None:
    conf, _ = changed_membership(CONF, ConfChange(type=kind, node_id=nid), node_id=1)
    assert conf == ConfState(voters=voters, learners=learners)


def test_what_a_node_learns_of_its_own_removal() -> None:
    two = ConfState(voters=(1, 2))
    remove_me = ConfChange(type=REMOVE, node_id=1)
    assert changed_membership(two, remove_me, node_id=1)[1] == (1, 2)
    assert changed_membership(two, remove_me, node_id=2)[1] is None  # not about node 2
    learner = ConfState(voters=(2,), learners=(1,))
    assert changed_membership(learner, remove_me, node_id=1)[1] is None  # not as a voter
    back = ConfChange(type=ADD, node_id=1)
    assert changed_membership(ConfState(voters=(2,)), back, node_id=1)[1] == ()


@given(
    st.sets(st.integers(1, 6), min_size=1),
    st.sets(st.integers(1, 6)),
    st.sampled_from([ADD, LEARN, PROMOTE, REMOVE]),
    st.integers(1, 6),
)
def test_voters_and_learners_stay_sorted_and_disjoint(
    voters: set[int], learners: set[int], kind: ConfChangeType, nid: int
) -> None:
    conf = ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners - voters)))
    after, _ = changed_membership(conf, ConfChange(type=kind, node_id=nid), node_id=1)
    assert list(after.voters) == sorted(set(after.voters))
    assert list(after.learners) == sorted(set(after.learners))
    assert not set(after.voters) & set(after.learners)
