"""Log entries, persistent state and membership values of the Raft kernel.

Every value here is immutable (a frozen ``msgspec.Struct``) so the kernel can hand the same
object to the runtime, the storage and the wire without copying or fearing aliasing.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "ReadState",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
]


class EntryKind(enum.IntEnum):
    """What an entry's ``data`` means; only ``conf_change`` is interpreted by the kernel."""

    NORMAL = 0
    """An application command, opaque to the kernel."""
    NOOP = 1
    """Appended by each new leader so it can commit entries of earlier terms (§5.4.2)."""
    CONF_CHANGE = 2
    """A msgpack-encoded ``ConfChange``; takes effect when applied."""
    FLAGS = 3
    """A cluster-wide feature-flag change, opaque to the kernel; every node switches at it."""


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One log entry. ``(index, term)`` identifies it uniquely (log matching, §5.3).

    Not tracked by the garbage collector (``gc=False``): a log holds millions of entries,
    and the collector walking them all made up a seventh of the kernel's time. Safe because
    an entry holds only ints and bytes, so it can never be part of a reference cycle.
    """

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Bytes the entry counts for in ``max_size_per_msg`` and the uncommitted cap."""
        return len(self.data)


class HardState(msgspec.Struct, frozen=True, kw_only=True):
    """State that must be on stable storage before the node answers any RPC (Figure 2)."""

    term: int = 0
    vote: int = 0
    """Node voted for in ``term``; 0 means none."""
    commit: int = 0


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class SoftState(msgspec.Struct, frozen=True, kw_only=True):
    """Volatile state that is useful to the runtime but need not be persisted."""

    leader: int
    """The leader this node knows of in its current term; 0 means unknown."""
    role: Role


class ConfState(msgspec.Struct, frozen=True, kw_only=True):
    """The membership: voters decide elections and commit; learners only receive the log."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def members(self) -> tuple[int, ...]:
        return tuple(sorted({*self.voters, *self.learners}))


class ConfChangeType(enum.Enum):
    ADD_VOTER = "add_voter"
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    """Learner -> voter; the leader refuses it until the learner has caught up."""
    REMOVE = "remove"


class ConfChange(msgspec.Struct, frozen=True, kw_only=True):
    """A single-server membership change (dissertation §4.1 with §4.2.1 learners)."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    """Opaque to the kernel; the runtime stores the new member's address here."""


class SnapshotMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Where a snapshot sits in the log and the membership in force at that point (§7)."""

    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    meta: SnapshotMeta = SnapshotMeta()
    data: bytes = b""
    """Opaque to the kernel, which never reads it. Empty when the runtime keeps the data in
    a file (the store's, found by ``meta``) instead of handing it to the kernel."""


class ReadState(msgspec.Struct, frozen=True, kw_only=True):
    """A linearizable read may be served once the state machine has applied ``index``.

    ``context`` is the caller's request id from ``read_index(context)``.
    """

    index: int
    context: bytes
