"""Membership rules of the kernel that need no ``RawNode`` state beyond what they are given.

``removal_in_snapshot``: what a node restarted from a snapshot knows of its own removal
from a membership of two, for ``RawNode._successor_after_removal`` (rule 5 of the module
docstring of ``framework.core.raft``).
"""

from __future__ import annotations

from framework.core.entries import EntryKind, SnapshotMeta
from framework.core.log import RaftLog

__all__ = ["removal_in_snapshot"]


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
