"""A node of the simulated cluster and the simulator's bookkeeping about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from framework.core import RawNode, Ready
from framework.sim.disk import SimDisk
from framework.statemachine import KVStateMachine

__all__ = ["SimNode"]


@dataclass(slots=True)
class SimNode:
    """One simulated node: its kernel over its disk, its state machine, and what the
    simulator tracks of it (requests waiting on it, crashes, pauses, its clock)."""

    id: int
    store: SimDisk
    kernel: RawNode | None = None
    sm: KVStateMachine = field(default_factory=KVStateMachine)
    applied: int = 0
    proposals: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    """index -> (term, client id, attempt)."""
    reads: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    """read context -> (client id, attempt)."""
    ready_reads: list[tuple[int, bytes]] = field(default_factory=list)
    persisted_commit: int = 0
    crash_in_ready: str = ""
    down_until: int = -1
    removed: bool = False
    removed_at: int = 0
    survivors: tuple[int, ...] = ()
    """The voters its removal left, recorded once its kernel applied the removal."""
    retired: bool = False
    """Decommissioned by the operator (after its removal): never restarts."""
    rate: float = 1.0
    """Ticks of this node's clock per simulator tick (clock drift)."""
    phase: float = 0.0
    """Fraction of a tick accumulated (clock skew: nodes tick at different instants)."""
    paused_until: int = -1
    missed: float = 0.0
    """Ticks that elapsed on this node's clock while it was paused."""
    backlog: list[bytes] = field(default_factory=list)
    """Messages that arrived while it was paused, handled when it resumes."""
    apply_until: int = -1
    """The tick at which the entries of its outstanding Ready are applied (slow apply)."""
    deaf_until: int = -1
    """After a pause that lost its inbox, messages to it are lost until this tick (its
    peers reconnect with backoff)."""
    voted: tuple[int, int] = (0, 0)
    """(term, vote) of the hard state it last persisted."""
    unfinished: tuple[Ready, str] | None = None
    """A persisted Ready whose entries are still being applied (slow apply), and where in
    it the node is to crash; ``advance`` comes at the next tick, input keeps arriving."""

    @property
    def paused(self) -> bool:
        return self.paused_until >= 0

    @property
    def up(self) -> bool:
        return self.kernel is not None
