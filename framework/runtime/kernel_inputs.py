"""How time and messages enter the kernel, so that a leader never loses leadership to its
own pauses.

Theory of operation
-------------------
Everything a node does shares the Ready loop, and the loop stops stepping the kernel while
it waits for the disk (a ``Ready`` being persisted) or for a worker thread (a snapshot being
serialised). Two things used to go wrong around such a wait (issue #13):

1. **Ticks ahead of answers.** On waking, every tick of the wait was delivered before the
   messages that arrived during it. A leader whose wait lasted most of an election timeout
   then ran its check-quorum (D §6.2) before stepping the followers' answers that sat in its
   inbox, and stepped down although every follower had answered. So ``step_inputs`` steps
   the messages that arrived first, then the ticks, then the read requests.

   Lease safety (``TickClock``) is kept: a lease is judged when a read is served, and every
   read (a local one, or a follower's ``ReadIndexRequest``) is stepped *after* the ticks
   due; a heartbeat answer stepped early carries the tick its round was sent at
   (``sent_tick``), so it extends no lease past what that round proves.

2. **Heartbeats behind the disk.** A leader only sends heartbeats from ``tick()``, and
   nothing ticked it while its Ready was being written: a storage stall of an election
   timeout silenced the leader and its followers elected another. ``TimeKeeper`` keeps a
   leader's time while the loop waits: every tick interval it steps the messages that
   arrived and the ticks due (with ``step_inputs``) and sends what the kernel sends without
   waiting for the disk (``RawNode.take_messages``: heartbeats, appends). The kernel allows
   ``step``/``tick`` between ``ready()`` and ``advance()``; what they produce that needs
   persistence waits for the next Ready as usual. Only a leader is kept: a follower's
   answers promise durability and must wait for its disk, and a follower's inbox is stepped
   (messages first) as soon as the loop wakes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from framework.core import InvalidMessage, Message, RawNode, ReadIndexRequest, Role

__all__ = ["TimeKeeper", "step_inputs"]


def step_inputs(
    kernel: RawNode,
    messages: Iterable[Message],
    ticks: int,
    *,
    on_invalid: Callable[[InvalidMessage], None],
) -> None:
    """Step ``messages`` (in arrival order), then deliver ``ticks``, then step the read
    requests among the messages (see the module's point 1)."""
    reads: list[Message] = []
    for msg in messages:
        if isinstance(msg, ReadIndexRequest):
            reads.append(msg)
            continue
        try:
            kernel.step(msg)
        except InvalidMessage as exc:
            on_invalid(exc)
    for _ in range(ticks):
        kernel.tick()
    for msg in reads:
        try:
            kernel.step(msg)
        except InvalidMessage as exc:
            on_invalid(exc)


class TimeKeeper:
    """Keeps a leader's time while the Ready loop waits (the module's point 2).

    The Ready loop opens a wait with ``waiting()`` / closes it with ``done()``; the ticker
    calls ``keep()`` every tick interval, which acts only inside a wait and only on a
    leader. ``keep`` runs on the event loop, like the Ready loop, so it never runs at the
    same time as the loop's own use of the kernel.
    """

    def __init__(
        self,
        *,
        take_inbox: Callable[[], Iterable[Message]],
        ticks_due: Callable[[], int],
        send: Callable[[tuple[Message, ...]], None],
        on_invalid: Callable[[InvalidMessage], None],
    ) -> None:
        self._take_inbox = take_inbox
        self._ticks_due = ticks_due
        self._send = send
        self._on_invalid = on_invalid
        self._kernel: RawNode | None = None
        self.kept = 0
        """Tick intervals in which a leader's time was kept during a wait (for tests and
        the status page)."""

    def waiting(self, kernel: RawNode) -> None:
        self._kernel = kernel

    def done(self) -> None:
        self._kernel = None

    def keep(self) -> None:
        kernel = self._kernel
        if kernel is None or kernel.role is not Role.LEADER:
            return
        self.kept += 1
        step_inputs(kernel, self._take_inbox(), self._ticks_due(), on_invalid=self._on_invalid)
        messages = kernel.take_messages()
        if messages:
            self._send(messages)
