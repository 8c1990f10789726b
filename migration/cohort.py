"""Cohorts: which nodes a step moves, and the flag values that say so.

The migrated cohort is written in the flags themselves, so it needs no state of its own:
for a target ``true`` each target flag becomes ``{enabled = true, percent = 0, include =
[migrated]}`` (``exclude`` and ``percent = 100`` for a target ``false``), and plainly the
target value once every node is in. Reading the cohort back from the replicated flag state
(`migrated_nodes`) is how a new leader knows where the last one stopped.

Selection is cumulative (a step never takes a node back) and deterministic: followers by
id first, the leader last. A step that would move the leader while some node is already
migrated first moves leadership to a migrated node (`plan_step` says which), so the
leader is always the last node to change mode and the cluster is led by a node on the
new mode while the last one switches. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from framework.config import FlagValue, Rollout
from framework.flags import FlagChange, RolloutWire
from migration.plan import Cohort

__all__ = ["StepPlan", "migrated_nodes", "plan_step", "select", "step_change"]


def select(
    cohort: Cohort, *, voters: Collection[int], leader: int, migrated: Collection[int]
) -> frozenset[int]:
    """The nodes on the new mode once ``cohort`` applies: ``migrated`` plus the step's own."""
    members = sorted(voters)
    done = set(migrated) & set(members)
    order = [n for n in members if n != leader] + ([leader] if leader in members else [])
    if cohort.nodes:
        wanted = done | (set(cohort.nodes) & set(members))
        return frozenset(wanted)
    if cohort.role == "followers":
        return frozenset(done | {n for n in members if n != leader})
    if cohort.role in ("leader", "all"):
        return frozenset(members)
    if cohort.count is not None:
        total = min(len(members), cohort.count)
    else:
        assert cohort.percent is not None
        total = min(len(members), math.ceil(cohort.percent / 100 * len(members) - 1e-9))
    chosen = set(done)
    for node in order:
        if len(chosen) >= total:
            break
        chosen.add(node)
    return frozenset(chosen)


def _included(value: FlagValue | None, target: bool) -> set[int] | None:
    """Nodes the value puts on ``target``; None for "every node" (a plain target value)."""
    if value is None:
        return set()
    if isinstance(value, bool):
        return None if value is target else set()
    if isinstance(value, Rollout):
        if target and value.enabled and value.percent == 0:
            return set(value.include) - set(value.exclude)
        if not target and value.enabled and value.percent == 100:
            return set(value.exclude)
    return set()


def migrated_nodes(
    cluster: Mapping[str, FlagValue], target: Mapping[str, bool], voters: Collection[int]
) -> frozenset[int]:
    """Nodes on the new mode for every target flag, as the cluster's flag values say."""
    result = set(voters)
    for name, value in target.items():
        nodes = _included(cluster.get(name), value)
        if nodes is not None:
            result &= nodes
    return frozenset(result)


def step_change(
    target: Mapping[str, bool], nodes: Collection[int], voters: Collection[int]
) -> FlagChange:
    """The flag change that puts exactly ``nodes`` on the new mode (everyone: plain values)."""
    everyone = set(voters) <= set(nodes)
    values: dict[str, bool | RolloutWire] = {}
    for name, on in sorted(target.items()):
        if everyone:
            values[name] = on
        elif on:
            values[name] = RolloutWire(enabled=True, percent=0.0, include=tuple(sorted(nodes)))
        else:
            values[name] = RolloutWire(enabled=True, percent=100.0, exclude=tuple(sorted(nodes)))
    return FlagChange(set=values)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepPlan:
    nodes: frozenset[int]
    """Who is on the new mode after the step."""
    transfer_to: int | None
    """Move leadership here first (the step would move the leader while a migrated node
    could lead instead)."""


def plan_step(
    cohort: Cohort, *, voters: Collection[int], leader: int, migrated: Collection[int]
) -> StepPlan:
    nodes = select(cohort, voters=voters, leader=leader, migrated=migrated)
    candidates = sorted(set(migrated) & set(voters) - {leader})
    if leader in nodes and leader not in migrated and candidates:
        return StepPlan(nodes=nodes, transfer_to=candidates[0])
    return StepPlan(nodes=nodes, transfer_to=None)
