"""`ConnectionPoolActor`: one task per peer owns that peer's connection and queue.

Theory of operation
-------------------
The legacy pool (``legacy.pool``) keeps every dialled connection in one dict behind one
lock and serves the peers from one sender task, so a connect to a slow peer holds up every
other peer's messages. The plan's fix (1.1 Actor Pattern, ``ConnectionPoolActor``) gives
each peer an actor:

- **One task per peer**, in the task group ``run`` owns. It dials its peer, carries the
  connection (writing its queue, coalesced: ``framework.transport.pool.pump``) until the
  connection closes, and redials with backoff. Nothing is shared between peers, so there is
  no lock: a slow or dead peer stalls only its own task.
- **A bounded queue per peer** (``max_queued`` messages). ``send`` never blocks: it appends
  to the peer's queue; when the queue is full the new messages are dropped and the peer
  reported unreachable, once per overflow episode (Raft retransmits; a peer that cannot
  keep up must not grow memory). The queue puts liveness traffic first where it mixes
  with bulk (``OutboundQueue(prioritize=True)``): each write hands votes, heartbeats and
  responses over before appends and snapshot parts, and a full queue drops its oldest
  append to take a heartbeat, so a link saturated by a catching-up follower's appends
  still carries the heartbeats that keep its leader. While a dial is in flight, messages
  queue (up to the bound) and go out once it succeeds; if it fails they are dropped and
  the peer reported. Each write takes at most ``bulk_budget`` bytes of appends and snapshot
  parts (``raft.max_size_per_msg`` from the plugin: one full append) after the urgent
  messages, so on a link slower than the appends offered to it a heartbeat waits for one
  such round, not for the whole backlog (which the follower would not survive: it would
  campaign). While the task waits to redial after a failure, messages are dropped
  and reported at once: stale queued messages are worse than none.
- **Written at once while the actor is idle** (``framework.transport.pool.write_at_once``):
  a batch for a peer whose queue is empty and whose connection takes a write without
  waiting goes to the socket from ``send`` itself, on the caller's pass, instead of waking
  the peer's task for it; the connection still belongs to that task, which closes it and
  writes everything that has to wait.
- **Writes bounded by the node's timeout policy** (``framework.transport.pool.LinkWrites``):
  each write may take ``timeout("raft_message", attempt)`` (attempt: writes that expired
  on this link in a row), or what its bytes need at ``WRITE_FLOOR_RATE`` if longer. A peer
  that stops reading holds its task for that long, never forever: the write expires, the
  connection is closed, its messages dropped, the peer reported, and the link redialled.
- **Supervised.** A crash of a peer's task (a bug: anything but the ``OSError`` of a failed
  dial or write, or cancellation) is logged with its traceback and the task restarted after
  an exponential backoff (``crash_backoff_min`` .. ``crash_backoff_max``, reset once a task
  has run ``stable_after`` seconds without crashing). Its queued messages are dropped and
  the peer reported; other peers never notice.
- **Shutdown.** Cancelling ``run`` cancels every peer task; each closes its own connection
  (``aclose`` is shielded), so every socket is released and every task ended when ``run``
  returns. A peer removed from the address book is cancelled the same way.

Swap state is the queued messages per peer (moved out by ``export_state``); a successor's
tasks dial afresh, and the peer replaces the old connection with the new one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from framework.core import Message
from framework.seams import LockStats, PeerConnection, PeerDialer, PeerLinkStats, PoolStats
from framework.transport.backoff import Backoff
from framework.transport.pool import (
    LinkWrites,
    OutboundQueue,
    check_pool_state,
    dialer_timeouts,
    pump,
    take_queued,
    write_at_once,
)

if TYPE_CHECKING:
    from framework.config import Settings

__all__ = ["ConnectionPoolActor", "queue_capacity_from"]

logger = logging.getLogger("raftmw.actors.pool")

_MIN_QUEUE = 1024


def queue_capacity_from(settings: Settings) -> int:
    """A peer's queue bound: room for a whole window of in-flight appends with the
    heartbeats and votes around it (4 x ``raft.max_inflight_msgs``, at least 1024). More
    than that queued means the peer is not keeping up, and Raft will resend."""
    return max(_MIN_QUEUE, 4 * settings.raft.max_inflight_msgs)


class _PeerActor:
    """One peer's task state: everything about the peer lives here, owned by its task."""

    __slots__ = (
        "address",
        "conn",
        "dial_attempts",
        "peer",
        "queue",
        "restarts",
        "scope",
        "state",
        "writes",
    )

    def __init__(
        self,
        peer: int,
        address: str,
        max_queued: int,
        bulk_budget: int | None,
        writes: LinkWrites,
    ) -> None:
        self.peer = peer
        self.address = address
        self.queue = OutboundQueue(max_queued, prioritize=True, bulk_budget=bulk_budget)
        self.conn: PeerConnection | None = None
        self.scope = anyio.CancelScope()
        self.state = "idle"
        self.dial_attempts = 0
        self.restarts = 0
        self.writes = writes

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed


