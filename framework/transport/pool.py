"""The transport's own connection pool, and the per-peer outbound queue every writer uses.

``TransportPool`` is what ``TcpTransport`` runs by itself when nobody hands it a pool (a
transport used on its own, as ``tests/transport`` does): the transport's behaviour from
before the pool was a seam, moved here unchanged. A node never runs it: the node's
``connection_pool`` slot holds the legacy or the actor pool, chosen by flag ``actors``.

Theory of operation
-------------------
- One task per peer dials it, carries the connection until it closes, and redials with
  backoff (``Backoff``: reset after a successful handshake) for as long as the peer is in
  the address book.
- A message for a peer with no live connection is dropped and the peer reported at once:
  Raft retransmits, and stale queued messages are worse than none. A queue over
  ``max_queued`` drops the new messages and reports the peer once per overflow episode
  (``OutboundQueue``).
- The writer takes everything queued and hands it to ``PeerDialer.encode`` in one go, so a
  burst of sends costs one frame (coalescing).
- A connection that closes under the pool, or a write that fails, is news for Raft: the
  transport reports it (``PeerDialer``), so the pool only redials.
- **Written at once when nothing waits** (`write_at_once`, every pool and ``TcpTransport``'s
  accepted links): the first batch in a pass of the event loop for a link whose queue is
  empty and whose connection takes a write without waiting
  (``framework.seams.ImmediateWrites``) is encoded and handed to the socket by ``send``
  itself, on the Ready loop, instead of waking the writer, which would run only once the
  Ready loop's pass ends; later batches in the same pass queue and leave together
  (``streams``: written at once, coalesced after). On one write's path that pass was
  about 0.1 ms on a follower's acknowledgement and on each of the leader's appends (issue
  #15). Order holds: the writer has nothing queued, and no write of its own is under way
  (it never yields between taking a batch and handing it over, except while the
  connection holds bytes back, when the connection is not writable at once). A write at
  once is a completed write like any other (``LinkWrites.wrote_at_once``): sampled by the
  timeout policy with the time it took, and ``attempt`` reset.
- Each write is bounded by the node's timeout policy (`LinkWrites`: every pool's writes,
  and ``TcpTransport``'s on the connections lower-id peers dialled):
  ``timeout("raft_message", attempt)``, or what the batch needs at `WRITE_FLOOR_RATE` if
  that is longer. A write that expires closes the connection (the pool reports the peer:
  the transport does not see a close of its own making) and the link is redialled.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final, Protocol

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from framework.config import Settings
from framework.core import AppendEntries, InstallSnapshot, Message
from framework.seams import (
    LockStats,
    PeerConnection,
    PeerDialer,
    PeerLinkStats,
    PoolStats,
    TimeoutPolicy,
)
from framework.transport.backoff import Backoff
from framework.transport.streams import PassLatch

__all__ = [
    "UNTIMED_WRITE_LIMIT",
    "WRITE_FLOOR_RATE",
    "FrameSink",
    "LinkWrites",
    "OutboundQueue",
    "TransportPool",
    "bulk_size",
    "check_pool_state",
    "dial_limit",
    "dialer_timeouts",
    "is_bulk",
    "pump",
    "take_queued",
    "write_at_once",
    "write_limit",
]

logger = logging.getLogger("raftmw.transport")


_BULK: Final = (AppendEntries, InstallSnapshot)
"""Messages that carry log entries or snapshot parts: the bulk of a saturated link."""


def is_bulk(message: Message) -> bool:
    return isinstance(message, _BULK)


def bulk_size(message: Message) -> int:
    """Payload bytes a bulk message carries (entries' data, a snapshot part's), 0 for others:
    what a write round's bulk budget counts."""
    if isinstance(message, AppendEntries):
        return sum(len(entry.data) for entry in message.entries)
    if isinstance(message, InstallSnapshot):
        return len(message.snapshot.data)
    return 0


