"""What the leader knows of each follower's log, and how fast it may send (etcd's Progress).

States:
- PROBE: the leader does not know where the follower's log ends; it sends one append per
  heartbeat interval and waits for the answer (rejections walk ``next`` back by term hints).
- REPLICATE: the follower is known to match up to ``match``; the leader streams appends
  optimistically, at most ``max_inflight`` unacknowledged messages at a time.
- SNAPSHOT: the follower needs entries the leader compacted; one InstallSnapshot is in
  flight and nothing else is sent until it is acknowledged or fails.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


# The members as module globals, for the tests run on every append sent and acknowledged:
# on CPython 3.11 ``ProgressState.PROBE`` goes through ``EnumType.__getattr__`` (a Python
# attribute hook, about seven times the cost of reading a global).
_PROBE = ProgressState.PROBE
_REPLICATE = ProgressState.REPLICATE
_SNAPSHOT = ProgressState.SNAPSHOT


class Inflights:
    """Last indexes of appends sent but not acknowledged, oldest first, bounded."""

    __slots__ = ("_capacity", "_queue")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._queue: deque[int] = deque()

    def full(self) -> bool:
        return len(self._queue) >= self._capacity

    def add(self, last_index: int) -> None:
        if self.full():
            raise OverflowError("inflight window is full")
        self._queue.append(last_index)

    def free_to(self, index: int) -> None:
        """Forget every append whose last entry is at or below ``index`` (acknowledged)."""
        queue = self._queue
        while queue and queue[0] <= index:
            queue.popleft()

    def free_first(self) -> None:
        if self._queue:
            self._queue.popleft()

    def reset(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "lease_ack",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_elapsed",
        "snapshot_sent",
        "state",
    )

    def __init__(self, *, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_elapsed = 0
        self.recent_active = False
        self.lease_ack = -1
        """Send tick of the latest heartbeat round this follower answered (-1: none)."""
        self.snapshot_sent = -1
        """The leader's tick when the snapshot in flight was sent. An answer to a heartbeat
        round sent after it, while the snapshot is unanswered, means the snapshot was lost
        (peer links are FIFO): it is resent then, not after ``snapshot_retry_tick``."""
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value}, match={self.match}, next={self.next}, "
            f"inflight={len(self.inflights)}{', learner' if self.is_learner else ''})"
        )

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        # After a snapshot the follower holds at least the snapshot index.
        if self.state is _SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(_PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(_PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(_REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(_SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.snapshot_elapsed = 0

    def snapshot_failed(self) -> None:
        """The snapshot in flight was lost or refused: probe again (and resend it)."""
        self.pending_snapshot = 0
        self.become_probe()

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement of ``index``; False if it says nothing new (stale)."""
        updated = False
        if index > self.match:
            self.match = index
            updated = True
            self.probe_sent = False
        if index >= self.next:  # next = max(next, index + 1), without the builtin's call
            self.next = index + 1
        return updated

    def sent_entries(self, last_index: int, count: int) -> None:
        """Account for an append carrying entries up to ``last_index`` (``count`` of them)."""
        if self.state is _REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state is _PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Handle a rejection of the append at ``rejected``; False if it is stale.

        In REPLICATE a rejection at or below ``match`` is an old message. In PROBE only a
        rejection of exactly ``next - 1`` answers the probe in flight.
        """
        if self.state is _REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold further appends to this follower for now."""
        if self.state is _PROBE:
            return self.probe_sent
        if self.state is _REPLICATE:
            return self.inflights.full()
        return True
