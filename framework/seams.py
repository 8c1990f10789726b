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
``timeout``, ``send``); only the status store is awaited, because reading it is what the
plan's ``RwLock`` vs actor comparison is about.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from anyio.abc import TaskStatus

from framework.errors import Overloaded

if TYPE_CHECKING:
    from framework.core import Message

__all__ = [
    "SEAMS",
    "SWAPPABLE_SEAMS",
    "Component",
    "ConnectionPool",
    "ImmediateWrites",
    "LockStats",
    "MessageQueue",
    "MetricsPrimitives",
    "NodeStatus",
    "PeerConnection",
    "PeerDialer",
    "PeerLinkStats",
    "PoolStats",
    "PooledTransport",
    "Priority",
    "QueueFull",
    "QueueStats",
    "SendGuard",
    "StatusStore",
    "TimeoutPolicy",
]

T = TypeVar("T")

SEAMS: tuple[str, ...] = (
    "transport",
    "status_store",
    "queue",
    "timeouts",
    "send_guard",
    "metrics",
    "connection_pool",
)
"""Seam names, as used by factory hooks, ``raftmw plugins`` and swap reports."""

SWAPPABLE_SEAMS: tuple[str, ...] = tuple(seam for seam in SEAMS if seam != "transport")
"""Seams whose component a flag selects and a live node swaps; the transport is chosen by
the ``transport.kind`` setting, once, at start."""


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
    effective_capacity: int | None = None
    """The admission limit in force now, where it adapts (None: ``capacity`` is the limit)."""
    memory_pressure: float | None = None
    """Memory use as a fraction of the budget at the last reading (None: not watched)."""
    rejected_by_reason: Mapping[str, int] | None = None
    """``rejected`` split by reason (``full``, ``memory``, ``shed``), where known."""


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
        """What the node learned about ``peer``: ``ok=False`` when a send failed (connection
        refused, queue overflow), ``ok=True`` whenever a batch of messages arrived from it.
        Called on the event loop, once per received batch: keep it cheap."""
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


# -- the peer connection pool -----------------------------------------------------------------
#
# Which connections are the pool's: TCP keeps one connection per peer pair and the node with
# the lower id dials (``framework.transport.tcp``, rule 1). The pool owns the *dialled*
# connections, those to peers with a higher id than this node: it dials them, redials them,
# queues the messages for them and writes them. The transport keeps the rest:
#
# - the accept side. A peer with a lower id dials this node, and the transport writes this
#   node's messages to it on that accepted connection, through its own per-peer queue and
#   writer task, as before. An accepted connection cannot be re-established from this end
#   (only the lower id dials), so a pool that owned it could only close it: a pool swap
#   would cut every link from lower ids until those peers noticed and redialled.
# - the read side of dialled connections. Both directions share a connection, so the peer's
#   messages arrive on the connection the pool dialled; the transport reads them in a task
#   of its own (started by ``PeerDialer.dial``) and delivers them to the node. The pool only
#   writes, which is all the plan's lock contention is about.
#
# Connections are never moved between pools: at a swap the new pool dials afresh (the peer
# replaces its older connection with the newer one) and the old pool closes its own when its
# ``run`` is cancelled. Only the queued messages move (``export_state``).