class OutboundQueue:
    """Messages waiting for one peer's writer, in order.

    ``put`` appends up to ``capacity`` (None: unbounded) and drops the rest; it says when a
    call *starts* an overflow episode, so its caller reports the peer once, not once per
    dropped message. ``take`` empties the queue and ends the episode: the writer caught up.

    With ``prioritize``, traffic that keeps the cluster live goes ahead of bulk where the
    two mix on one link: ``take`` hands over votes, heartbeats, TimeoutNow and every
    response before appends and snapshot parts (each kind in its own order), and a full
    queue makes room for such a message by dropping its oldest bulk message (Raft resends
    entries; a lost heartbeat under a saturated link costs an election). Reordering between
    the kinds is safe: Raft assumes a network that reorders, and a heartbeat never carries a
    commit index past what the follower acknowledged (``min(match, committed)``).

    ``bulk_budget`` (bytes, with ``prioritize``) bounds the bulk of one write round
    (``take_round``; ``take``, a swap's, still takes everything): bulk
    messages are handed over, oldest first, until their payload (`bulk_size`) reaches it
    (at least one per take), and the rest stay queued, in order, for the next round. On a
    link slower than the appends it is offered, a writer that took the whole backlog would
    spend seconds on one write while the heartbeats queued behind it wait, and the follower
    would campaign; with a budget, a heartbeat waits for one round's bulk at most.
    """

    __slots__ = (
        "_wakeup",
        "bulk_budget",
        "capacity",
        "dropped",
        "items",
        "latch",
        "overflowing",
        "prioritize",
    )

    def __init__(
        self, capacity: int | None, *, prioritize: bool = False, bulk_budget: int | None = None
    ) -> None:
        if capacity is not None and capacity <= 0:
            raise ValueError(f"queue capacity={capacity}: expected > 0 (or None: unbounded)")
        if bulk_budget is not None and (bulk_budget <= 0 or not prioritize):
            raise ValueError(
                f"bulk_budget={bulk_budget}: expected bytes > 0, on a prioritizing queue "
                f"(prioritize={prioritize})"
            )
        self.capacity = capacity
        self.prioritize = prioritize
        self.bulk_budget = bulk_budget
        self.items: list[Message] = []
        self.overflowing = False
        self.dropped = 0
        self._wakeup: anyio.Event | None = None
        self.latch = PassLatch()
        """Lets one batch a pass be written at once (`write_at_once`)."""

    def __len__(self) -> int:
        return len(self.items)

    def put(self, messages: Sequence[Message]) -> bool:
        """Queue ``messages``; True if some were dropped and this call began the episode."""
        items = self.items
        was_empty = not items
        room = len(messages) if self.capacity is None else self.capacity - len(items)
        if room >= len(messages):
            items.extend(messages)
            overflow = 0
        elif self.prioritize:
            overflow = self._put_urgent_first(messages, max(room, 0))
        else:
            room = max(room, 0)
            items.extend(messages[:room])
            overflow = len(messages) - room
        if was_empty and items and self._wakeup is not None:
            self._wakeup.set()
        if not overflow:
            return False
        self.dropped += overflow
        started = not self.overflowing
        self.overflowing = True
        return started

    def _put_urgent_first(self, messages: Sequence[Message], room: int) -> int:
        """Over capacity: urgent messages take the free room, then evict queued bulk
        (oldest first); bulk takes what room is left. Returns how many were dropped."""
        urgent = [m for m in messages if not is_bulk(m)]
        bulk = [m for m in messages if is_bulk(m)]
        items = self.items
        dropped = 0
        evictable = sum(1 for m in items if is_bulk(m))
        if len(urgent) > room and evictable:
            evict = min(len(urgent) - room, evictable)
            kept: list[Message] = []
            for m in items:
                if evict and is_bulk(m):
                    evict -= 1
                    dropped += 1
                else:
                    kept.append(m)
            room += len(items) - len(kept)
            items[:] = kept
        take = min(room, len(urgent))
        items.extend(urgent[:take])
        room -= take
        items.extend(bulk[:room])
        return dropped + (len(urgent) - take) + (len(bulk) - min(room, len(bulk)))

    def take(self) -> list[Message]:
        """Everything queued (urgent first when prioritizing), leaving the queue empty: what
        a swap moves to the successor."""
        batch, self.items = self.items, []
        self.overflowing = False
        if self.prioritize and len(batch) > 1:
            urgent = [m for m in batch if not is_bulk(m)]
            if urgent and len(urgent) < len(batch):
                batch = urgent + [m for m in batch if is_bulk(m)]
        return batch

    def take_round(self) -> list[Message]:
        """What one write hands over: everything (``take``), or with ``bulk_budget`` the
        urgent messages and the oldest bulk within the budget; the rest stay queued."""
        if self.bulk_budget is None:
            return self.take()
        batch, self.items = self.items, []
        self.overflowing = False
        urgent = [m for m in batch if not is_bulk(m)]
        bulk, self.items = self._within_budget([m for m in batch if is_bulk(m)])
        return urgent + bulk

    def _within_budget(self, bulk: list[Message]) -> tuple[list[Message], list[Message]]:
        """The oldest bulk messages up to ``bulk_budget`` bytes (at least one), and the rest."""
        assert self.bulk_budget is not None
        spent = 0
        for i, message in enumerate(bulk):
            spent += bulk_size(message)
            if spent >= self.bulk_budget:
                return bulk[: i + 1], bulk[i + 1 :]
        return bulk, []

    def clear(self) -> int:
        """Drop everything queued (counted in ``dropped``); returns how many."""
        count = len(self.items)
        self.items = []
        self.dropped += count
        return count

    async def wait(self) -> None:
        """Return once something is queued."""
        while not self.items:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()


