"""``RaftConfig``: the kernel's parameters, checked when built (times in ticks).

Kept apart from ``raft.py`` (the state machine of the protocol): a runtime builds one from
its settings (``framework.runtime.restart.build_kernel``) without reading the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RaftConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftConfig:
    """Kernel parameters; times are in ticks."""

    id: int
    election_tick: int = 10
    """Followers campaign after a random timeout in [election_tick, 2 * election_tick)."""
    heartbeat_tick: int = 1
    max_inflight_msgs: int = 256
    max_size_per_msg: int = 1 << 20
    """Bytes of entry data per AppendEntries (at least one entry is always sent)."""
    max_uncommitted_entries_size: int = 0
    """Uncommitted bytes a leader accepts before rejecting proposals; 0 means no limit."""
    max_committed_per_ready: int = 0
    """Cap on ``committed_entries`` per Ready; 0 means no cap."""
    snapshot_retry_tick: int = 0
    """Ticks without an answer after which a leader resends a snapshot; 0 means
    ``10 * election_tick``. A lost InstallSnapshot would otherwise stall the follower."""
    pre_vote: bool = True
    check_quorum: bool = True
    broadcast_commit: bool = True
    """Send every follower an append as soon as the commit index advances, empty if it has
    nothing new (etcd-raft's behaviour). False lets the next append or heartbeat carry the
    commit index instead (hashicorp/raft's): a follower learns of a commit up to one heartbeat
    interval later, and a write costs each follower one message, one answer and one Ready
    less. Still sent at once: a commit that covers a membership change (voters must learn
    it to elect the next leader without the nodes it removed) and a follower's read released
    by a lease (the follower serves it only once it has applied that far). Commits on the
    leader, and so the answers to writers, are the same either way."""
    lease_reads: bool = False
    """Serve reads from a leader lease (D §6.4.1) instead of a heartbeat round each; needs
    ``check_quorum``. See ``lease_drift_ticks``."""
    lease_drift_ticks: int = 2
    """Ticks a lease is cut short by, out of an election timeout: at least 2 for the tick
    granularity (a tick may start at any instant on each side), plus how far clocks may run
    apart over an election timeout. A lease from a heartbeat round sent at tick ``s`` lasts
    while the leader's tick count is below ``s + election_tick - lease_drift_ticks``."""

    def __post_init__(self) -> None:
        problems = []
        if self.id <= 0:
            problems.append(f"id={self.id}: expected a positive node id")
        if self.heartbeat_tick <= 0:
            problems.append(f"heartbeat_tick={self.heartbeat_tick}: expected > 0")
        if self.election_tick <= self.heartbeat_tick:
            problems.append(
                f"election_tick={self.election_tick}: expected > heartbeat_tick "
                f"({self.heartbeat_tick})"
            )
        if self.max_inflight_msgs <= 0:
            problems.append(f"max_inflight_msgs={self.max_inflight_msgs}: expected > 0")
        if self.max_size_per_msg <= 0:
            problems.append(f"max_size_per_msg={self.max_size_per_msg}: expected > 0")
        if self.max_uncommitted_entries_size < 0:
            problems.append(
                f"max_uncommitted_entries_size={self.max_uncommitted_entries_size}: expected >= 0"
            )
        if self.lease_reads and not self.check_quorum:
            problems.append("lease_reads=True: expected check_quorum=True (leases need it)")
        if self.lease_drift_ticks < 0:
            problems.append(f"lease_drift_ticks={self.lease_drift_ticks}: expected >= 0")
        elif self.lease_reads and not 2 <= self.lease_drift_ticks < self.election_tick:
            problems.append(
                f"lease_drift_ticks={self.lease_drift_ticks}: expected 2 <= lease_drift_ticks "
                f"< election_tick ({self.election_tick}) with lease_reads (at least one tick "
                "of granularity on each side)"
            )
        if problems:
            raise ValueError("invalid RaftConfig: " + "; ".join(problems))
