"""Membership rules of the kernel that need no ``RawNode`` state beyond what they are given.

- ``check_conf_change``: whether a single-server change may be proposed now (D §4.1: one
  change at a time, each adding or removing one server);
- ``changed_membership``: the membership after a change is applied, and whether it was
  this node's own removal from the voters (for ``RawNode._successor_after_removal``);
- ``removal_in_snapshot``: what a node restarted from a snapshot knows of its own removal
  from a membership of two (rule 5 of the module docstring of ``framework.core.raft``).

What a leader does once the membership changed (its progress, a hand-over after its own
removal) stays in ``RawNode._apply_conf_change``.
"""

from __future__ import annotations

from collections.abc import Mapping

from framework.core.entries import ConfChange, ConfChangeType, ConfState, EntryKind, SnapshotMeta
from framework.core.errors import ConfChangeRejected
from framework.core.log import RaftLog
from framework.core.progress import Progress

__all__ = ["changed_membership", "check_conf_change", "removal_in_snapshot"]


def check_conf_change(
    change: ConfChange, conf: ConfState, progress: Mapping[int, Progress], committed: int
) -> None:
    """Raise ``ConfChangeRejected`` naming why ``change`` cannot be made to ``conf`` now;
    ``progress``: the leader's, for what a learner is known to store (promoting one that
    has not caught up to ``committed`` would stall commits)."""
    voters, learners = conf.voters, conf.learners
    nid = change.node_id
    if nid <= 0:
        raise ConfChangeRejected(f"node id {nid}: expected a positive integer")
    kind = change.type
    if kind is ConfChangeType.ADD_VOTER and nid in voters:
        raise ConfChangeRejected(f"node {nid} is already a voter")
    if kind is ConfChangeType.ADD_LEARNER and (nid in voters or nid in learners):
        raise ConfChangeRejected(f"node {nid} is already a member")
    if kind is ConfChangeType.PROMOTE or (kind is ConfChangeType.ADD_VOTER and nid in learners):
        if kind is ConfChangeType.PROMOTE and nid not in learners:
            raise ConfChangeRejected(f"node {nid} is not a learner; cannot promote it")
        match = progress[nid].match
        if match < committed:
            raise ConfChangeRejected(
                f"learner {nid} has not caught up (matches index {match}, commit index "
                f"is {committed}); promote it once it has"
            )
    if kind is ConfChangeType.REMOVE:
        if nid not in voters and nid not in learners:
            raise ConfChangeRejected(f"node {nid} is not a member; cannot remove it")
        if voters == (nid,):
            raise ConfChangeRejected(f"node {nid} is the only voter; cannot remove it")


def changed_membership(
    conf: ConfState, change: ConfChange, node_id: int
) -> tuple[ConfState, tuple[int, ...] | None]:
    """``conf`` with ``change`` applied, and what node ``node_id`` now knows of its own
    removal: the voters it was removed from (its removal as a voter), () (it was added
    back), or None (nothing about it changed)."""
    voters = set(conf.voters)
    learners = set(conf.learners)
    nid = change.node_id
    removed_from: tuple[int, ...] | None = None
    if change.type is ConfChangeType.ADD_VOTER or change.type is ConfChangeType.PROMOTE:
        learners.discard(nid)
        voters.add(nid)
    elif change.type is ConfChangeType.ADD_LEARNER:
        if nid not in voters:
            learners.add(nid)
    else:
        if nid == node_id and nid in voters:
            removed_from = tuple(sorted(voters))
        voters.discard(nid)
        learners.discard(nid)
    if nid == node_id and change.type is not ConfChangeType.REMOVE:
        removed_from = ()  # added back: a member again
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners))), removed_from


def removal_in_snapshot(node_id: int, meta: SnapshotMeta, log: RaftLog) -> tuple[int, ...]:
    """The voters of the membership ``node_id`` was removed from, as the snapshot at
    ``meta`` that its ``log`` starts from records it; () when it records no such removal.

    For a node restarted from a snapshot that covers its removal from a membership of two
    (simulator sweep, seed 37017: without it, the node had applied its removal from
    {2, 3}, took a snapshot, restarted, and then refused the voter left its vote for a
    shorter log, for good).

    The snapshot's membership is one the node applied (not a prefix rebuilt entry by
    entry, as after a restart without one: seed 101277). Excluding us, with one voter
    ``v`` left, and no membership change in our log after it, the last change we applied
    was our own removal: no change can follow it in our log, because a leader proposes
    the next one only once it has applied ours, and from then on sends us nothing. So
    the membership before it was {us, v}; had we been a learner there, ``v`` never
    counts our vote and the exemption is moot. A change after the snapshot (say the
    snapshot lies inside the bootstrap entries) leaves it unset: the replay decides.
    """
    conf = meta.conf_state
    if (
        meta.index == 0
        or len(conf.voters) != 1
        or node_id in conf.voters
        or node_id in conf.learners
    ):
        return ()
    after = log.slice(meta.index + 1, log.last_index() + 1)
    if any(entry.kind is EntryKind.CONF_CHANGE for entry in after):
        return ()
    return tuple(sorted((node_id, conf.voters[0])))