@runtime_checkable
class PeerConnection(Protocol):
    """One established connection to a peer, dialled and handshaken by a `PeerDialer`.

    The transport reads the peer's messages from it; its owner (a pool) writes and closes it.
    """

    @property
    def closed(self) -> bool:
        """True once the connection is closed, by either end; it never reopens."""
        ...

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Write whole frames, in order. Raises ``OSError`` (``ConnectionLost``) if the
        connection is or becomes dead; a write cancelled part-way closes the connection,
        since half a frame on the wire poisons everything after it."""
        ...

    async def wait_closed(self) -> None:
        """Return once the connection is closed (by either end)."""
        ...

    async def aclose(self) -> None:
        """Close the connection and return once its socket is released. Idempotent, and
        finishes even in a cancelled scope (it shields itself), so it is safe in cleanup."""
        ...


@runtime_checkable
class ImmediateWrites(Protocol):
    """What a `PeerConnection` may also offer: a write handed to the socket at once, without
    a writer task's wake-up in between (issue #15: on one write's path, a follower's
    acknowledgement waited about 0.1 ms for the Ready loop's pass to end and the writer to
    run). A pool writes through it when nothing is queued ahead
    (``framework.transport.pool.write_at_once``); a connection without it (a test's wrapper
    that paces or stalls writes, a transport of a user's own) is written by the pool's
    writer, as before."""

    @property
    def writable_now(self) -> bool:
        """A write now would go out whole at once: the connection is open, no write is in
        progress and its transport is not holding bytes back."""
        ...

    def write_now(self, frames: Sequence[bytes]) -> None:
        """Hand ``frames`` to the socket, in order, without waiting. Only right after
        ``writable_now`` said so, with no ``await`` in between."""
        ...


class PeerDialer(Protocol):
    """What a transport gives its connection pool: how to reach a peer, how messages become
    frames, and whom to tell when messages are lost."""

    async def dial(self, peer: int, address: str) -> PeerConnection:
        """Connect to ``peer`` at ``address`` and shake hands, each step bounded by the
        transport's connect timeout. Raises ``OSError`` when the peer cannot be reached:
        refused, timed out, the handshake refused or not answered, or the transport is not
        serving, or no longer dials ``peer`` at ``address``. On success the transport is
        already reading the connection; the caller owns it and must ``aclose`` it. If the
        connection later fails (the peer closes it, a write fails) the transport reports
        ``peer`` unreachable; closing it with ``aclose`` is not a failure."""
        ...

    def encode(self, peer: int, messages: Sequence[Message]) -> list[bytes]:
        """The frames that carry ``messages`` to ``peer``: one if they fit in the peer's
        frame size limit, more if not; a message too big for any frame is dropped and
        ``peer`` reported unreachable."""
        ...

    def unreachable(self, peer: int) -> None:
        """Tell Raft that messages to ``peer`` were lost (``PeerInbox.peer_unreachable``)."""
        ...

    @property
    def timeouts(self) -> TimeoutPolicy | None:
        """The node's timeout policy (`PooledTransport.use_timeouts`; None until given): a
        pool bounds each peer write by its ``raft_message`` timeout and reports the write to
        it (``framework.transport.pool.LinkWrites``)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerLinkStats:
    """One peer as its pool sees it."""

    peer: int
    address: str
    state: str
    """``connected``, ``connecting`` (a dial is in flight), ``backoff`` (waiting to redial
    after a failure), ``idle`` (not connected and no dial due yet) or ``restarting`` (the
    peer's task crashed and waits to restart)."""
    queued: int
    """Messages waiting to be written."""
    dial_attempts: int
    dropped: int
    """Messages dropped: no connection, queue full, or lost with a failed connection."""
    restarts: int = 0
    """Times the peer's task was restarted after a crash (pools that supervise tasks)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    connections_open: int
    queued: int
    dial_attempts: int
    dropped: int
    peers: Mapping[int, PeerLinkStats] = field(default_factory=dict)


@runtime_checkable
class ConnectionPool(Component, Protocol):
    """The connections this node dials (to peers with a higher id) and the messages waiting
    for them. Built with the transport's `PeerDialer`; the transport routes every message
    for a higher-id peer to ``send``.

    Duties of every implementation (``tests/plugins/test_connection_pool_contract.py``):

    - ``send`` never blocks and never raises for a down peer; messages a peer cannot be
      given (unknown peer, no connection, queue full, connection lost under them) are
      dropped and the peer reported through ``PeerDialer.unreachable``;
    - messages queued for one peer are written in order, coalesced: everything queued when
      the writer comes round goes out together (``PeerDialer.encode``, one frame if it fits);
    - every peer in the address book is kept connected (a peer with a higher id can only
      reach this node over the connection this node dials) and redialled with backoff after
      a failed dial; a connection that closes under the pool is redialled (the transport,
      which sees the failure first, reports it: see ``PeerDialer.dial``);
    - ``run`` cancelled: every connection closed (``aclose``) and every task ended.

    Swap state (``export_state``/``import_state``): ``dict[int, list[Message]]``, the
    messages queued per peer, in order; export *moves* them out. Connections do not move.
    """

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        """Replace the address book of peers to dial: new peers are dialled, removed ones
        closed (their queued messages dropped, unreported), a changed address redialled."""
        ...

    def send(self, peer: int, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for ``peer``, in order; never blocks."""
        ...

    def stats(self) -> PoolStats: ...


@runtime_checkable
class PooledTransport(Protocol):
    """A transport whose dialled connections are kept by a `ConnectionPool` (TCP is one;
    the in-memory network has no connections and is not). The node builds the pool from
    ``dialer`` and hands every pool it starts, or swaps in, to ``use_pool``."""

    @property
    def dialer(self) -> PeerDialer: ...

    def use_pool(self, pool: ConnectionPool) -> None:
        """Route dialled traffic through ``pool`` from now on (its ``run`` is started by
        whoever built it). Called with no await between the predecessor's state moving into
        ``pool`` and the predecessor being cancelled, so no message slips between them."""
        ...

    def use_timeouts(self, policy: TimeoutPolicy) -> None:
        """Time each dial by ``policy.timeout("connect")`` and report how long a connection
        took (or that it timed out) to ``policy.observe``. Called when the node starts and
        whenever the timeout policy is swapped."""
        ...
