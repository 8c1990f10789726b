"""How time and messages enter the kernel, so that a leader never loses leadership to its
own pauses or its followers' disks.

Theory of operation
-------------------
Everything a node does shares the Ready loop, and the loop stops stepping the kernel while
it waits for the disk (a ``Ready`` being persisted) or for a worker thread (a snapshot being
serialised). Three things used to go wrong around such a wait (issue #13):

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
   persistence waits for the next Ready as usual.

3. **Heartbeat answers behind the disk.** A follower answered only after its own write
   (the kernel held its ``HeartbeatResponse`` with the answers that need persistence, and
   its loop stepped nothing meanwhile), so a leader whose followers' disks were slow
   deposed itself by check-quorum. The answer promises nothing durable (the argument is on
   ``HeartbeatResponse``), so the time keeper keeps a follower's time too: it steps the
   ``Heartbeat`` messages of its leader in its term, then the ticks due, and sends the
   answers. Everything else it takes from the inbox it holds, in the order the inbox gave
   it, for the Ready loop (``arrivals``, held first): an append stepped while a write is
   outstanding would change the log under the write. At most ``HELD_MAX`` messages are
   held; beyond that the inbox is left alone (it is bounded and sheds as usual), no more
   heartbeats are answered until the write ends, and no ticks are delivered either: a
   follower that cannot see its leader's heartbeats must not count the time as silence
   (the ticks wait for the Ready loop, which gives a follower at most half an election
   timeout of them at once, point 5). A heartbeat stepped ahead of an
   append that arrived before it is a reordering Raft tolerates from any network: its
   commit index is at most what this follower acknowledged, so durable here already.

4. **Every wait of the loop, not only the disk's.** The 10-minute soak
   (``benchmarks/bench_soak.py``, 512 writers, a snapshot every 100,000 entries) still began
   terms, and every one came with a snapshot that all three nodes took at about the same
   index: the Ready loop waited 80-260 ms (measured) for the store to record it
   (``commit_snapshot`` deleted the compacted entries then; now a store that can prune
   deletes them later, a batch at a time), and nobody kept time meanwhile. The
   leader sent no heartbeats and its followers answered none; their ticks then arrived in
   one burst (25 and 50 were seen) and a follower campaigned. So the loop keeps time across
   each of its waits (``keeping``): storing a Ready, recording a local snapshot, serialising a
   state machine that has no ``snapshot_chunks``, restoring a leader's snapshot. Not a
   flag change: plugins are swapped then, the transport among them, and a swap is short.

5. **A follower's burst of ticks is capped.** When a follower's event loop itself is held
   (no task runs: another thread holds the GIL, the process waits for a CPU or was
   stopped), the ticks of the hold arrive together while the leader's messages of that
   time are still unread in the socket; a hold as long as an election timeout made it
   campaign on waking although its leader was alive. A follower, pre-candidate or candidate
   is given at most ``follower_burst_max`` ticks (half the shortest election timeout) in
   one step and the rest are dropped (counted in the role changes' ``ticks_dropped``). Its
   election timer then runs slow by the length of the hold, which only delays a campaign:
   a follower that counts slowly ignores a candidate longer, so a leader's lease, which
   relies on followers not voting before an election timeout of real time has passed
   (§6.4.1), only gets safer. A leader's ticks are never dropped: its lease and its
   check-quorum are measured in them (``RawNode.tick``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from framework.core import Heartbeat, InvalidMessage, Message, RawNode, ReadIndexRequest, Role
from framework.runtime.role_changes import RoleChanges

__all__ = ["HELD_MAX", "TimeKeeper", "follower_burst_max", "step_inputs"]

HELD_MAX: Final = 4096
"""Messages a follower's time keeper holds for the Ready loop (the module's point 3)."""


def step_inputs(
    kernel: RawNode,
    messages: Iterable[Message],
    ticks: int,
    *,
    on_invalid: Callable[[InvalidMessage], None],
    changes: RoleChanges | None = None,
) -> None:
    """Step ``messages`` (in arrival order), then deliver ``ticks``, then step the read
    requests among the messages (see the module's point 1). A change of role or term under
    an input is reported to ``changes`` (``role_changes.py``)."""
    reads: list[Message] = []
    role, term = kernel.role, kernel.term
    burst = ticks
    if ticks > 1 and role is not Role.LEADER:
        ticks = min(ticks, follower_burst_max(kernel))  # the module's point 5
        if changes is not None:
            changes.ticks_dropped += burst - ticks
    for msg in messages:
        if isinstance(msg, ReadIndexRequest):
            reads.append(msg)
            continue
        try:
            kernel.step(msg)
        except InvalidMessage as exc:
            on_invalid(exc)
            continue
        if changes is None:
            continue
        if kernel.role is not role or kernel.term != term:
            changes.on_message(kernel, msg, role, term)
            role, term = kernel.role, kernel.term
        if role is Role.FOLLOWER and msg.src == kernel.leader:
            changes.heard_at = kernel.clock
    for _ in range(ticks):
        kernel.tick()
        if changes is not None and (kernel.role is not role or kernel.term != term):
            changes.on_tick(kernel, role, burst)
            role, term = kernel.role, kernel.term
    for msg in reads:
        try:
            kernel.step(msg)
        except InvalidMessage as exc:
            on_invalid(exc)


def follower_burst_max(kernel: RawNode) -> int:
    """The most ticks a follower (or candidate) is given in one step: half the shortest
    election timeout, so that no hold of the node's own loop alone makes it campaign (the
    module's point 5)."""
    return max(1, kernel.config.election_tick // 2)


class TimeKeeper:
    """Keeps a leader's and a follower's time while the Ready loop waits (the module's
    points 2 and 3).

    The Ready loop keeps the time keeper on for the length of each of its waits (``with
    keeper.keeping(kernel): await ...``), and takes its messages with ``arrivals()``; the
    ticker calls ``keep()`` every tick interval, which acts only inside a wait and only on
    a leader or on a follower that knows its leader. ``keep`` runs on the event loop, like
    the Ready loop, so it never runs at the same time as the loop's own use of the kernel.
    """

    def __init__(
        self,
        *,
        take_inbox: Callable[[int | None], list[Message]],
        ticks_due: Callable[[], int],
        send: Callable[[tuple[Message, ...]], None],
        on_invalid: Callable[[InvalidMessage], None],
    ) -> None:
        self._take_inbox = take_inbox
        """Take up to ``limit`` messages from the inbox (None: all)."""
        self._ticks_due = ticks_due
        self._send = send
        self._on_invalid = on_invalid
        self._kernel: RawNode | None = None
        self._held: list[Message] = []
        """A follower's messages taken during a wait and not stepped (point 3)."""
        self.kept = 0
        """Tick intervals in which a node's time was kept during a wait (for tests and
        the status page)."""
        self.role_changes = RoleChanges()
        """Why the kernel's role changed under the inputs stepped here (the health page)."""

    @contextmanager
    def keeping(self, kernel: RawNode) -> Iterator[None]:
        """Keep ``kernel``'s time while the Ready loop waits in this block (waits do not
        nest: the loop waits for one thing at a time)."""
        if self._kernel is not None:
            raise RuntimeError("TimeKeeper.keeping: already keeping time for a wait")
        self._kernel = kernel
        try:
            yield
        finally:
            self._kernel = None

    def arrivals(self) -> list[Message]:
        """The messages for the Ready loop to step: those held during a wait, then the
        inbox's."""
        held, self._held = self._held, []
        inbox = self._take_inbox(None)
        if not held:
            return inbox
        held.extend(inbox)
        return held

    def step_arrivals(self, kernel: RawNode, ticks: int) -> None:
        """The Ready loop's step: ``arrivals()`` and ``ticks`` (``step_inputs``)."""
        step_inputs(
            kernel, self.arrivals(), ticks, on_invalid=self._on_invalid, changes=self.role_changes
        )

    def keep(self) -> None:
        kernel = self._kernel
        if kernel is None:
            return
        if kernel.role is Role.LEADER:
            inputs = self.arrivals()
        elif kernel.role is Role.FOLLOWER and kernel.leader != 0:
            if len(self._held) >= HELD_MAX:
                return  # it cannot look for its leader's heartbeats: its ticks wait too
            inputs = self._leader_heartbeats(kernel)
        else:
            return
        self.kept += 1
        ticks = self._ticks_due()
        changes = self.role_changes
        step_inputs(kernel, inputs, ticks, on_invalid=self._on_invalid, changes=changes)
        messages = kernel.take_messages()
        if messages:
            self._send(messages)

    def _leader_heartbeats(self, kernel: RawNode) -> list[Message]:
        """Take the inbox (up to ``HELD_MAX`` held); return the heartbeats of the leader in
        its term, hold the rest."""
        leader, term = kernel.leader, kernel.term
        beats: list[Message] = []
        for msg in self._take_inbox(HELD_MAX - len(self._held)):
            if isinstance(msg, Heartbeat) and msg.src == leader and msg.term == term:
                beats.append(msg)
            else:
                self._held.append(msg)
        return beats