WRITE_FLOOR_RATE: Final = 128 << 10
"""Bytes per second the slowest healthy peer link is assumed to drain (128 KiB/s, about
1 Mbit/s).

A write's bound is never shorter than its batch needs at this rate. The fixed
``raft_message`` base (100ms in ``settings.toml``, 50-200ms in the profiles) is a round
trip's worth: far too short for a full append (``raft.max_size_per_msg``, 1 MiB by
default) on any link under 10 MiB/s, so the policy's value alone would cut healthy bulk
writes on a slow link and redial in a loop, resending the same append each time. At this
floor a 1 MiB write may take 8s (the legacy pool's old fixed bound was 10s) and a 32 KiB
one 0.25s; a write of heartbeats and votes is bounded by the policy's value alone."""

UNTIMED_WRITE_LIMIT: Final = 10.0
"""Seconds a write may take while the pool's dialer has no timeout policy (a transport run
on its own, before a node hands it one)."""


def write_limit(policy: TimeoutPolicy | None, attempt: int, nbytes: int, fallback: float) -> float:
    """The bound on one write of ``nbytes`` to a peer: the policy's
    ``timeout("raft_message", attempt)`` (``fallback`` without a policy), or what the batch
    needs at `WRITE_FLOOR_RATE`, whichever is longer. The one place that says how long a
    peer write may take."""
    base = fallback if policy is None else policy.timeout("raft_message", attempt)
    return max(base, nbytes / WRITE_FLOOR_RATE)


