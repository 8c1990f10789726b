"""A scriptable `PeerDialer` for connection pool tests: peers that accept, refuse, hang in
the connect, or stop reading, with every frame written decoded back into messages."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import anyio
from anyio.lowlevel import checkpoint

from framework.core import Heartbeat, Message
from framework.seams import TimeoutPolicy
from framework.transport.tcp import ConnectionLost
from framework.transport.wire import FrameDecoder, PeerBatch, decode_peer_batch, encode_frame


class FakeConnection:
    """`PeerConnection` to one fake peer; ``fail()`` is the peer going away."""

    def __init__(self, dialer: FakeDialer, peer: int, address: str) -> None:
        self.dialer = dialer
        self.peer = peer
        self.address = address
        self.writes = 0
        self.closed_by: str | None = None
        self.writing = False
        """A ``send_frames`` is under way."""
        self._ended = anyio.Event()
        self._decoder = FrameDecoder(1 << 30)

    @property
    def closed(self) -> bool:
        return self._ended.is_set()

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if self.closed:
            raise ConnectionLost(self.address, "closed")
        self.writing = True
        try:
            gate = self.dialer.write_gates.get(self.peer)
            if gate is not None:
                await gate.wait()  # a peer that stopped reading
            else:
                await checkpoint()
        finally:
            self.writing = False
        if self.closed:
            raise ConnectionLost(self.address, "closed during the write")
        self.writes += 1
        self.dialer.writes[self.peer] += 1
        self._deliver(frames)

    def _deliver(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            for body in self._decoder.feed(frame):
                batch = decode_peer_batch(body)
                assert isinstance(batch, PeerBatch)
                self.dialer.delivered[self.peer].extend(batch.messages)

    async def wait_closed(self) -> None:
        await self._ended.wait()

    async def aclose(self) -> None:
        self._end("pool")
        await checkpoint()

    def fail(self) -> None:
        self._end("remote")

    def _end(self, by: str) -> None:
        if not self._ended.is_set():
            self.closed_by = by
            self.dialer.open -= 1
            self._ended.set()


class ImmediateConnection(FakeConnection):
    """A `FakeConnection` that also offers `framework.seams.ImmediateWrites`, as the TCP
    transport's do: writable at once while open, with no write under way and its peer
    reading (no write gate: a gated peer is a socket whose buffers are full)."""

    @property
    def writable_now(self) -> bool:
        return not (self.closed or self.writing or self.peer in self.dialer.write_gates)

    def write_now(self, frames: Sequence[bytes]) -> None:
        assert self.writable_now, "written at once while not writable"
        self.dialer.at_once[self.peer] += 1
        self._deliver(frames)


class FakeDialer:
    """`PeerDialer`: ``refuse`` makes a peer's dials fail, ``hang`` holds them until the
    peer's gate opens, ``write_gates`` holds writes; everything is counted."""

    def __init__(self, *, immediate: bool = False) -> None:
        self.immediate = immediate
        """Dial `ImmediateConnection`s (written at once while idle) instead of plain ones."""
        self.at_once: dict[int, int] = defaultdict(int)
        """Writes at once per peer (``ImmediateConnection.write_now``)."""
        self.refuse: set[int] = set()
        self.hang: dict[int, anyio.Event] = {}
        self.write_gates: dict[int, anyio.Event] = {}
        self.crash_encode: set[int] = set()
        self.open = 0
        self.dials: list[tuple[int, str]] = []
        self.dialling: set[int] = set()
        self.connections: dict[int, list[FakeConnection]] = defaultdict(list)
        self.delivered: dict[int, list[Message]] = defaultdict(list)
        self.writes: dict[int, int] = defaultdict(int)
        self.reports: list[int] = []
        """Peers reported unreachable, in order."""
        self.timeouts: TimeoutPolicy | None = None
        """The node's timeout policy as a transport hands it to its pool (None: not given)."""

    async def dial(self, peer: int, address: str) -> FakeConnection:
        self.dials.append((peer, address))
        self.dialling.add(peer)
        try:
            await checkpoint()
            if peer in self.hang:
                await self.hang[peer].wait()
            if peer in self.refuse:
                raise ConnectionRefusedError(f"node {peer} at {address} refused")
        finally:
            self.dialling.discard(peer)
        conn = (ImmediateConnection if self.immediate else FakeConnection)(self, peer, address)
        self.open += 1
        self.connections[peer].append(conn)
        return conn

    def encode(self, peer: int, messages: Sequence[Message]) -> list[bytes]:
        if peer in self.crash_encode:
            self.crash_encode.discard(peer)
            raise RuntimeError(f"a bug while encoding for node {peer}")
        return [encode_frame(PeerBatch(messages=list(messages)))]

    def unreachable(self, peer: int) -> None:
        self.reports.append(peer)

    def live(self, peer: int) -> FakeConnection | None:
        for conn in reversed(self.connections[peer]):
            if not conn.closed:
                return conn
        return None

    def terms(self, peer: int) -> list[int]:
        return [m.term for m in self.delivered[peer]]


def hb(dst: int, term: int, src: int = 1) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, term=term)
