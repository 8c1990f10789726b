"""``Ready``: one batch of work the kernel hands to the runtime, and the order to do it in."""

from __future__ import annotations

import msgspec

from framework.core.entries import Entry, HardState, ReadState, Snapshot, SoftState
from framework.core.messages import Message

__all__ = ["Ready"]


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    """Work to do, in this order, before calling ``RawNode.advance(ready)``:

    1. Send ``messages`` at once (leader replication; safe before the local write,
       dissertation §10.2.1).
    2. Durably store ``snapshot`` (if any), then ``entries`` (replacing any stored entries
       from ``entries[0].index`` on) and ``hard_state`` (if any), in one transaction, synced
       when ``must_sync``.
    3. Only then send ``persisted_messages``: votes and acknowledgements promise that
       what they acknowledge is on stable storage.
    4. Restore the state machine from ``snapshot`` (if any), then apply
       ``committed_entries`` in order; answer ``read_states`` once their index is applied;
       fail the reads in ``dropped_reads`` (the caller may retry them).
    5. ``advance(ready)``.

    A frozen ``msgspec.Struct`` like the kernel's other values (``msgspec.structs.replace``
    copies one with changes): the kernel builds one per loop pass, and a frozen dataclass
    took ten times as long to build.
    """

    soft_state: SoftState | None = None
    """New leader/role, or None when unchanged. Not persisted."""
    hard_state: HardState | None = None
    """New term/vote/commit to store, or None when unchanged."""
    entries: tuple[Entry, ...] = ()
    """Entries to store. Stored entries at or after ``entries[0].index`` are replaced."""
    snapshot: Snapshot | None = None
    """A snapshot from the leader to store and restore before applying anything."""
    messages: tuple[Message, ...] = ()
    """Messages that may be sent before the local write completes."""
    persisted_messages: tuple[Message, ...] = ()
    """Messages that must not leave until ``entries``/``hard_state``/``snapshot`` are durable."""
    committed_entries: tuple[Entry, ...] = ()
    """Entries committed by a quorum, to apply to the state machine in order."""
    read_states: tuple[ReadState, ...] = ()
    """Linearizable reads that may be served once ``index`` is applied."""
    dropped_reads: tuple[bytes, ...] = ()
    """Contexts of ``read_index`` requests that cannot be served (no leader, leader lost)."""
    must_sync: bool = False
    """Whether the write in step 2 must be fsynced (new entries, term or vote)."""

    def __bool__(self) -> bool:
        return bool(
            self.soft_state
            or self.hard_state
            or self.entries
            or self.snapshot
            or self.messages
            or self.persisted_messages
            or self.committed_entries
            or self.read_states
            or self.dropped_reads
        )