class FrameSink(Protocol):
    """What `LinkWrites` writes to: a pool's `PeerConnection`, or the connection a lower-id
    peer dialled (``TcpTransport``'s accepted side, which no pool owns)."""

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Write whole frames, in order (``OSError`` if the connection is dead)."""
        ...


class LinkWrites:
    """One peer link's writes, each bounded by `write_limit` and sampled by the policy.

    ``attempt`` counts consecutive writes that expired on this link (a completed write
    resets it), so an adaptive policy backs off on a link that keeps timing out. A completed
    write is reported to ``observe(ok=True)``, an expired one ``observe(ok=False)``; writes
    that fail (``OSError``) are not samples: the connection died, the time says nothing.
    ``policy`` is asked at every write: the node swaps its policy with flag
    ``adaptive_timeout`` and the dialer hands over whichever runs.
    """

    __slots__ = ("at_once", "attempt", "expired", "fallback", "last_limit", "policy")

    def __init__(
        self, policy: Callable[[], TimeoutPolicy | None], fallback: float = UNTIMED_WRITE_LIMIT
    ) -> None:
        if not fallback > 0:
            raise ValueError(f"write fallback={fallback}: expected seconds > 0")
        self.policy = policy
        self.fallback = fallback
        self.attempt = 0
        self.expired = 0
        """Writes that expired on this link, in all."""
        self.last_limit = 0.0
        self.at_once = 0
        """Batches written at once (`write_at_once`), not by the writer."""

    async def send(self, conn: FrameSink, frames: list[bytes]) -> bool:
        """Write ``frames`` to ``conn``; False if the write expired (the caller closes the
        connection). ``OSError`` from the write propagates."""
        policy = self.policy()
        limit = self.last_limit = write_limit(
            policy, self.attempt, sum(len(f) for f in frames), self.fallback
        )
        started = anyio.current_time()
        with anyio.move_on_after(limit) as scope:
            await conn.send_frames(frames)
        took = anyio.current_time() - started
        if scope.cancelled_caught:
            self.attempt += 1
            self.expired += 1
            if policy is not None:
                policy.observe("raft_message", took, ok=False)
            return False
        self.attempt = 0
        if policy is not None:
            policy.observe("raft_message", took, ok=True)
        return True

    def wrote_at_once(self, took: float) -> None:
        """A write at once (`write_at_once`) completed in ``took`` seconds: a sample, as a
        completed ``send`` is."""
        self.attempt = 0
        self.at_once += 1
        policy = self.policy()
        if policy is not None:
            policy.observe("raft_message", took, ok=True)


def write_at_once(
    conn: Any,
    queue: OutboundQueue,
    writes: LinkWrites,
    encode: Callable[[Sequence[Message]], list[bytes]],
    messages: Sequence[Message],
) -> bool:
    """Write ``messages`` to ``conn`` now (module docstring: written at once) if nothing is
    queued for it and it takes a write without waiting; True if done (or if ``encode``
    dropped them all as too large, which it reports), False: queue them for the writer."""
    if queue.items or conn is None or not getattr(conn, "writable_now", False):
        return False
    if not queue.latch.take():  # written at once already in this pass: coalesce the rest
        return False
    frames = encode(messages)
    if frames:
        started = anyio.current_time()
        conn.write_now(frames)  # ImmediateWrites, checked above
        writes.wrote_at_once(anyio.current_time() - started)
    return True


async def pump(
    queue: OutboundQueue,
    conn: PeerConnection,
    encode: Callable[[Sequence[Message]], list[bytes]],
    writes: LinkWrites,
) -> bool:
    """Write what ``queue`` holds to ``conn`` until the connection closes or a write fails
    or expires (``writes``: bounded by the node's timeout policy). True if a write expired:
    the caller closes the connection and reports the peer (the transport does not see a
    close of the pool's making).

    Each round takes everything queued, so a burst of sends goes out as one ``encode`` (one
    frame if it fits): coalescing. Messages lost with a failed or expired write count as
    dropped; the transport reports a failed one. A bug (``encode`` raising, say) propagates.
    """
    expired = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await conn.wait_closed()
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        while True:
            await queue.wait()
            batch = queue.take_round()
            try:
                if not await writes.send(conn, encode(batch)):
                    queue.dropped += len(batch)
                    expired = True
                    break
            except OSError:
                queue.dropped += len(batch)
                break
        tg.cancel_scope.cancel()
    return expired


def dialer_timeouts(dialer: PeerDialer) -> Callable[[], TimeoutPolicy | None]:
    """The node's current timeout policy, as ``dialer`` has it (`PeerDialer.timeouts`)."""
    return lambda: dialer.timeouts


def dial_limit(settings: Settings) -> float:
    """The pools' outer bound on one dial (connect, TLS and Hello).

    The dialer times the connect itself by the node's timeout policy
    (`PooledTransport.use_timeouts`: adaptive between ``performance.timeouts.connect``'s
    bounds, or fixed at its base), so the pool's bound must never fire first: it is the
    longest connect the policy may allow plus ``transport.connect_timeout`` for the
    handshake, a backstop for a dialer that times nothing. (The pools used to wrap every
    dial in the fixed ``transport.connect_timeout``, so an adaptive connect timeout above
    it never took effect.)
    """
    connect = settings.performance.timeouts.get("connect")
    longest = connect.max_timeout if connect is not None else 0.0
    return longest + settings.transport.connect_timeout


def take_queued(
    queues: Iterable[tuple[int, OutboundQueue]], pending: dict[int, list[Message]]
) -> dict[int, list[Message]]:
    """A pool's swap state: every message queued per peer (and ``pending`` ones for peers
    not in the address book yet), moved out: the queues and ``pending`` are empty after."""
    state = {peer: queue.take() for peer, queue in queues if queue}
    for peer, messages in pending.items():
        state.setdefault(peer, []).extend(messages)
    pending.clear()
    return state


def check_pool_state(state: Any) -> dict[int, list[Message]]:
    """Validate a pool's swap state (``dict[int, list[Message]]``) before taking any of it."""
    if not isinstance(state, dict):
        raise TypeError(
            f"connection pool state must be a dict of peer -> messages, not {type(state).__name__}"
        )
    for peer, messages in state.items():
        if not isinstance(peer, int) or not isinstance(messages, list):
            raise TypeError(
                f"connection pool state entry {peer!r}: expected an int peer id and a list of "
                "messages"
            )
    return state


class _Link:
    __slots__ = ("address", "conn", "dial_attempts", "peer", "queue", "scope", "state", "writes")

    def __init__(self, peer: int, address: str, max_queued: int, writes: LinkWrites) -> None:
        self.peer = peer
        self.address = address
        self.queue = OutboundQueue(max_queued)
        self.conn: PeerConnection | None = None
        self.scope = anyio.CancelScope()
        self.state = "idle"
        self.dial_attempts = 0
        self.writes = writes

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed


class TransportPool:
    """`ConnectionPool`: one task per peer, messages dropped while a peer is not connected.
    See the module docstring."""

    def __init__(
        self,
        dialer: PeerDialer,
        *,
        max_queued: int = 100_000,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self._dialer = dialer
        self._max_queued = max_queued
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._links: dict[int, _Link] = {}
        self._pending: dict[int, list[Message]] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    # -- Component --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for link in self._links.values():
                    tg.start_soon(self._serve_link, link)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None

    def export_state(self) -> dict[int, list[Message]]:
        return take_queued(((p, link.queue) for p, link in self._links.items()), self._pending)

    def import_state(self, state: Any) -> None:
        for peer, messages in check_pool_state(state).items():
            link = self._links.get(peer)
            if link is not None:
                link.queue.put(messages)
            else:  # the address book comes later (set_peers)
                self._pending.setdefault(peer, []).extend(messages)

    def lock_stats(self) -> LockStats:
        return LockStats()

    # -- ConnectionPool ---------------------------------------------------------------------

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        for peer, link in list(self._links.items()):
            if addresses.get(peer) != link.address:
                link.scope.cancel()
                del self._links[peer]
        for peer, address in addresses.items():
            if peer not in self._links:
                writes = LinkWrites(dialer_timeouts(self._dialer))
                link = self._links[peer] = _Link(peer, address, self._max_queued, writes)
                link.queue.put(self._pending.pop(peer, []))
                if self._tg is not None:
                    self._tg.start_soon(self._serve_link, link)
        self._pending = {}

    def send(self, peer: int, messages: Sequence[Message]) -> None:
        link = self._links.get(peer)
        if link is None or not link.connected:
            if link is not None:
                link.queue.dropped += len(messages)
            self._dialer.unreachable(peer)
            return
        encode = self._dialer.encode
        if write_at_once(link.conn, link.queue, link.writes, partial(encode, peer), messages):
            return
        if link.queue.put(messages):
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
                address=link.address,
                state=link.state,
                queued=len(link.queue),
                dial_attempts=link.dial_attempts,
                dropped=link.queue.dropped,
            )
            for peer, link in self._links.items()
        }
        return PoolStats(
            connections_open=sum(link.connected for link in self._links.values()),
            queued=sum(p.queued for p in peers.values()),
            dial_attempts=sum(p.dial_attempts for p in peers.values()),
            dropped=sum(p.dropped for p in peers.values()),
            peers=peers,
        )

    # -- one peer ---------------------------------------------------------------------------

    async def _serve_link(self, link: _Link) -> None:
        backoff = Backoff(self._backoff_min, self._backoff_max, self._rng)
        failing = False
        with link.scope:
            while True:
                link.state = "connecting"
                link.dial_attempts += 1
                try:
                    conn = await self._dialer.dial(link.peer, link.address)
                except OSError as exc:
                    logger.log(
                        logging.DEBUG if failing else logging.INFO,
                        "cannot connect to node %d at %s: %s; retrying with backoff",
                        link.peer,
                        link.address,
                        str(exc) or type(exc).__name__,
                    )
                    failing = True
                else:
                    failing = False
                    backoff.reset()
                    await self._carry(link, conn)
                link.state = "backoff"
                await anyio.sleep(backoff.next_delay())

    async def _carry(self, link: _Link, conn: PeerConnection) -> None:
        """Write ``link``'s queue to ``conn`` until it closes (the transport reports that)."""
        link.conn = conn
        link.state = "connected"
        try:
            expired = await pump(
                link.queue, conn, lambda batch: self._dialer.encode(link.peer, batch), link.writes
            )
        finally:
            link.conn = None
            link.queue.clear()
            await conn.aclose()
        if expired:
            logger.warning(
                "a write to node %d took over %gs; closing its connection",
                link.peer,
                link.writes.last_limit,
            )
            self._dialer.unreachable(link.peer)
