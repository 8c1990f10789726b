"""`NodeStatusActor`: the node status owned by one task, written through a bounded mailbox.

Theory of operation
-------------------
The seed's ``Arc<RwLock<NodeStatus>>`` makes every reader take a lock that a publishing
writer holds, so a writer that awaits while holding it (slow I/O) stalls every reader
(``legacy.status``). The plan's fix (1.1 Actor Pattern) is a task that owns the status:

- **One writer.** Only the actor task (`NodeStatusActor.run`) changes the status. Writers
  send it `_Publish` requests through a bounded anyio memory object stream (the mailbox,
  `MAILBOX_CAPACITY` requests); the actor applies them one at a time, in mailbox order,
  and acknowledges each, so a ``publish`` that returned is visible to every later ``read``.
- **Lock-free reads.** The status is an immutable (frozen) `NodeStatus`, and the actor
  replaces the reference rather than changing the value. ``read`` returns the reference
  without awaiting anything: it never queues behind a writer, and it always sees a whole
  status, the one before or the one after an update (see `NodeStatusActor.read`).
- **Bounded, with deadlines.** A full mailbox makes writers wait (backpressure), never
  grow a buffer; each ``publish`` waits at most the ``raft_message`` timeout and then
  raises `TimeoutError` naming the actor.
- **No hangs at shutdown.** When ``run`` is cancelled the mailbox is closed and every
  publisher still waiting (for room, or for its acknowledgement) gets a `RuntimeError`
  naming the actor; later publishes get it at once.

There are no locks, so `lock_stats` is zero; `stats` counts requests handled and the
mailbox's high-water mark instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint_if_cancelled
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from framework.seams import LockStats, NodeStatus

if TYPE_CHECKING:
    from framework.config import Settings

__all__ = [
    "DEFAULT_PUBLISH_TIMEOUT",
    "MAILBOX_CAPACITY",
    "NodeStatusActor",
    "StatusActorStats",
    "publish_timeout_from",
]

MAILBOX_CAPACITY: Final = 1024
"""Publish requests the mailbox holds before writers wait for room.

