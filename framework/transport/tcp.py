"""``TcpTransport``: peers and clients over TCP (the client side is ``tcp_client``; a
socket and its tasks' guard are ``connection``; a pool's handle on a dialled peer
connection is ``dialled_connection``; a client's connection, once accepted and its Hello
read, is served by ``client_connections``).

Theory of operation
-------------------
The rules this module keeps, and why:

1. **One connection per peer pair.** The node with the lower id dials, the higher one only
   accepts, and both directions share the connection. Two nodes dialling each other would
   otherwise race and each could tear down the other's connection forever. The acceptor
   refuses a peer with a higher id than its own. A newer connection from the same peer
   replaces the older one (the peer restarted, and the old socket may be half-open, or a
   swapped-in connection pool dialled afresh); with TLS only a connection authenticated as
   that peer gets that far.
2. **The dialled side belongs to a connection pool** (``framework.seams.ConnectionPool``).
   The pool dials the higher-id peers through ``dialer`` (connect and handshake here), keeps
   their connections up (redialling with backoff for as long as a peer is in the address
   book), queues their messages and writes them. This transport reads what arrives on a
   dialled connection, in a task of its own, reports the peer unreachable if that
   connection fails (not when its pool closes it), and writes only on *accepted*
   connections, through its own per-peer queue and writer (an accepted connection can only
   be re-established by the peer, so it stays here whatever pool runs). A node hands the
   transport the pool of its ``connection_pool`` slot (``use_pool``) and swaps it while
   serving; a transport used on its own builds one with ``pool_factory`` (default:
   ``TransportPool``, one dialling task per peer) and runs it while it serves.
3. **Authenticate first, then handshake.** With TLS (``framework.transport.tls``) every
   connection starts with a mutual TLS handshake against the cluster CA. Then the caller
   sends its ``Hello`` and the acceptor answers with its own only once it accepts the
   caller: it checks protocol, version, cluster id, that the node id is a known peer and,
   with TLS, that the caller's certificate names that node; the dialler checks that the
   certificate it was shown names the node it dialled. A client's certificate or token
   gives it a role (``framework.auth``). Whoever refuses says why in a ``Goodbye`` and
   closes. A connection that has not finished both handshakes within ``connect_timeout``
   is closed: a silent socket must not hold a slot forever.
3a. **Bounded before authentication.** An accepted connection over ``max_connections`` in
   all, or over ``max_connections_per_address`` from one address, is closed at accept
   without reading a byte (``framework.transport.admission``). Connections waiting in the
   backlog are taken in one go (``protocol_streams.accept_burst``), so the caps count a
   burst whole even when its callers are gone before the node gets to them. The first
   frame is read exactly, and refused over ``handshake_frame_size`` (a few KiB): nothing
   past it is read until the caller is authenticated. A client that did not authenticate while
   authentication is on may send one request, within that small limit, which is answered
   ``unauthorized`` (naming the role it needs) before the connection is closed.
4. **``send`` never blocks.** Messages for a higher-id peer go to the pool's ``send``, the
   others to the accepted link's queue; one writer task per accepted connection takes
   everything queued and writes it as one ``PeerBatch`` frame, so a burst of sends costs
   one write (coalescing). The first batch in a pass for an accepted link with nothing
   queued, whose connection takes a write without waiting, is written by ``send`` itself
   instead (``pool.write_at_once``, as every pool does). A lower-id peer with no
   connection gets nothing queued: its messages are dropped and it is reported
   unreachable, since Raft retransmits and stale queued messages are worse than none. A
   queue over ``max_queued_messages`` drops the new messages and reports the peer
   unreachable once per overflow episode. (What a pool does with messages for a peer it
   is still dialling is the pool's business.) Each write
   on an accepted connection is bounded by the node's timeout policy exactly as a pool's
   are (``pool.LinkWrites``): one that expires is sampled as a timeout and closes the
   connection, the peer is reported unreachable, and it redials.
5. **A bad connection is closed, nothing else.** A malformed or oversized frame (the
   header is checked before the body is buffered), garbage, a wrong protocol, a message
   whose ``src``/``dst`` do not match the handshake, or a ``Goodbye`` closes that
   connection with a warning on ``raftmw.transport`` naming the remote address and the
   reason. Every other connection keeps working.
6. **Every task has an owner.** ``serve`` owns one task group: the accept loops, the pool it
   built itself (if any), one handler per accepted socket, each running its connection's
   reader and writer (or, for a client, its request handlers) in a task group of its own
   inside the connection's cancel scope, and one reader per dialled connection, inside that
   connection's scope. Cancelling that scope closes the connection; cancelling ``serve``
   closes them all. A pool's tasks are the pool's (its ``run``); the pool closes the
   connections it dialled with ``aclose``, which waits for the reader to release the
   socket. Sockets are closed in shielded cleanup, so cancellation releases what it took.
7. **Writes are whole frames or the connection is dead.** A write interrupted part-way
   leaves half a frame on the wire; such a connection is never written to again (not even
   a ``Goodbye``).
8. **Snapshots travel on connections of their own** (``snapshot_stream``): an
   ``InstallSnapshot`` given to ``send`` is streamed in chunks on a connection this node
   dials to the receiver for it, whatever their ids (one transfer per peer at a time: the
   kernel's resends of the same snapshot while one is under way, or for a ``snapshot``
   timeout after it arrived, are dropped; a newer snapshot replaces it), so that heartbeats
   and votes never wait behind it. The kernel cannot tell a snapshot still streaming or
   being installed from a lost one: it resends at the first heartbeat answered after it,
   which on a connection of its own is almost at once. A transfer that fails or is refused
   reports the peer unreachable, which makes the kernel resend.
   A receiver accepts one inbound stream per peer (a newer one replaces the older) and
   delivers the snapshot once it arrived whole and checked. An ``InstallSnapshot`` inside a
   ``PeerBatch`` (``stream_snapshots=False``) is still accepted, in parts up to
   ``max_message_size``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, TaskStatus

import framework.auth as auth  # a module: auth imports this package (the wire types)
from framework.core import InstallSnapshot, Message
from framework.seams import (
    ConnectionPool,
    PeerConnection,
    PeerDialer,
    PooledTransport,
    TimeoutPolicy,
)
from framework.transport.admission import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    Admission,
)
from framework.transport.backoff import Backoff
from framework.transport.base import ClientService, PeerInbox, Transport
from framework.transport.client_connections import answer_unauthenticated, serve_client
from framework.transport.connection import Connection, guard
from framework.transport.dialled_connection import DialledConnection
from framework.transport.pool import LinkWrites, OutboundQueue, TransportPool, write_at_once
from framework.transport.protocol_streams import Accepted, accept_burst, connect
from framework.transport.snapshot_stream import (
    DEFAULT_SNAPSHOT_CHUNK_SIZE,
    DEFAULT_SNAPSHOT_TIMEOUT,
    Outgoing,
    SnapshotReceiver,
    SnapshotRefused,
    SnapshotSends,
    Source,
    chunk_size_for,
    open_source,
    send_snapshot,
)
from framework.transport.streams import (
    DEFAULT_DEAD_CONNECTION_TIMEOUT,
    DEFAULT_MAX_FRAME_SIZE,
    LOST,
    ConnectionLost,
    close_stream,
    format_address,
    parse_address,
    tune_socket,
)
from framework.transport.tcp_client import TcpClientConnection
from framework.transport.tls import (
    NodeTls,
    TlsError,
    identity_of,
    require_tls_off_loopback,
)
from framework.transport.wire import (
    PROTOCOL,
    PROTOCOL_VERSION,
    Goodbye,
    Hello,
    PeerBatch,
    PeerPart,
    ProtocolError,
    Reassembly,
    decode_hello,
    decode_peer_batch,
    encode_frame,
    encode_parts,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ConnectionLost",
    "PoolFactory",
    "TcpClientConnection",
    "TcpTransport",
    "parse_address",
]

logger = logging.getLogger("raftmw.transport")

DEFAULT_MAX_MESSAGE_SIZE: Final = 2 * 1024 * 1024 * 1024
"""Largest single peer message (a snapshot, sent in parts) a node sends or accepts."""
DEFAULT_MAX_UNSENT_BYTES: Final = 64 * 1024 * 1024
"""Responses queued for a client that does not read them before its connection is closed."""
_GOODBYE_TIMEOUT: Final = 0.5
"""How long a refusing side waits to say why before closing anyway."""
DEFAULT_HANDSHAKE_FRAME_SIZE: Final = 4096
"""Largest first frame (a ``Hello``) read from a connection not yet authenticated."""


PoolFactory = Callable[[PeerDialer], ConnectionPool]
"""Builds the pool a transport runs itself when no pool was handed to it (``use_pool``)."""

_Backoff = Backoff  # its old name here (tests import it)


class _PeerLink:
    """Everything about one peer while serving: its live connection (accepted or dialled)
    and, for a lower-id peer, whose connection was accepted, the queue its writer drains and
    the bound on its writes (``writes``: the node's timeout policy, as in every pool)."""

    __slots__ = (
        "address",
        "connection",
        "dial_timeouts",
        "peer_id",
        "queue",
        "removed",
        "writes",
    )

    def __init__(
        self,
        peer_id: int,
        address: str,
        max_queued: int,
        timeouts: Callable[[], TimeoutPolicy | None],
    ) -> None:
        self.peer_id = peer_id
        self.address = address
        self.queue = OutboundQueue(max_queued)
        self.writes = LinkWrites(timeouts)
        self.connection: Connection | None = None
        self.removed = False
        self.dial_timeouts = 0
        """Dials in a row that timed out: the next dial is the policy's attempt this many."""

    def remove(self, reason: str) -> None:
        self.removed = True
        self.queue.take()
        if self.connection is not None:
            self.connection.close(reason, level=logging.INFO)


class _Serving:
    __slots__ = ("clients", "inbox", "links", "tg")

    def __init__(self, tg: anyio.abc.TaskGroup, inbox: PeerInbox, clients: ClientService) -> None:
        self.tg = tg
        self.inbox = inbox
        self.clients = clients
        self.links: dict[int, _PeerLink] = {}


class TcpTransport:
    """The default ``Transport``: one TCP connection per peer pair, coalesced frames, the
    same listener for peers and clients. See the module docstring for the rules."""

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        listen: str,
        peers: Mapping[int, str],
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = 1.0,
        backoff_min: float = 0.05,
        backoff_max: float = 2.0,
        max_queued_messages: int = 100_000,
        max_unsent_bytes: int = DEFAULT_MAX_UNSENT_BYTES,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        dead_connection_timeout: float = DEFAULT_DEAD_CONNECTION_TIMEOUT,
        pool_factory: PoolFactory | None = None,
        tls: NodeTls | None = None,
        insecure: bool = False,
        tokens: auth.TokenBook | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        handshake_frame_size: int = DEFAULT_HANDSHAKE_FRAME_SIZE,
        stream_snapshots: bool = True,
        snapshot_chunk_size: int = DEFAULT_SNAPSHOT_CHUNK_SIZE,
    ) -> None:
        if node_id <= 0:
            raise ValueError(f"node_id={node_id}: expected a positive node id")
        if max_frame_size < 64:
            raise ValueError(f"max_frame_size={max_frame_size}: expected at least 64 bytes")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout={connect_timeout}: expected seconds > 0")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError(
                f"backoff_min={backoff_min} backoff_max={backoff_max}: expected "
                "0 < backoff_min <= backoff_max"
            )
        if max_queued_messages <= 0:
            raise ValueError(f"max_queued_messages={max_queued_messages}: expected > 0")
        if max_unsent_bytes <= 0:
            raise ValueError(f"max_unsent_bytes={max_unsent_bytes}: expected > 0")
        if not dead_connection_timeout > 0:
            raise ValueError(
                f"dead_connection_timeout={dead_connection_timeout}: expected seconds > 0"
            )
        if max_message_size < max_frame_size:
            raise ValueError(
                f"max_message_size={max_message_size}: expected at least "
                f"max_frame_size={max_frame_size}"
            )
        if not 64 <= handshake_frame_size <= max_frame_size:
            raise ValueError(
                f"handshake_frame_size={handshake_frame_size}: expected 64 bytes to "
                f"max_frame_size={max_frame_size}"
            )
        if snapshot_chunk_size <= 0:
            raise ValueError(f"snapshot_chunk_size={snapshot_chunk_size}: expected bytes > 0")
        if tls is not None and tls.node_id != node_id:
            raise TlsError(f"the TLS identity of node {tls.node_id} was given to node {node_id}")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._listen_host, self._listen_port = parse_address(listen)
        if tls is None and not insecure:
            require_tls_off_loopback(node_id, listen, self._listen_host)
        self._tls = tls
        self._tokens = tokens or auth.TokenBook()
        self._authenticating = tls is not None or bool(self._tokens)
        """Clients must prove a role (else every client is trusted: ``framework.auth``)."""
        self._admission = Admission(
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
        )
        self._handshake_frame_size = handshake_frame_size
        self._securing = 0
        """Accepted sockets in the TLS handshake (not yet ``_open``)."""
        self._peers = self._address_book(peers)
        self._max_frame_size = max_frame_size
        self._connect_timeout = connect_timeout
        self._backoff_min = backoff_min
        self._max_queued = max_queued_messages
        self._max_unsent = max_unsent_bytes
        self._max_message_size = max_message_size
        self._dead_after = dead_connection_timeout
        self._part_seq = 0
        self._timeouts: TimeoutPolicy | None = None
        """The node's timeout policy for dials, once given (``use_timeouts``); until then
        ``connect_timeout``."""
        self._rng = random.Random()
        self._pool_factory: PoolFactory = pool_factory or (
            lambda dialer: TransportPool(
                dialer,
                max_queued=max_queued_messages,
                backoff_min=backoff_min,
                backoff_max=backoff_max,
                rng=self._rng,
            )
        )
        self._hello = encode_frame(
            Hello(
                protocol=PROTOCOL,
                version=PROTOCOL_VERSION,
                role="peer",
                node_id=node_id,
                cluster_id=cluster_id,
            )
        )
        self._snapshot_hello = encode_frame(
            Hello(
                protocol=PROTOCOL,
                version=PROTOCOL_VERSION,
                role="snapshot",
                node_id=node_id,
                cluster_id=cluster_id,
            )
        )
        self._stream_snapshots = stream_snapshots
        self._chunk_size = chunk_size_for(max_frame_size, snapshot_chunk_size)
        self._receiver = SnapshotReceiver(node_id)
        self._snapshot_source: Source | None = None
        self._snapshot_sends = SnapshotSends()
        self.snapshots_sent = 0
        """Snapshots streamed whole (the receiver acknowledged them)."""
        self.snapshots_failed = 0
        """Outbound transfers that failed or were refused."""
        self._dialer = _TcpDialer(self)
        self._pool: ConnectionPool | None = None
        """The pool dialled traffic goes through while serving."""
        self._given_pool: ConnectionPool | None = None
        """The pool handed over by ``use_pool`` (run by whoever built it)."""
        self._own_pool_scope: anyio.CancelScope | None = None
        """While serving with a pool of its own (from ``pool_factory``): the scope running it."""
        self._state: _Serving | None = None
        self._serving = False
        self._open_connections = 0
        self._frames_sent = 0
        self._dial_attempts = 0

    # -- observable state (tests, status) -----------------------------------------------------

    @property
    def listen_address(self) -> str:
        return format_address(self._listen_host, self._listen_port)

    @property
    def open_connections(self) -> int:
        """Sockets open right now: peers, clients and connections still in a handshake."""
        return self._open_connections + self._securing

    @property
    def connected_peers(self) -> frozenset[int]:
        """Peers with an established (handshaken) connection."""
        state = self._state
        if state is None:
            return frozenset()
        return frozenset(p for p, link in state.links.items() if link.connection is not None)

    @property
    def refused_at_accept(self) -> int:
        """Connections closed at accept, unread, for being over a connection cap."""
        return self._admission.refused

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def frames_sent(self) -> int:
        """``PeerBatch`` frames written since creation (each carries one or more messages)."""
        return self._frames_sent

    @property
    def dial_attempts(self) -> int:
        """Outgoing connection attempts since creation."""
        return self._dial_attempts

    @property
    def pool(self) -> ConnectionPool | None:
        """The pool the dialled traffic goes through now (None while not serving and no pool
        was handed over)."""
        return self._pool

    # -- PooledTransport ------------------------------------------------------------------------

    @property
    def dialer(self) -> PeerDialer:
        """How a pool dials this transport's peers (connect + handshake), encodes messages
        for them and reports lost ones."""
        return self._dialer

    def use_timeouts(self, policy: TimeoutPolicy) -> None:
        self._timeouts = policy

    def use_snapshot_dir(self, directory: Path) -> None:
        """Write inbound snapshot streams to temporary files in ``directory`` (the node's
        data directory) instead of the system's temporary directory."""
        self._receiver.spool.use_directory(directory)

    @property
    def snapshots_received(self) -> int:
        """Snapshots that arrived whole and were delivered."""
        return self._receiver.received

    @property
    def snapshots_refused(self) -> int:
        """Inbound streams refused: too large, short of their size, or failing the checksum."""
        return self._receiver.refused

    def use_snapshot_source(self, source: Source) -> bool:
        """Stream a snapshot the kernel sends without its data from ``source`` (the
        store's file). False: this transport does not stream snapshots
        (``stream_snapshots=False``), so the kernel must keep their data."""
        self._snapshot_source = source
        return self._stream_snapshots

    def use_pool(self, pool: ConnectionPool) -> None:
        """Send dialled traffic through ``pool`` from now on; its caller runs it.

        If this transport is serving with a pool it built itself, that pool's queued
        messages move into ``pool`` and it is stopped (its connections close; ``pool``
        dials afresh)."""
        own, self._own_pool_scope = self._own_pool_scope, None
        if own is not None and self._pool is not None:
            pool.import_state(self._pool.export_state())
            own.cancel()
        self._given_pool = self._pool = pool
        if self._state is not None:
            pool.set_peers(self._dialled_book())

    # -- Transport ------------------------------------------------------------------------------

    async def serve(
        self,
        inbox: PeerInbox,
        clients: ClientService,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._serving:
            raise RuntimeError(f"TcpTransport of node {self.node_id} is already serving")
        self._serving = True
        try:
            await self._serve(inbox, clients, task_status)
        finally:
            self._serving = False

    async def _serve(
        self, inbox: PeerInbox, clients: ClientService, task_status: TaskStatus[None]
    ) -> None:
        host = self._listen_host or None
        try:
            listener = await anyio.create_tcp_listener(
                local_host=host, local_port=self._listen_port
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"node {self.node_id} cannot listen on {self.listen_address}: {exc}"
            ) from exc
        async with listener, anyio.create_task_group() as tg:
            # Keep the port: serving again after a stop (a restart) listens where peers
            # already dial.
            self._listen_port = listener.listeners[0].extra(SocketAttribute.local_port)
            state = _Serving(tg, inbox, clients)
            try:
                if self._given_pool is None:
                    await tg.start(self._run_own_pool, self._pool_factory(self._dialer))
                else:
                    self._pool = self._given_pool
                self._state = state
                for sub in listener.listeners:
                    assert isinstance(sub, anyio.abc.SocketListener)
                    tg.start_soon(self._accept_loop, sub, state)
                self._reconcile(state)
                logger.info("node %d listening on %s", self.node_id, self.listen_address)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._state = None
                if self._given_pool is not None:
                    # Stop it dialling a transport that no longer serves (until a restart).
                    self._given_pool.set_peers({})

    async def _run_own_pool(self, pool: ConnectionPool, *, task_status: TaskStatus[None]) -> None:
        scope = anyio.CancelScope()
        self._own_pool_scope = scope
        self._pool = pool
        try:
            with scope:
                await pool.run(task_status=task_status)
        finally:
            if self._pool is pool:
                self._pool = None
            if self._own_pool_scope is scope:
                self._own_pool_scope = None

    def send(self, messages: Sequence[Message]) -> None:
        state = self._state
        pool = self._pool
        if state is None or pool is None:
            return
        node_id = self.node_id
        by_peer: dict[int, list[Message]] = {}
        for msg in messages:
            if isinstance(msg, InstallSnapshot) and self._stream_snapshots:
                self._start_snapshot(state, msg)
                continue
            batch = by_peer.get(msg.dst)
            if batch is None:
                by_peer[msg.dst] = [msg]
            else:
                batch.append(msg)
        for peer_id, batch in by_peer.items():
            if peer_id > node_id:
                pool.send(peer_id, batch)  # the pool reports an unknown peer itself
                continue
            link = state.links.get(peer_id)
            if link is None or link.connection is None:
                state.inbox.peer_unreachable(peer_id)
            elif write_at_once(
                link.connection, link.queue, link.writes, partial(self._encode_now, peer_id), batch
            ):
                continue
            elif link.queue.put(batch):
                logger.warning(
                    "queue to node %d is full (%d messages); dropping new messages",
                    peer_id,
                    self._max_queued,
                )
                state.inbox.peer_unreachable(peer_id)

    def set_peers(self, addresses: Mapping[int, str]) -> None:
        self._peers = self._address_book(addresses)
        if self._state is not None:
            self._reconcile(self._state)

    # -- peer links ---------------------------------------------------------------------------

    def _address_book(self, addresses: Mapping[int, str]) -> dict[int, str]:
        book: dict[int, str] = {}
        for peer_id, address in addresses.items():
            if peer_id <= 0:
                raise ValueError(f"peer id {peer_id} ({address!r}): expected a positive node id")
            parse_address(address)
            if peer_id != self.node_id:  # an address book may list the node itself
                book[peer_id] = address
        return book

    def _dialled_book(self) -> dict[int, str]:
        """The peers this node dials (rule 1): those with a higher id."""
        return {p: a for p, a in self._peers.items() if p > self.node_id}

    def _reconcile(self, state: _Serving) -> None:
        """Make ``state.links`` match the address book (close removed, add new) and give the
        pool the peers it dials."""
        for peer_id, link in list(state.links.items()):
            address = self._peers.get(peer_id)
            if address is None:
                link.remove(f"node {peer_id} was removed from the address book")
                del state.links[peer_id]
            elif address != link.address:
                if self.node_id < peer_id:
                    link.remove(f"node {peer_id} moved to {address}")
                    del state.links[peer_id]
                else:
                    link.address = address  # it dials us; nothing to redo
        for peer_id, address in self._peers.items():
            if peer_id not in state.links:
                state.links[peer_id] = _PeerLink(
                    peer_id, address, self._max_queued, self._current_timeouts
                )
        if self._pool is not None:
            self._pool.set_peers(self._dialled_book())

    # -- dialled connections (the pool's; see PeerDialer) ---------------------------------------

    async def _dial(self, peer_id: int, address: str) -> DialledConnection:
        state = self._state
        if state is None:
            raise ConnectionLost(address, f"node {self.node_id} is not serving")
        link = state.links.get(peer_id)
        if peer_id <= self.node_id or link is None or link.address != address:
            raise ConnectionLost(
                address, f"node {self.node_id} does not dial node {peer_id} at {address}"
            )
        self._dial_attempts += 1
        conn = self._open(await self._connect(address, link), self._max_frame_size)
        try:
            established = await guard(conn, self._dial_handshake, conn, link, self._hello)
        except BaseException:
            await self._finish(conn)
            raise
        if established and (link.removed or self._state is not state):
            conn.close(f"node {peer_id} was removed while dialling", level=logging.INFO)
        if not established or conn.reason is not None:
            reason = conn.reason or "handshake failed"
            await self._finish(conn)
            raise ConnectionLost(address, reason)
        # No await from here on: the reader owns the socket before the caller sees it.
        self._attach(conn, link)
        handle = DialledConnection(conn, address, self._count_frames)
        state.tg.start_soon(self._read_dialled, handle, link, state)
        return handle

    async def _connect(self, address: str, link: _PeerLink | None = None) -> anyio.abc.ByteStream:
        """A connected (and, with TLS, secured) stream to ``address``, within the timeout
        policy's ``connect`` timeout; ``link``, the peer link it is for, counts the dials
        that timed out in a row (a snapshot stream's dial has none: its first attempt)."""
        host, port = parse_address(address)
        policy = self._timeouts
        # A redial after dials that timed out is a retry: the policy's attempt (adaptive: a
        # doubled, jittered deadline; fixed: the same one). Refusals do not count.
        attempt = 0 if link is None else link.dial_timeouts
        limit = self._connect_timeout if policy is None else policy.timeout("connect", attempt)
        started = anyio.current_time()
        try:
            with anyio.fail_after(limit):
                tls = None if self._tls is None else self._tls.client
                stream = await connect(host, port, ssl_context=tls)
        except TimeoutError:
            if link is not None:
                link.dial_timeouts += 1
            if policy is not None:
                policy.observe("connect", anyio.current_time() - started, ok=False)
            raise
        if link is not None:
            link.dial_timeouts = 0
        # A refused connection says nothing about how long one takes: only successes and
        # timeouts are reported.
        if policy is not None:
            policy.observe("connect", anyio.current_time() - started, ok=True)
        return stream

    async def _dial_handshake(self, conn: Connection, link: _PeerLink, hello_frame: bytes) -> bool:
        if self._tls is not None:
            identity = identity_of(conn.stream)
            if identity is None or identity.node_id != link.peer_id:
                shown = "no certificate" if identity is None else identity.describe()
                conn.close(
                    f"expected node {link.peer_id} at {link.address}, but its certificate "
                    f"names {shown}",
                    goodbye=True,
                )
                return False
        await conn.writer.send(hello_frame)
        hello = await self._receive_hello(conn)
        if hello is None:
            return False
        if hello.role != "peer" or hello.node_id != link.peer_id:
            conn.close(
                f"expected node {link.peer_id} at {link.address}, found "
                f"{hello.role} {hello.node_id}",
                goodbye=True,
            )
            return False
        if hello.cluster_id != self.cluster_id:
            conn.close(
                f"node {hello.node_id} is in cluster {hello.cluster_id!r}, not {self.cluster_id!r}",
                goodbye=True,
            )
            return False
        return True

    async def _read_dialled(
        self, handle: DialledConnection, link: _PeerLink, state: _Serving
    ) -> None:
        """Deliver what arrives on a dialled connection until it closes, then release the
        socket. Its pool writes it; a failure is reported here, where it is first seen."""
        conn = handle.conn
        try:
            with conn.scope:
                await guard(conn, self._read_peer, conn, link.peer_id, state.inbox)
        finally:
            if link.connection is conn:
                link.connection = None
                # Only a failure is news for Raft: the pool closing it, removal and
                # shutdown are not.
                if conn.reason is not None and not link.removed and not handle.closing:
                    state.inbox.peer_unreachable(link.peer_id)
            await self._finish(conn)
            handle.released.set()

    def _attach(self, conn: Connection, link: _PeerLink) -> None:
        """``conn`` now carries ``link``'s traffic; it replaces any older connection."""
        old = link.connection
        if old is not None:
            old.close(f"replaced by a newer connection from {conn.address}", level=logging.INFO)
        link.connection = conn
        logger.info("node %d connected to node %d via %s", self.node_id, link.peer_id, conn.address)

    # -- accepted peer connections ------------------------------------------------------------

    async def _run_peer(self, conn: Connection, link: _PeerLink, state: _Serving) -> None:
        """Carry peer traffic both ways on an accepted ``conn`` until it closes."""
        if link.removed:
            return
        self._attach(conn, link)
        link.queue.take()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(guard, conn, self._write_peer, conn, link)
                await guard(conn, self._read_peer, conn, link.peer_id, state.inbox)
        finally:
            if link.connection is conn:
                link.connection = None
                link.queue.take()
                # Only a failure is news for Raft: shutdown and removal are not.
                if conn.reason is not None and not link.removed:
                    state.inbox.peer_unreachable(link.peer_id)

    async def _write_peer(self, conn: Connection, link: _PeerLink) -> None:
        """Write ``link``'s queue to the accepted ``conn``, one batch per write, each bounded
        by the node's timeout policy (``link.writes``, as in every pool: a lower-id peer that
        stops reading must not hold this writer, and the messages queued behind it, until
        the kernel gives up on the socket). An expired write closes ``conn`` (half a frame
        may be on the wire, rule 7): ``_run_peer`` reports the peer to Raft, and the peer,
        which dialled, redials."""
        while True:
            await link.queue.wait()
            batch = link.queue.take()
            frames = self._encode_batch(batch, link.peer_id)
            if not frames:  # all dropped as too large (reported): nothing to write or sample
                continue
            if not await link.writes.send(conn, frames):
                link.queue.dropped += len(batch)
                conn.close(
                    f"a write to node {link.peer_id} took over {link.writes.last_limit:g}s "
                    "(the timeout policy's raft_message bound); closing its connection, "
                    "which it redials"
                )
                return
            self._count_frames(len(frames))

    def _current_timeouts(self) -> TimeoutPolicy | None:
        """The node's timeout policy now (``use_timeouts``; it swaps with a flag)."""
        return self._timeouts

    def _count_frames(self, count: int) -> None:
        self._frames_sent += count

    def _encode_now(self, peer_id: int, batch: Sequence[Message]) -> list[bytes]:
        """``batch``'s frames for a write at once on an accepted connection (counted)."""
        frames = self._encode_batch(batch, peer_id)
        self._count_frames(len(frames))
        return frames

    def _encode_batch(self, batch: Sequence[Message], peer_id: int) -> list[bytes]:
        """One frame, or several if one would exceed ``max_frame_size`` on the receiver: the
        batch is split, and a single message still too large (a snapshot) goes in parts."""
        frame = encode_frame(PeerBatch(messages=list(batch)))
        if len(frame) - 4 <= self._max_frame_size:
            return [frame]
        if len(batch) > 1:
            half = len(batch) // 2
            return self._encode_batch(batch[:half], peer_id) + self._encode_batch(
                batch[half:], peer_id
            )
        if len(frame) - 4 > self._max_message_size:
            logger.warning(
                "dropping a %s to node %d: %d bytes exceed max_message_size=%d",
                type(batch[0]).__name__,
                peer_id,
                len(frame) - 4,
                self._max_message_size,
            )
            self._report_unreachable(peer_id)
            return []
        self._part_seq += 1
        return encode_parts(
            memoryview(frame)[4:].tobytes(), seq=self._part_seq, max_frame_size=self._max_frame_size
        )

    def _report_unreachable(self, peer_id: int) -> None:
        state = self._state
        if state is not None:
            state.inbox.peer_unreachable(peer_id)

    async def _read_peer(self, conn: Connection, peer_id: int, inbox: PeerInbox) -> None:
        node_id = self.node_id
        parts = Reassembly(self._max_message_size)
        while True:
            batch = decode_peer_batch(await conn.reader.receive())
            if isinstance(batch, PeerPart):
                whole = parts.add(batch)
                if whole is None:
                    continue
                batch = decode_peer_batch(whole)
                if not isinstance(batch, PeerBatch):
                    raise ProtocolError(f"peer parts from node {peer_id} joined into a {batch!r}")
            if isinstance(batch, Goodbye):
                conn.close(f"node {peer_id} said goodbye: {batch.reason}")
                return
            messages = batch.messages
            for msg in messages:
                if msg.src != peer_id or msg.dst != node_id:
                    raise ProtocolError(
                        f"{type(msg).__name__} src={msg.src} dst={msg.dst} on the connection "
                        f"from node {peer_id} to node {node_id}"
                    )
            if messages:
                inbox.deliver(messages)

    # -- streamed snapshots (rule 8, ``snapshot_stream``) ---------------------------------------

    def _start_snapshot(self, state: _Serving, msg: InstallSnapshot) -> None:
        scope = self._snapshot_sends.begin(msg, anyio.current_time())
        if scope is not None:  # None: a resend of one under way or just delivered (rule 8)
            state.tg.start_soon(self._send_snapshot, msg, scope, state)

    async def _send_snapshot(
        self, msg: InstallSnapshot, scope: anyio.CancelScope, state: _Serving
    ) -> None:
        peer = msg.dst
        problem: str | None = None
        out = None
        try:
            with scope:
                address = self._peers.get(peer)
                out = await open_source(self._snapshot_source, msg)
                if address is None:
                    problem = f"node {peer} is not in the address book"
                elif out.size > self._max_message_size:
                    problem = f"{out.size} bytes exceed max_message_size={self._max_message_size}"
                else:
                    problem = await self._stream_snapshot_to(peer, address, out)
        except OSError as exc:
            problem = f"cannot read the snapshot: {exc}"
        finally:
            self._snapshot_sends.end(msg, scope)
            if out is not None:
                await out.aclose()
        if scope.cancelled_caught:
            return  # replaced by a newer transfer
        index = msg.snapshot.meta.index
        if problem is None:
            self.snapshots_sent += 1
            self._snapshot_sends.delivered(msg, anyio.current_time() + self._snapshot_timeout())
            logger.info(
                "node %d streamed the snapshot at index %d to node %d", self.node_id, index, peer
            )
            return
        self.snapshots_failed += 1
        logger.warning(
            "node %d could not stream the snapshot at index %d to node %d: %s",
            self.node_id,
            index,
            peer,
            problem,
        )
        state.inbox.peer_unreachable(peer)  # the kernel resends it (report_snapshot)

    async def _stream_snapshot_to(self, peer: int, address: str, out: Outgoing) -> str | None:
        """Dial ``peer`` for ``out`` and stream it; why it failed, or None once it arrived."""
        try:
            stream = await self._connect(address)
        except LOST as exc:
            return f"cannot connect to {address}: {exc!r}"
        # What the handshake checks the other end against (its writes are the stream's own).
        link = _PeerLink(peer, address, 1, self._current_timeouts)
        async with self._connection(stream, self._max_frame_size) as conn:
            with conn.scope:
                shaken = await guard(conn, self._dial_handshake, conn, link, self._snapshot_hello)
                if shaken and await guard(conn, self._stream_snapshot_on, conn, out):
                    conn.close("snapshot sent", level=logging.DEBUG)
                    return None
            return conn.reason or "the handshake failed"

    async def _stream_snapshot_on(self, conn: Connection, out: Outgoing) -> bool:
        try:
            await send_snapshot(
                conn.reader,
                conn.writer,
                out,
                chunk_size=self._chunk_size,
                timeout=self._snapshot_timeout,
                observe=self._observe_snapshot,
            )
        except SnapshotRefused as exc:
            conn.close(f"node {out.message.dst} refused the snapshot: {exc}")
            return False
        return True

    def _snapshot_timeout(self) -> float:
        policy = self._timeouts
        return DEFAULT_SNAPSHOT_TIMEOUT if policy is None else policy.timeout("snapshot")

    def _observe_snapshot(self, seconds: float, ok: bool) -> None:
        if self._timeouts is not None:
            self._timeouts.observe("snapshot", seconds, ok=ok)

    # -- accepting ----------------------------------------------------------------------------

    async def _accept_loop(self, listener: anyio.abc.SocketListener, state: _Serving) -> None:
        while True:
            try:
                burst = await accept_burst(listener)  # counted whole by the caps (rule 3a)
            except OSError as exc:
                # Out of file descriptors, say: keep the node up and try again shortly.
                logger.warning("accept failed on %s: %s", self.listen_address, exc)
                await anyio.sleep(self._backoff_min)
                continue
            for accepted in burst:
                refusal = self._admission.admit(accepted.host)
                if refusal is None:
                    state.tg.start_soon(self._handle_accepted, accepted, accepted.host, state)
                else:
                    await self._refuse_at_accept(accepted, refusal)

    async def _refuse_at_accept(self, accepted: Accepted, reason: str) -> None:
        """Close ``accepted`` unread (rule 3a)."""
        address = accepted.address
        await accepted.aclose()
        if self._admission.should_log(anyio.current_time()):
            logger.warning(
                "node %d refused a connection from %s unread: %s (%d refused so far)",
                self.node_id,
                address,
                reason,
                self._admission.refused,
            )

    async def _handle_accepted(self, accepted: Accepted, host: str, state: _Serving) -> None:
        try:
            ready = await self._secure(accepted)
            if ready is None:
                return
            async with self._connection(ready, self._handshake_frame_size) as conn:
                with conn.scope:
                    await guard(conn, self._accept_handshake, conn, state)
        finally:
            self._admission.release(host)

    async def _secure(self, accepted: Accepted) -> anyio.abc.ByteStream | None:
        """``accepted`` opened, after the server side of the TLS handshake (without TLS, at
        once), or None (closed) if the handshake failed or took longer than
        ``connect_timeout``."""
        if self._tls is None:
            try:
                return await accepted.open()
            except LOST as exc:  # the socket failed between accept and now
                logger.info("closed connection with %s: %r", accepted.address, exc)
                await accepted.aclose()
                return None
        problem = f"no TLS handshake within {self._connect_timeout}s"
        self._securing += 1
        try:
            with anyio.move_on_after(self._connect_timeout):
                try:
                    return await accepted.open(self._tls.server)
                except LOST as exc:
                    problem = f"TLS handshake failed: {exc!r}"
        finally:
            self._securing -= 1
        address = accepted.address
        await accepted.aclose()
        logger.warning("closed connection with %s: %s", address, problem)
        return None

    async def _accept_handshake(self, conn: Connection, state: _Serving) -> None:
        # Our Hello goes out only once the caller is accepted (rule 3): a caller that
        # proved nothing learns nothing.
        hello = await self._receive_hello(conn)
        if hello is None:
            return
        identity = identity_of(conn.stream)
        if hello.role == "client":
            principal = auth.principal_for(
                identity, hello.token, self._tokens, authentication=self._authenticating
            )
            await conn.writer.send(self._hello)
            if principal.role is None:
                await answer_unauthenticated(conn, principal, timeout=self._connect_timeout)
                return
            conn.reader.set_limit(self._max_frame_size)
            await serve_client(conn, state.clients, principal, max_unsent=self._max_unsent)
            return
        refusal = self._refuse_peer(hello, state, dials_us=hello.role == "peer")
        if (
            refusal is None
            and self._tls is not None
            and (identity is None or identity.node_id != hello.node_id)
        ):
            shown = "no certificate" if identity is None else identity.describe()
            refusal = f"a caller claiming to be node {hello.node_id} presented {shown}"
        if refusal is not None:
            conn.close(refusal, goodbye=True)
            return
        await conn.writer.send(self._hello)
        conn.reader.set_limit(self._max_frame_size)
        if hello.role == "snapshot":
            await self._receiver.serve(
                conn,
                hello.node_id,
                state.inbox,
                max_size=self._max_message_size,
                timeout=self._snapshot_timeout,
                observe=self._observe_snapshot,
            )
        else:
            await self._run_peer(conn, state.links[hello.node_id], state)

    def _refuse_peer(self, hello: Hello, state: _Serving, *, dials_us: bool) -> str | None:
        """Why an incoming peer ``hello`` is not acceptable, or ``None``. Only a peer
        connection must come from a lower id (rule 1); a snapshot stream may come from any."""
        if hello.cluster_id != self.cluster_id:
            return (
                f"node {hello.node_id} is in cluster {hello.cluster_id!r}, not {self.cluster_id!r}"
            )
        if hello.node_id not in state.links:
            return f"node {hello.node_id} is not a known peer of node {self.node_id}"
        if dials_us and hello.node_id > self.node_id:
            return (
                f"node {hello.node_id} dialled node {self.node_id}; the lower id dials, "
                "so this node dials it"
            )
        return None

    async def _receive_hello(self, conn: Connection) -> Hello | None:
        with anyio.move_on_after(self._connect_timeout):
            hello = decode_hello(await conn.reader.receive_first(self._handshake_frame_size))
            if isinstance(hello, Goodbye):
                conn.close(f"said goodbye: {hello.reason}")
                return None
            return hello
        conn.close(f"no Hello within {self._connect_timeout}s (handshake timeout)")
        return None

    # -- connection plumbing ------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(
        self, stream: anyio.abc.ByteStream, max_frame_size: int
    ) -> AsyncIterator[Connection]:
        """Own ``stream`` for the block (``_open`` ... ``_finish``), whatever ends it."""
        conn = self._open(stream, max_frame_size)
        try:
            yield conn
        finally:
            await self._finish(conn)

    def _open(self, stream: anyio.abc.ByteStream, max_frame_size: int) -> Connection:
        """Take ``stream`` over: count it. Its owner must ``_finish`` it exactly once."""
        tune_socket(stream, dead_after=self._dead_after)
        self._open_connections += 1
        return Connection(stream, max_frame_size)

    async def _finish(self, conn: Connection) -> None:
        """Say goodbye if owed, close the socket (shielded) and log why."""
        try:
            if conn.goodbye and not conn.writer.torn and conn.reason is not None:
                with anyio.move_on_after(_GOODBYE_TIMEOUT, shield=True):
                    with suppress(*LOST):
                        await conn.writer.send(encode_frame(Goodbye(reason=conn.reason)))
            await close_stream(conn.stream)
        finally:
            self._open_connections -= 1
            conn.ended.set()
        if conn.reason is not None:
            logger.log(conn.level, "closed connection with %s: %s", conn.address, conn.reason)


class _TcpDialer:
    """`PeerDialer`: ``TcpTransport``'s side of its connection pool."""

    __slots__ = ("_transport",)

    def __init__(self, transport: TcpTransport) -> None:
        self._transport = transport

    async def dial(self, peer: int, address: str) -> PeerConnection:
        return await self._transport._dial(peer, address)

    def encode(self, peer: int, messages: Sequence[Message]) -> list[bytes]:
        return self._transport._encode_batch(messages, peer) if messages else []

    def unreachable(self, peer: int) -> None:
        self._transport._report_unreachable(peer)

    @property
    def timeouts(self) -> TimeoutPolicy | None:
        return self._transport._timeouts


if TYPE_CHECKING:  # mypy checks that TcpTransport satisfies the protocols
    _: Transport = TcpTransport(node_id=1, cluster_id="", listen=":0", peers={})
    __: PooledTransport = TcpTransport(node_id=1, cluster_id="", listen=":0", peers={})
