"""What one simulated run does: the cluster, the network's faults, the fault schedule.

``SimOptions`` is every knob of a run. ``SimOptions.mixed(seed)`` is the mix a sweep uses for
a seed (cluster size and fault mix vary by seed, from their own ``random.Random``, so adding
an option does not move the others); ``SimOptions.command()`` is the command line that
replays a run, naming only what differs from that mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

__all__ = ["LEADER_FAULT_KINDS", "SimOptions"]


LEADER_FAULT_KINDS = (
    "isolate",
    "deaf",
    "after_check",
    "pause",
    "crash",
    "bounce",
    "transfer_deaf",
    "rack",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimOptions:
    seed: int
    nodes: int = 3
    ticks: int = 300
    """Length of the fault phase."""
    liveness_ticks: int = 300
    """Bound, after faults stop, for electing a leader and completing every request."""
    drop: float = 0.05
    duplicate: float = 0.02
    max_delay: int = 3
    partitions: bool = True
    crashes: bool = True
    membership: bool = True
    snapshot_every: int = 30
    membership_rate: float = 0.01
    """Probability per tick (times ``fault_rate``) of a membership change."""
    clients: int = 3
    keys: int = 3
    election_tick: int = 10
    heartbeat_tick: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    max_size_per_msg: int = 256
    max_inflight_msgs: int = 4
    fault_rate: float = 1.0
    """Scales how often partitions, crashes, pauses, transfers and membership changes
    happen (harsher schedules mean many elections per run)."""
    long_delay: float = 0.0
    """Probability that a message is held back for up to ``4 * election_tick`` ticks."""
    pauses: bool = False
    """SIGSTOP-like pauses: a node stops ticking and handling messages, then resumes."""
    catch_up_ticks: bool = True
    """A resumed node is given every tick it missed (the runtime's ``TickClock``); off
    models a runtime that adds one tick per wake-up."""
    clock_drift: float = 0.0
    """Each node's clock runs at a rate drawn from ``1 +- clock_drift``, from a random
    phase (skew)."""
    transfers: bool = False
    lease_reads: bool = False
    lease_drift_ticks: int = 4
    apply_lag: int = 0
    """``max_committed_per_ready`` (0: no cap): nodes apply at most this many entries per
    Ready, so commit runs ahead of apply."""
    step_in_ready: float = 0.0
    """Probability that a Ready's node steps messages (and ticks) before ``advance``."""
    torn_writes: bool = False
    """Crashes may tear the write in progress (see ``SimDisk.tear``)."""
    min_voters: int = 3
    """Membership changes may remove voters down to this many."""
    leader_faults: float = 0.0
    """Probability per tick of a fault aimed at the leader: cut off, deaf (it still sends)
    or paused, for one to four election timeouts; many elections and deposed leaders."""
    random_reads: float = 0.0
    """Probability that a client sends an operation to a random node, or to a node that
    believes it leads (a deposed leader, maybe), instead of the leader it knows."""
    leader_fault_kinds: str = ""
    """Comma-separated kinds of faults aimed at the leader (isolate, deaf, after_check,
    pause, crash, bounce, transfer_deaf, rack); empty: every kind the other options
    allow."""
    quick_restarts: bool = False
    """Crashed nodes come back after 1 to 3 ticks (a supervisor restarts them at once)
    instead of 5 to 60."""
    crash_on_vote: float = 0.0
    """Probability that a node crashes in the Ready that records a vote it granted, before
    that Ready is persisted (whatever the kernel sent ahead of persisting is out)."""
    pause_loses_inbox: bool = False
    """Messages sent to a paused node are lost (its peers' connections to it time out and
    drop what they queued), so it resumes knowing nothing of what happened meanwhile."""
    slow_apply: bool = False
    """A slow state machine: it applies one entry per tick, and the Ready that carries them
    stays outstanding (no ``advance``) until they are applied, while messages, ticks and
    proposals keep arriving. A restarted node takes ticks to re-apply its log."""
    broadcast_commit: bool = True
    """The kernel's ``broadcast_commit``: off, followers learn a commit from the next
    append or heartbeat (the runtime's default)."""

    def __post_init__(self) -> None:
        unknown = set(filter(None, self.leader_fault_kinds.split(","))) - set(LEADER_FAULT_KINDS)
        if unknown:
            raise ValueError(
                f"leader_fault_kinds={self.leader_fault_kinds!r}: unknown {sorted(unknown)}, "
                f"expected a comma-separated subset of {', '.join(LEADER_FAULT_KINDS)}"
            )

    @staticmethod
    def mixed(seed: int) -> SimOptions:
        """The options a sweep uses for ``seed``: cluster size and fault mix vary by seed."""
        rng = random.Random(f"options-{seed}")
        check_quorum = rng.random() < 0.8
        return SimOptions(
            seed=seed,
            nodes=rng.choice((3, 3, 5, 5, 7)),
            drop=rng.choice((0.0, 0.02, 0.1, 0.2)),
            duplicate=rng.choice((0.0, 0.05)),
            max_delay=rng.choice((1, 2, 4, 8)),
            partitions=rng.random() < 0.8,
            crashes=rng.random() < 0.8,
            membership=rng.random() < 0.6,
            snapshot_every=rng.choice((5, 20, 60)),
            pre_vote=rng.random() < 0.8,
            check_quorum=check_quorum,
            fault_rate=rng.choice((1.0, 2.0, 4.0)),
            long_delay=rng.choice((0.0, 0.0, 0.005, 0.02)),
            pauses=rng.random() < 0.5,
            clock_drift=rng.choice((0.0, 0.02, 0.05)),
            transfers=rng.random() < 0.5,
            lease_reads=check_quorum and rng.random() < 0.5,
            apply_lag=rng.choice((0, 0, 1, 3)),
            step_in_ready=rng.choice((0.0, 0.1, 0.3)),
            torn_writes=rng.random() < 0.5,
            min_voters=rng.choice((1, 2, 3)),
            random_reads=rng.choice((0.0, 0.2, 0.5)),
            leader_faults=rng.choice((0.0, 0.01, 0.03)),
            quick_restarts=rng.random() < 0.5,
            crash_on_vote=rng.choice((0.0, 0.0, 0.1)),
            pause_loses_inbox=rng.random() < 0.3,
            slow_apply=rng.random() < 0.3,
            # Drawn last, so that every earlier option of a seed is what it was before.
            broadcast_commit=rng.random() < 0.5,
        )

    def command(self) -> str:
        mixed = SimOptions.mixed(self.seed)
        parts = [f"python -m framework.sim.simulator --seed {self.seed}"]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "seed" and value != getattr(mixed, f.name):
                flag = "--" + f.name.replace("_", "-")
                parts.append(
                    f"{flag} {value}"
                    if not isinstance(value, bool)
                    else f"{flag} {'on' if value else 'off'}"
                )
        return " ".join(parts)