Fixed rather than ``performance.backpressure.max_pending`` (10000 and more), which sizes
queues of peer messages and client requests. The status has one regular writer, the Ready
loop, which publishes at most once per Ready and waits for the acknowledgement, so the mailbox
rarely holds more than one request; 1024 leaves ample room for extra writers (admin
tools, tests) while bounding what a stalled actor can accumulate.
"""

DEFAULT_PUBLISH_TIMEOUT: Final = 1.0
"""Seconds a publish may take when ``performance.timeouts.raft_message`` is not set."""


def publish_timeout_from(settings: Settings) -> float:
    """How long a publish may wait: the ``raft_message`` base timeout, else one second.

    A publish is part of handling a Ready, so it gets the budget of a Raft message.
    """
    timeout = settings.performance.timeouts.get("raft_message")
    return DEFAULT_PUBLISH_TIMEOUT if timeout is None else timeout.base_timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusActorStats:
    """What the actor did: the lock-free counterpart of `LockStats`."""

    name: str
    processed: int
    """Publish requests the actor applied."""
    mailbox_depth: int
    """Requests in the mailbox now, not yet taken by the actor."""
    mailbox_high_water: int
    """The most requests the mailbox held at once (at most ``mailbox_capacity``)."""
    mailbox_capacity: int
    waiting_publishers: int
    """Publishers waiting for room because the mailbox is full."""


class _Publish:
    """One request in the mailbox: apply ``status``, then set ``done``.

    ``failed`` is set (with ``done``) instead when the actor stops before applying it.
    """

    __slots__ = ("done", "failed", "status")

    def __init__(self, status: NodeStatus) -> None:
        self.status = status
        self.done = anyio.Event()
        self.failed = False


class NodeStatusActor:
    """`StatusStore`: the status is owned by the ``run`` task; see the module docstring.

    State carried across a swap: the current `NodeStatus`.

    The mailbox is made at the first ``publish`` or at ``run``, whichever comes first (so a
    store that is built and discarded unstarted holds no stream). A publish made before
    ``run`` waits in the mailbox until the actor starts, or until its timeout.
    """

    __slots__ = (
        "_capacity",
        "_high_water",
        "_inbox",
        "_mailbox",
        "_pending",
        "_processed",
        "_publish_timeout",
        "_started",
        "_status",
        "_stopped",
        "name",
    )

    def __init__(
        self,
        node_id: int,
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        mailbox_capacity: int = MAILBOX_CAPACITY,
    ) -> None:
        if publish_timeout < 0:
            raise ValueError(
                f"publish_timeout {publish_timeout!r} is negative; expected seconds >= 0"
            )
        if mailbox_capacity < 1:
            raise ValueError(
                f"mailbox_capacity {mailbox_capacity!r} is below 1; expected a positive count"
            )
        self.name = f"NodeStatusActor of node {node_id}"
        # Written by the actor task only (and by import_state, see there).
        self._status = NodeStatus(node_id=node_id)
        self._publish_timeout = publish_timeout
        self._capacity = mailbox_capacity
        self._mailbox: MemoryObjectSendStream[_Publish] | None = None
        self._inbox: MemoryObjectReceiveStream[_Publish] | None = None
        # Requests whose publisher still waits; failed all at once when the actor stops, so
        # none waits for an acknowledgement that will never come (whether its request sits
        # in the buffer, waits for room, or was handed to the actor as it was cancelled).
        self._pending: set[_Publish] = set()
        self._processed = 0
        self._high_water = 0
        self._started = False
        self._stopped = False

    @classmethod
    def from_settings(cls, node_id: int, settings: Settings) -> NodeStatusActor:
        """The actor as the plugin builds it: publishes bounded by `publish_timeout_from`."""
        return cls(node_id, publish_timeout=publish_timeout_from(settings))

    @property
    def publish_timeout(self) -> float:
        """Seconds a ``publish`` may take before it raises `TimeoutError`."""
        return self._publish_timeout

    def __repr__(self) -> str:
        return f"<{self.name}>"

    # -- the actor task ------------------------------------------------------------------------

    def _streams(
        self,
    ) -> tuple[MemoryObjectSendStream[_Publish], MemoryObjectReceiveStream[_Publish]]:
        if self._mailbox is None or self._inbox is None:
            self._mailbox, self._inbox = anyio.create_memory_object_stream[_Publish](self._capacity)
        return self._mailbox, self._inbox

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Apply publish requests in mailbox order until cancelled, then fail the rest."""
        if self._started:
            raise RuntimeError(f"{self.name} was already started; a component runs once")
        self._started = True
        mailbox, inbox = self._streams()
        try:
            task_status.started()
            # Never ends on its own: this actor holds the mailbox's only send stream open.
            async for request in inbox:
                self._apply(request, inbox)
        finally:
            # Synchronous (no await), so it completes even though we are being cancelled.
            self._stopped = True
            mailbox.close()  # new sends, and publishers waiting for room: ClosedResourceError
            for request in self._pending:
                if not request.done.is_set():  # applied ones just await their wake-up
                    request.failed = True
                    request.done.set()
            self._pending.clear()
            inbox.close()  # drops requests still buffered; their publishers were just failed

    def _apply(self, request: _Publish, inbox: MemoryObjectReceiveStream[_Publish]) -> None:
        # Taking a request moves a waiting publisher's request into the freed slot, so a
        # full buffer after the take means it was full before it too.
        depth = min(inbox.statistics().current_buffer_used + 1, self._capacity)
        self._high_water = max(self._high_water, depth)
        self._status = request.status
        self._processed += 1
        request.done.set()

    # -- StatusStore ---------------------------------------------------------------------------

    async def publish(self, status: NodeStatus) -> None:
        """Hand ``status`` to the actor and wait until it is applied.

        Raises `TimeoutError` naming the actor when that takes longer than the publish
        timeout (the update may still be applied later if it was queued), and
        `RuntimeError` naming the actor when the actor stopped before applying it.
        """
        if self._stopped:
            await self._refuse()
        mailbox, _ = self._streams()
        request = _Publish(status)
        self._pending.add(request)
        queued = False
        try:
            with anyio.move_on_after(self._publish_timeout) as deadline:
                try:
                    await mailbox.send(request)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    request.failed = True  # the actor closed the mailbox as it stopped
                else:
                    queued = True
                    await request.done.wait()
        finally:
            self._pending.discard(request)
        if request.failed:
            await self._refuse()
        if request.done.is_set():  # applied, even if the deadline struck too
            return
        assert deadline.cancelled_caught  # nothing else leaves the scope without `done`
        raise self._timeout_error(queued)

    async def read(self) -> NodeStatus:
        # The actor pattern's lock-free read. The actor task is the single writer of
        # `_status`, and it never mutates a NodeStatus (frozen), it only rebinds the
        # attribute to a new one. Every task of this node runs on one event loop thread, so
        # the attribute read below happens entirely between two of the actor's steps: it
        # returns a whole snapshot, old or new, never a torn one. No lock, no mailbox
        # round trip, no await: a reader cannot wait behind a writer, however slow.
        return self._status

    def export_state(self) -> NodeStatus:
        return self._status

    def import_state(self, state: Any) -> None:
        """Take over a predecessor's status (before ``run``, or while the swap makes this
        store reachable: no publisher can have reached it yet, so this second writer
        cannot interleave with the actor's updates)."""
        if not isinstance(state, NodeStatus):
            raise TypeError(f"status store state must be a NodeStatus, not {type(state).__name__}")
        if state.node_id != self._status.node_id:
            raise ValueError(
                f"status of node {state.node_id} imported into the store of node "
                f"{self._status.node_id}"
            )
        self._status = state

    def lock_stats(self) -> LockStats:
        return LockStats()  # no locks: that is the point

    # -- accounting and errors -----------------------------------------------------------------

    def stats(self) -> StatusActorStats:
        depth = waiting = 0
        if self._mailbox is not None and not self._stopped:
            counts = self._mailbox.statistics()
            depth, waiting = counts.current_buffer_used, counts.tasks_waiting_send
        return StatusActorStats(
            name=self.name,
            processed=self._processed,
            mailbox_depth=depth,
            mailbox_high_water=self._high_water,
            mailbox_capacity=self._capacity,
            waiting_publishers=waiting,
        )

    async def _refuse(self) -> NoReturn:
        """Fail a publish because the actor stopped, unless the publisher is itself being
        cancelled: when a node shuts down, its actor and the task publishing to it are
        cancelled together, and that publisher must see its cancellation, not an error."""
        await checkpoint_if_cancelled()
        raise RuntimeError(
            f"{self.name} is stopped (its run task was cancelled); the status was not published"
        )

    def _timeout_error(self, queued: bool) -> TimeoutError:
        depth = self.stats().mailbox_depth
        where = (
            "it is queued and may still be applied"
            if queued
            else "it never got into the full mailbox"
        )
        started = "" if self._started else "; the actor's run task has not started"
        return TimeoutError(
            f"{self.name}: publish not applied within {self._publish_timeout:g}s ({where}; "
            f"mailbox holds {depth} of {self._capacity}){started}"
        )
