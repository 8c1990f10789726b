"""The legacy connection pool: every dialled connection in one dict behind one lock.

The seed's ``Arc<RwLock<HashMap<u64, PeerConnection>>>`` in ``iroh.rs``, with its problems
kept on purpose (and still correct: every message is written in order or its peer reported):

- **A lock held across an await while writing to a slow peer.** One sender task walks the
  peers in id order; for each peer with buffered messages it takes the pool lock, writes
  *under the lock* and releases. A peer that stops reading holds the lock, and the sender,
  until its socket buffers take the write or the write times out, and every other peer's
  messages wait behind it.
- **Locks taken one after another on the send path**: one acquisition per peer per walk.
- **Unbounded buffers** (``iroh.rs`` lines 110, 308): ``send`` appends to the peer's buffer,
  whatever its length, and a down peer's buffer keeps growing until it is reachable again.
- **Check-then-use**: a dial's connection is put in the dict under the lock if its peer is
  still at the address dialled; a watcher task per connection waits for it to close, then
  takes the lock to remove it from the dict if it is still the one there.

A batch for a peer with nothing buffered, whose connection takes a write without waiting,
is written by ``send`` itself, under the lock if the lock is free (``framework.transport.
pool.write_at_once``): the sender would write it only after the Ready loop's pass, about
0.1 ms later on one write's path (issue #15). When the lock is held, the batch is buffered
as ever, so a slow peer still holds up the others: that problem is kept on purpose.

Dials do not hold the lock or the sender. They used to (the seed connects under its lock):
a peer whose connect or handshake never completes then held every other peer's messages
for a whole ``transport.connect_timeout`` (1s) per redial, as long as an election timeout;
a leader whose only other follower was that peer's neighbour heard from nobody for a whole
check-quorum window and stepped down, though it had a quorum (issue #19: one follower's
link cut cost the cluster its leader). Each dial now runs in a task of its own, one per
peer at a time, while the sender goes on writing to the connected peers.

Liveness: the sender also wakes when a redial comes due (per-peer backoff from
``transport.reconnect_backoff_*``), when a dial ends and when a connection closes, so every
peer in the address book is kept connected even when this node has nothing to send (a
higher-id peer can only reach this node over the connection this node dials). A write is
bounded by the node's timeout policy, as every pool's (``framework.transport.pool.
LinkWrites``: ``timeout("raft_message", attempt)``, or what the batch needs at
``WRITE_FLOOR_RATE`` if longer; ``write_timeout`` only until the dialer has a policy): a
peer that stops reading would otherwise hold the lock forever. After that the connection is
closed, its messages dropped and the peer reported. (Snapshots go on streams of their own,
``framework.transport.snapshot_stream``, so a write carries only Raft messages.) The lock
is still held for the whole write: that is the legacy problem this pool keeps.

The actor plugin (``plugins/actors/pool.py``) replaces this with one task per peer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

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
    write_at_once,
)
from legacy.rwlock import CountingLock

__all__ = ["LockedConnectionPool"]

logger = logging.getLogger("raftmw.legacy.pool")


class LockedConnectionPool:
    """`ConnectionPool`: ``{peer: connection}`` behind one `CountingLock`, one sender task.

    State carried across a swap: the buffered messages per peer (moved out by export).
    """

    def __init__(
        self,
        dialer: PeerDialer,
        *,
        connect_timeout: float = 1.0,
        write_timeout: float = 10.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if connect_timeout <= 0 or write_timeout <= 0:
            raise ValueError(
                f"connect_timeout={connect_timeout} write_timeout={write_timeout}: expected "
                "seconds > 0"
            )
        self._dialer = dialer
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self._lock = CountingLock()
        self._connections: dict[int, PeerConnection] = {}
        """The seed's map: read and changed only under ``_lock``."""
        self._addresses: dict[int, str] = {}
        self._buffers: dict[int, OutboundQueue] = {}
        self._backoffs: dict[int, Backoff] = {}
        self._next_dial: dict[int, float] = {}
        """When a peer that failed to connect may be dialled again (event-loop clock)."""
        self._dial_attempts: dict[int, int] = {}
        self._dropped: dict[int, int] = {}
        self._retired: list[PeerConnection] = []
        """Connections of removed or moved peers, closed by the sender's next walk."""
        self._writes: dict[int, LinkWrites] = {}
        """Each peer's write bound and count of writes that expired in a row."""
        self._dialling: set[int] = set()
        """Peers with a dial in flight (each in a task of its own)."""
        self._wakeup: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # -- Component --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._wakeup = anyio.Event()
                tg.start_soon(self._sender)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            self._wakeup = None
            connections = [*self._connections.values(), *self._retired]
            self._connections = {}
            self._retired = []
            with anyio.CancelScope(shield=True):
                for conn in connections:
                    await conn.aclose()

    def export_state(self) -> dict[int, list[Message]]:
        return {peer: buffer.take() for peer, buffer in self._buffers.items() if buffer}

    def import_state(self, state: Any) -> None:
        for peer, messages in check_pool_state(state).items():
            self._buffer(peer).put(messages)
        self._wake()

    def lock_stats(self) -> LockStats:
        return self._lock.stats()

    # -- ConnectionPool ---------------------------------------------------------------------

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        for peer in list(self._addresses):
            if addresses.get(peer) != self._addresses[peer]:
                self._retire(peer)
                if peer not in addresses:
                    del self._addresses[peer]
                    self._buffers.pop(peer, None)
        for peer, address in addresses.items():
            self._addresses[peer] = address
            self._buffer(peer)
        for peer in [p for p in self._buffers if p not in self._addresses]:
            del self._buffers[peer]  # imported for a peer that is not in the book
        self._wake()

    def send(self, peer: int, messages: Sequence[Message]) -> None:
        if peer not in self._addresses:
            self._dialer.unreachable(peer)
            return
        buffer = self._buffer(peer)
        if self._write_at_once(peer, buffer, messages):
            return
        buffer.put(messages)  # unbounded: never refuses
        self._wake()

    def _write_at_once(self, peer: int, buffer: OutboundQueue, messages: Sequence[Message]) -> bool:
        """Under the pool lock, if it is free: write ``messages`` to ``peer`` now when
        nothing is buffered for it and its connection takes a write without waiting."""
        if buffer.items or not self._lock.try_acquire():
            return False
        try:
            conn = self._connections.get(peer)
            if conn is None:
                return False
            encode = partial(self._dialer.encode, peer)
            return write_at_once(conn, buffer, self._link_writes(peer), encode, messages)
        finally:
            self._lock.release()

    def stats(self) -> PoolStats:
        now = _now_or_zero()
        peers = {}
        for peer, address in self._addresses.items():
            conn = self._connections.get(peer)
            if conn is not None and not conn.closed:
                state = "connected"
            elif peer in self._dialling:
                state = "connecting"
            elif self._next_dial.get(peer, 0.0) > now:
                state = "backoff"
            else:
                state = "idle"
            buffer = self._buffers.get(peer)
            peers[peer] = PeerLinkStats(
                peer=peer,
                address=address,
                state=state,
                queued=len(buffer) if buffer is not None else 0,
                dial_attempts=self._dial_attempts.get(peer, 0),
                dropped=self._dropped.get(peer, 0),
            )
        return PoolStats(
            connections_open=sum(p.state == "connected" for p in peers.values()),
            queued=sum(p.queued for p in peers.values()),
            dial_attempts=sum(self._dial_attempts.values()),
            dropped=sum(self._dropped.values()),
            peers=peers,
        )

    # -- internals --------------------------------------------------------------------------

    def _buffer(self, peer: int) -> OutboundQueue:
        buffer = self._buffers.get(peer)
        if buffer is None:
            buffer = self._buffers[peer] = OutboundQueue(None)
        return buffer

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _retire(self, peer: int) -> None:
        conn = self._connections.pop(peer, None)
        if conn is not None:
            self._retired.append(conn)
        self._next_dial.pop(peer, None)
        self._backoffs.pop(peer, None)
        self._writes.pop(peer, None)

    def _drop(self, peer: int, count: int) -> None:
        self._dropped[peer] = self._dropped.get(peer, 0) + count

    async def _sender(self) -> None:
        while True:
            # A new event before the walk: a send during the walk wakes the next one.
            self._wakeup = wakeup = anyio.Event()
            if self._retired:
                async with self._lock:
                    retired, self._retired = self._retired, []
                    for conn in retired:
                        await conn.aclose()
            for peer in sorted(self._addresses):
                if peer not in self._addresses:
                    continue  # removed while an earlier peer was being served
                buffer = self._buffers.get(peer)
                if buffer or not self._live(peer):
                    await self._flush(peer)
            with anyio.move_on_after(self._until_next_dial()):
                await wakeup.wait()

    def _live(self, peer: int) -> bool:
        conn = self._connections.get(peer)
        return conn is not None and not conn.closed

    def _until_next_dial(self) -> float:
        """Seconds until a disconnected peer may be dialled again (inf: none waits)."""
        now = anyio.current_time()
        waits = [
            max(0.0, self._next_dial.get(peer, 0.0) - now)
            for peer in self._addresses
            if not self._live(peer) and peer not in self._dialling
        ]
        return min(waits, default=float("inf"))

    async def _flush(self, peer: int) -> None:
        """Under the pool lock: write ``peer``'s buffer, or start a dial if it has no live
        connection (the buffer waits for it)."""
        async with self._lock:
            conn = self._connections.get(peer)
            if conn is None or conn.closed:
                if conn is not None:
                    del self._connections[peer]
                    await conn.aclose()
                self._start_dial(peer)
                return
            buffer = self._buffers.get(peer)
            batch = buffer.take() if buffer is not None else []
            if not batch:
                return
            writes = self._link_writes(peer)
            try:
                completed = await writes.send(conn, self._dialer.encode(peer, batch))
            except OSError:
                # The connection died under the write; the transport reports it.
                self._drop(peer, len(batch))
                del self._connections[peer]
                await conn.aclose()
                return
            if not completed:
                logger.warning(
                    "a write to node %d took over %gs; closing its connection",
                    peer,
                    writes.last_limit,
                )
                self._drop(peer, len(batch))
                del self._connections[peer]
                await conn.aclose()
                self._dialer.unreachable(peer)  # closed by us: the transport does not report it

    def _link_writes(self, peer: int) -> LinkWrites:
        """``peer``'s write bound and count of writes that expired in a row."""
        writes = self._writes.get(peer)
        if writes is None:
            writes = self._writes[peer] = LinkWrites(
                dialer_timeouts(self._dialer), self._write_timeout
            )
        return writes

    def _start_dial(self, peer: int) -> None:
        """Dial ``peer`` in a task of its own unless a dial is in flight or backing off."""
        address = self._addresses.get(peer)  # None: removed while we waited for the lock
        if address is None or peer in self._dialling or self._tg is None:
            return
        if self._next_dial.get(peer, 0.0) > anyio.current_time():
            return  # still backing off: the buffer waits (and grows)
        self._dialling.add(peer)
        self._tg.start_soon(self._dial, peer, address)

    async def _dial(self, peer: int, address: str) -> None:
        """Connect to ``peer``, then put the connection in the dict under the lock."""
        self._dial_attempts[peer] = self._dial_attempts.get(peer, 0) + 1
        backoff = self._backoffs.get(peer)
        if backoff is None:
            backoff = self._backoffs[peer] = Backoff(
                self._backoff_min, self._backoff_max, self._rng
            )
        try:
            try:
                with anyio.fail_after(self._connect_timeout):
                    conn = await self._dialer.dial(peer, address)
            except OSError as exc:
                first = peer not in self._next_dial
                self._next_dial[peer] = anyio.current_time() + backoff.next_delay()
                logger.log(
                    logging.INFO if first else logging.DEBUG,
                    "cannot connect to node %d at %s: %s; retrying with backoff",
                    peer,
                    address,
                    str(exc) or type(exc).__name__,
                )
                if self._buffers.get(peer):
                    self._dialer.unreachable(peer)  # its messages wait in the buffer
                return
            async with self._lock:
                if self._addresses.get(peer) != address:  # removed or moved while dialling
                    await conn.aclose()
                    return
                backoff.reset()
                self._next_dial.pop(peer, None)
                self._connections[peer] = conn
                if self._tg is not None:
                    self._tg.start_soon(self._watch, peer, conn)
        finally:
            self._dialling.discard(peer)
            self._wake()  # connected: its buffer goes out; failed: the next dial is timed

    async def _watch(self, peer: int, conn: PeerConnection) -> None:
        await conn.wait_closed()
        async with self._lock:
            if self._connections.get(peer) is conn:
                del self._connections[peer]
                await conn.aclose()
        self._wake()


def _now_or_zero() -> float:
    try:
        return anyio.current_time()
    except RuntimeError:  # no event loop (a status read from a thread): every wait is due
        return 0.0
