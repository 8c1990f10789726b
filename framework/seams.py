"""The seams: one protocol per swappable runtime component, and what every component shares.

A node holds one component per seam, built by a plugin through a factory hook
(``framework.hooks``) from the flags in force. When a flag changes, the node builds the new
component, moves the old one's state into it, swaps them between two Ready iterations, and
closes the old one (``framework.runtime.components``). So every component:

- has a ``run`` coroutine the node starts in its own task group (``task_status.started()``
  once usable; returns when cancelled, having released everything it took), and
- can ``export_state()`` / ``import_state(state)``: the state that must survive a swap
  (queued items, per-peer breaker states, RTT estimates, counters).

The hot paths call components synchronously where they can (``put_nowait``, ``allow``,
``timeout``); only the status store is awaited, because reading it is what the plan's
``RwLock`` vs actor comparison is about.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from anyio.abc import TaskStatus

from framework.errors import Overloaded

__all__ = [
    "SEAMS",
    "Component",
    "LockStats",
    "MessageQueue",
    "MetricsPrimitives",
    "NodeStatus",
    "Priority",
    "QueueFull",
    "QueueStats",
    "SendGuard",
    "StatusStore",
    "TimeoutPolicy",
]

T = TypeVar("T")

SEAMS: tuple[str, ...] = ("status_store", "queue", "timeouts", "send_guard", "metrics")
"""Seam names, as used by factory hooks, ``raftmw plugins`` and swap reports."""


@dataclass(frozen=True, slots=True)
class LockStats:
    """The plan's lock metrics: how often locks were taken, contended, and waited on."""

    acquisitions: int = 0
    contended: int = 0
    wait_seconds: float = 0.0

    def __add__(self, other: LockStats) -> LockStats:
        return LockStats(
            self.acquisitions + other.acquisitions,
            self.contended + other.contended,
            self.wait_seconds + other.wait_seconds,
        )


@runtime_checkable
class Component(Protocol):
    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Serve until cancelled; report started once usable; release everything on exit."""
        ...

    def export_state(self) -> Any:
        """What the replacement needs to carry on (called once, just before the swap)."""
        ...

    def import_state(self, state: Any) -> None:
        """Take over a predecessor's exported state (called before ``run``)."""
        ...

    def lock_stats(self) -> LockStats:
        """Lock accounting of this component (zero for lock-free ones)."""
        ...


# -- node status ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    node_id: int
    role: str = "starting"
    term: int = 0
    leader: int = 0
    commit: int = 0
    applied: int = 0
    first_index: int = 1
    last_index: int = 0
    snapshot_index: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    progress: Mapping[int, tuple[str, int, int]] = field(default_factory=dict)


class StatusStore(Component, Protocol):
    """The node's status: the Ready loop publishes, clients and admin requests read."""

    async def publish(self, status: NodeStatus) -> None: ...

    async def read(self) -> NodeStatus: ...


# -- queues between tasks --------------------------------------------------------------------


class Priority(enum.IntEnum):
    """Raft traffic that keeps the cluster alive goes first and is shed last."""

    CRITICAL = 0
    """Votes, heartbeats and their answers, TimeoutNow: losing them costs elections."""
    HIGH = 1
    """Replication: appends, acknowledgements, snapshots."""
    NORMAL = 2
    """Client proposals and reads."""


class QueueFull(Overloaded):
    """A bounded queue refused the item; nothing was enqueued."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    name: str
    depth: int
    capacity: int | None
    """None when unbounded."""
    max_depth: int
    enqueued: int
    rejected: int
    """Refused at ``put_nowait`` plus accepted-then-shed (evicted) items."""


@runtime_checkable
class MessageQueue(Component, Protocol[T]):
    """A queue from producers (transport, clients) to the Ready loop, which drains it.

    Swap state (``export_state``/``import_state``) is ``list[tuple[item, Priority]]`` in
    drain order, and export *moves* the items out: the old queue is empty afterwards.
    """

    def put_nowait(self, item: T, priority: Priority = Priority.NORMAL) -> None:
        """Enqueue or raise ``QueueFull``; never blocks. An accepted item is drained once,
        or, if a bounded queue later evicts it, handed to the ``on_shed`` callback given at
        construction (exactly one of the two)."""
        ...

    def drain(self, limit: int | None = None) -> list[T]:
        """Take up to ``limit`` items (``0``: none; negative: ``ValueError``), FIFO within a
        priority. Queues that honour priorities return higher ones first; an unbounded
        legacy queue may ignore priority and return plain FIFO order."""
        ...

    def __len__(self) -> int: ...

    def stats(self) -> QueueStats: ...


# -- timeouts ---------------------------------------------------------------------------------


class TimeoutPolicy(Component, Protocol):
    """How long an operation (``raft_message``, ``client_request``, ``connect``, ...) may take."""

    def timeout(self, operation: str, attempt: int = 0) -> float:
        """Seconds for this attempt (later attempts may back off)."""
        ...

    def observe(self, operation: str, seconds: float, *, ok: bool) -> None:
        """Report how long an operation took and whether it finished in time."""
        ...

    def stats(self) -> Mapping[str, Mapping[str, float]]: ...


# -- the guard around peer sends --------------------------------------------------------------


class SendGuard(Component, Protocol):
    """Decides whether messages to a peer are sent now; learns from delivery outcomes."""

    def allow(self, peer: int, messages: Sequence[Any]) -> Sequence[Any]:
        """The subset of ``messages`` to send to ``peer`` now (all, some, or none)."""
        ...

    def record(self, peer: int, *, ok: bool) -> None:
        """A send to ``peer`` succeeded or failed (connection refused, queue overflow)."""
        ...

    def states(self) -> Mapping[int, str]:
        """Per-peer state for status pages (e.g. closed / open / half_open)."""
        ...


# -- metrics primitives -----------------------------------------------------------------------


class MetricsPrimitives(Component, Protocol):
    """Counters and histograms the runtime updates on its hot path."""

    def add(self, name: str, value: int = 1) -> None: ...

    def record(self, name: str, value: float) -> None: ...

    def snapshot(self) -> Mapping[str, Any]:
        """Counters as ints; histograms as {count, sum, p50, p99, max}."""
        ...