class ConnectionPoolActor:
    """`ConnectionPool`: one supervised task per peer, bounded queues, no locks.
    See the module docstring."""

    def __init__(
        self,
        dialer: PeerDialer,
        *,
        max_queued: int = _MIN_QUEUE,
        bulk_budget: int | None = None,
        connect_timeout: float = 1.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        crash_backoff_min: float = 0.05,
        crash_backoff_max: float = 5.0,
        stable_after: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_queued <= 0:
            raise ValueError(f"max_queued={max_queued}: expected > 0")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout={connect_timeout}: expected seconds > 0")
        self._dialer = dialer
        self._max_queued = max_queued
        self._bulk_budget = bulk_budget
        self._connect_timeout = connect_timeout
        self._backoff = (backoff_min, backoff_max)
        self._crash_backoff = (crash_backoff_min, crash_backoff_max)
        self._stable_after = stable_after
        self._rng = rng or random.Random()
        self._actors: dict[int, _PeerActor] = {}
        self._pending: dict[int, list[Message]] = {}
        """Imported messages for peers not in the address book yet."""
        self._tg: anyio.abc.TaskGroup | None = None

    # -- Component --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for actor in self._actors.values():
                    tg.start_soon(self._supervise, actor)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None

    def export_state(self) -> dict[int, list[Message]]:
        return take_queued(((p, actor.queue) for p, actor in self._actors.items()), self._pending)

    def import_state(self, state: Any) -> None:
        for peer, messages in check_pool_state(state).items():
            actor = self._actors.get(peer)
            if actor is None:
                self._pending.setdefault(peer, []).extend(messages)
            elif actor.queue.put(messages):
                self._dialer.unreachable(peer)

    def lock_stats(self) -> LockStats:
        return LockStats()  # no locks: that is the point

    # -- ConnectionPool ---------------------------------------------------------------------

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        for peer, actor in list(self._actors.items()):
            if addresses.get(peer) != actor.address:
                actor.scope.cancel()  # its task closes the connection
                del self._actors[peer]
        for peer, address in addresses.items():
            if peer in self._actors:
                continue
            actor = self._actors[peer] = _PeerActor(
                peer,
                address,
                self._max_queued,
                self._bulk_budget,
                LinkWrites(dialer_timeouts(self._dialer)),
            )
            pending = self._pending.pop(peer, None)
            if pending and actor.queue.put(pending):
                self._dialer.unreachable(peer)
            if self._tg is not None:
                self._tg.start_soon(self._supervise, actor)
        self._pending = {}

    def send(self, peer: int, messages: Sequence[Message]) -> None:
        actor = self._actors.get(peer)
        if actor is None or actor.state in ("backoff", "restarting"):
            if actor is not None:
                actor.queue.dropped += len(messages)
            self._dialer.unreachable(peer)
            return
        encode = self._dialer.encode
        if write_at_once(actor.conn, actor.queue, actor.writes, partial(encode, peer), messages):
            return
        if actor.queue.put(messages):
            logger.warning(
                "queue to node %d is full (%d messages); dropping new messages",
                peer,
                self._max_queued,
            )
            self._dialer.unreachable(peer)

    def stats(self) -> PoolStats:
        peers = {
            peer: PeerLinkStats(
                peer=peer,
                address=actor.address,
                state=actor.state,
                queued=len(actor.queue),
                dial_attempts=actor.dial_attempts,
                dropped=actor.queue.dropped,
                restarts=actor.restarts,
            )
            for peer, actor in self._actors.items()
        }
        return PoolStats(
            connections_open=sum(actor.connected for actor in self._actors.values()),
            queued=sum(p.queued for p in peers.values()),
            dial_attempts=sum(p.dial_attempts for p in peers.values()),
            dropped=sum(p.dropped for p in peers.values()),
            peers=peers,
        )

    # -- one peer's task --------------------------------------------------------------------

    async def _supervise(self, actor: _PeerActor) -> None:
        """Run the peer's task; restart it with backoff when it crashes."""
        crash_backoff = Backoff(*self._crash_backoff, self._rng)
        with actor.scope:
            while True:
                started = anyio.current_time()
                try:
                    await self._serve(actor)
                except Exception:
                    actor.restarts += 1
                    actor.state = "restarting"
                    if anyio.current_time() - started >= self._stable_after:
                        crash_backoff.reset()
                    delay = crash_backoff.next_delay()
                    logger.exception(
                        "the connection task for node %d crashed; restarting it in %.3fs "
                        "(restart %d)",
                        actor.peer,
                        delay,
                        actor.restarts,
                    )
                    if actor.queue.clear():
                        self._dialer.unreachable(actor.peer)
                    await anyio.sleep(delay)

    async def _serve(self, actor: _PeerActor) -> None:
        """Dial, carry the connection until it closes, back off, redial: forever."""
        backoff = Backoff(*self._backoff, self._rng)
        failing = False
        while True:
            actor.state = "connecting"
            actor.dial_attempts += 1
            try:
                with anyio.fail_after(self._connect_timeout):
                    conn = await self._dialer.dial(actor.peer, actor.address)
            except OSError as exc:
                logger.log(
                    logging.DEBUG if failing else logging.INFO,
                    "cannot connect to node %d at %s: %s; retrying with backoff",
                    actor.peer,
                    actor.address,
                    str(exc) or type(exc).__name__,
                )
                failing = True
                if actor.queue.clear():  # what queued during the dial is lost
                    self._dialer.unreachable(actor.peer)
            else:
                failing = False
                backoff.reset()
                await self._carry(actor, conn)
            actor.state = "backoff"
            await anyio.sleep(backoff.next_delay())

    async def _carry(self, actor: _PeerActor, conn: PeerConnection) -> None:
        actor.conn = conn
        actor.state = "connected"
        try:
            expired = await pump(
                actor.queue,
                conn,
                lambda batch: self._dialer.encode(actor.peer, batch),
                actor.writes,
            )
        except Exception:
            # A crash loses the batch being written and the queue: Raft must hear of it.
            actor.queue.clear()
            self._dialer.unreachable(actor.peer)
            raise
        finally:
            actor.conn = None
            actor.queue.clear()  # a failed connection: the transport reported it
            await conn.aclose()
        if expired:  # closed by us: the transport does not report it
            logger.warning(
                "a write to node %d took over %gs; closing its connection",
                actor.peer,
                actor.writes.last_limit,
            )
            self._dialer.unreachable(actor.peer)
