"""Cohort selection: cumulative, followers first by id, the leader last (after moving
leadership to a migrated node); the cohort is written in the flags and read back from
the replicated flag state."""

from __future__ import annotations

import pytest

from framework.flags import ClusterFlagState, FlagChange, RolloutWire
from migration.cohort import migrated_nodes, plan_step, select, step_change
from migration.plan import Cohort

VOTERS = (1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("cohort", "leader", "migrated", "expected"),
    [
        (Cohort(count=1), 1, (), {2}),  # followers first, by id
        (Cohort(count=2), 2, (), {1, 3}),
        (Cohort(count=2), 1, (4,), {2, 4}),  # cumulative: the migrated stay
        (Cohort(percent=40), 3, (), {1, 2}),  # ceil(40% of 5) = 2
        (Cohort(percent=50), 3, (), {1, 2, 4}),  # ceil(2.5) = 3
        (Cohort(count=5), 3, (), {1, 2, 3, 4, 5}),  # the leader only when it must
        (Cohort(count=4), 3, (), {1, 2, 4, 5}),
        (Cohort(nodes=(4,)), 1, (2,), {2, 4}),
        (Cohort(nodes=(9,)), 1, (), set()),  # not a member: nobody
        (Cohort(role="followers"), 2, (), {1, 3, 4, 5}),
        (Cohort(role="all"), 2, (1,), {1, 2, 3, 4, 5}),
        (Cohort(count=1), 1, (2, 3), {2, 3}),  # never fewer than already migrated
    ],
)
def test_select(cohort: Cohort, leader: int, migrated: tuple[int, ...], expected: set[int]) -> None:
    assert select(cohort, voters=VOTERS, leader=leader, migrated=migrated) == expected


def test_the_leader_moves_last_leadership_first_going_to_a_migrated_node() -> None:
    step = plan_step(Cohort(role="all"), voters=(1, 2, 3), leader=1, migrated=(2, 3))
    assert step.transfer_to == 2 and step.nodes == {1, 2, 3}
    # On the new leader (migrated), the same step needs no transfer: no loop.
    again = plan_step(Cohort(role="all"), voters=(1, 2, 3), leader=2, migrated=(2, 3))
    assert again.transfer_to is None and again.nodes == {1, 2, 3}
    # A step that leaves the leader out moves no leadership.
    assert plan_step(Cohort(count=2), voters=(1, 2, 3), leader=1, migrated=(2,)).transfer_to is None
    # Nobody migrated yet (a one-step plan): there is no migrated node to lead.
    assert (
        plan_step(Cohort(role="all"), voters=(1, 2, 3), leader=1, migrated=()).transfer_to is None
    )


@pytest.mark.parametrize("target", [True, False])
def test_the_cohort_is_written_in_the_flags_and_read_back_from_the_replicated_state(
    target: bool,
) -> None:
    goal = {"actors": target, "backpressure": target}
    state = ClusterFlagState()
    assert migrated_nodes(state.values(), goal, VOTERS) == frozenset()
    for index, nodes in enumerate(({2}, {2, 4}, set(VOTERS)), start=1):
        state.apply(step_change(goal, nodes, VOTERS), index)
        assert migrated_nodes(state.values(), goal, VOTERS) == nodes
    assert state.values() == goal  # everyone in: plain values, no rollout left


def test_a_step_change_is_a_rollout_naming_the_cohort() -> None:
    change = step_change({"actors": True, "chaos": False}, {3, 1}, (1, 2, 3))
    assert change.set == {
        "actors": RolloutWire(enabled=True, percent=0.0, include=(1, 3)),
        "chaos": RolloutWire(enabled=True, percent=100.0, exclude=(1, 3)),
    }


def test_a_flag_set_outside_the_migration_counts_nobody_as_migrated() -> None:
    state = ClusterFlagState()
    state.apply(FlagChange(set={"actors": RolloutWire(percent=50.0)}), 1)
    assert migrated_nodes(state.values(), {"actors": True}, VOTERS) == frozenset()
