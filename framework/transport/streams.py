"""Framed TCP streams, shared by both ends of a raftmw connection (``tcp``, ``tcp_client``).

A ``FrameReader`` yields whole frames, a ``FrameWriter`` writes whole frames or marks the
stream torn, and an ``Outbox`` queues frames for a connection's single writer task so that
whatever piles up while a write is in progress leaves in the next one (coalescing).

Written at once, coalesced after
--------------------------------
A writer task wakes only after the task that queued a frame yields, and on one write's path
that wait was about 0.1 ms a hop (issue #15: a follower's acknowledgement waited for its
Ready loop's pass to end). So the first frame of a pass of the event loop for an idle
connection is written by its caller, at once (``Outbox.send``, ``FrameWriter.write_now``;
peer links: ``pool.write_at_once``), and whatever else is sent to that connection in the
same pass queues for the writer, which takes it all in one write. ``PassLatch`` is what
says "first in this pass". Order holds because a frame is written at once only while
nothing is queued and the writer has no write under way.

A client connection under load gets many frames a pass (a Ready loop's answers to hundreds
of writers; a load generator's requests), and there the write at once is a second system
call and TLS record a pass for nothing: 512 writers on 8 connections wrote 0.88-0.91x the
writes a second of the writer task alone (``benchmarks/bench_soak.py``, 4 runs a side). So
an ``Outbox`` writes at once only when the last pass in which it sent anything sent one
frame (``PassLatch(bursts=True)``): one writer at a time gets its frame at once, a burst
goes out in one write, as before. A peer link gets one batch a pass from the Ready loop
and needs no such rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from framework.transport.wire import FrameDecoder, ProtocolError

__all__ = [
    "DEFAULT_DEAD_CONNECTION_TIMEOUT",
    "DEFAULT_MAX_FRAME_SIZE",
    "LOST",
    "RECEIVE_SIZE",
    "ConnectionLost",
    "FrameReader",
    "FrameWriter",
    "Outbox",
    "PassLatch",
    "close_stream",
    "format_address",
    "parse_address",
    "remote_address",
    "tune_socket",
]

DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024
RECEIVE_SIZE: Final = 65536

LOST: Final = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
"""What a socket raises when the other end went away (``TimeoutError`` is an ``OSError``)."""


class ConnectionLost(ConnectionError):
    """The connection to ``address`` died, was refused, or the server said ``Goodbye``."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"connection to {address} lost: {reason}")
        self.address = address
        self.reason = reason


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``; raises ``ValueError``."""
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address {address!r}: expected HOST:PORT with a port in 0..65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remote_address(stream: anyio.abc.ByteStream) -> str:
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except (OSError, anyio.TypedAttributeLookupError):
        return "<unknown>"
    if isinstance(address, str):  # a UNIX socket
        return address
    if not address:  # a socket reset before anything asked
        return "<unknown>"
    return format_address(address[0], address[1])


DEFAULT_DEAD_CONNECTION_TIMEOUT: Final = 10.0
"""Seconds after which a connection whose other end vanished (a machine that lost power, a
cable pulled: no FIN, no RST) is declared dead by the operating system."""

_KEEPALIVE_PROBES: Final = 3


def tune_socket(
    stream: anyio.abc.ByteStream, *, dead_after: float = DEFAULT_DEAD_CONNECTION_TIMEOUT
) -> None:
    """No Nagle delay, and a dead peer noticed within about ``dead_after`` seconds.

    Frames are already coalesced, so Nagle would only add latency to each batch. Without
    the rest, a connection to a machine that died without closing it stays "open" until TCP
    gives up retransmitting (about 15 minutes on Linux): the node that dialled it keeps
    writing into it and never redials, and the restarted peer, which only accepts from
    lower ids, stays cut off all that time. ``TCP_USER_TIMEOUT`` (Linux) fails the
    connection when data sent goes unacknowledged for ``dead_after``; keepalive probes do
    the same for an idle connection (idle ``dead_after / 2``, then 3 probes in the other
    half). Options a platform lacks are skipped.
    """
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return
    tcp = socket.IPPROTO_TCP
    options: list[tuple[int, int, int]] = [
        (tcp, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    idle = max(1, round(dead_after / 2))
    interval = max(1, round(dead_after / 2 / _KEEPALIVE_PROBES))
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", _KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", max(1, round(dead_after * 1000))),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((tcp, option, value))
    for level, option, value in options:
        # Not a TCP socket (a test's UNIX socket), or an option this kernel refuses.
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


async def close_stream(stream: anyio.abc.ByteStream) -> None:
    # Shielded: cancellation must still release the socket.
    with anyio.CancelScope(shield=True):
        await stream.aclose()


_HEADER: Final = struct.Struct(">I")


class FrameReader:
    """Whole frames from a stream; ``receive`` raises ``EndOfStream`` at EOF.

    ``receive_first`` reads a connection's first frame (its ``Hello``) exactly, refusing it
    over a small limit and reading nothing past it: until the other end is authenticated,
    it cannot make this node buffer more than that limit. ``set_limit`` then raises (or
    keeps) the frame size for the rest of the connection.
    """

    __slots__ = ("_decoder", "_frames", "_stream")

    def __init__(self, stream: anyio.abc.ByteReceiveStream, max_frame_size: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_size)
        self._frames: deque[bytes] = deque()

    async def receive(self) -> bytes:
        while not self._frames:
            chunk = await self._stream.receive(RECEIVE_SIZE)
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.popleft()

    async def receive_first(self, limit: int) -> bytes:
        if self._frames or self._decoder.pending:
            raise RuntimeError("receive_first after frames were received")
        (size,) = _HEADER.unpack(await self._exactly(_HEADER.size))
        if size > limit:
            raise ProtocolError(
                f"first frame of {size} bytes exceeds the {limit}-byte limit of a handshake "
                "(security.handshake_frame_size)"
            )
        return await self._exactly(size)

    async def _exactly(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            data += await self._stream.receive(count - len(data))
        return bytes(data)

    def set_limit(self, max_frame_size: int) -> None:
        """Frames up to ``max_frame_size`` from now on (only between frames)."""
        if self._frames or self._decoder.pending:
            raise RuntimeError("set_limit while a frame is partly received")
        self._decoder = FrameDecoder(max_frame_size)


class FrameWriter:
    """Serialises whole-frame writes; a write cut short poisons the stream (rule 7).

    On a stream that can take bytes without waiting (``ProtocolStream``'s rule 6),
    ``write_now`` writes frames at once from a caller that must not yield, while no
    ``send`` is in progress (``ready``): frames leave in the order they were written.
    """

    __slots__ = ("_immediate", "_lock", "_stream", "torn")

    def __init__(self, stream: anyio.abc.ByteSendStream) -> None:
        self._stream = stream
        self._immediate: Any = stream if hasattr(stream, "write_now") else None
        """The stream, if it offers ``writable_now`` and ``write_now``."""
        # fast_acquire: a free lock is taken without first yielding to the event loop, so a
        # frame leaves now instead of behind every task that is ready to run (issue #15).
        self._lock = anyio.Lock(fast_acquire=True)
        self.torn = False

    async def send(self, frame: bytes) -> None:
        async with self._lock:
            if self.torn:
                raise anyio.ClosedResourceError
            self.torn = True
            await self._stream.send(frame)
            self.torn = False

    @property
    def ready(self) -> bool:
        """``write_now`` may be called: the stream takes bytes at once, and no ``send`` is
        under way or was cut short."""
        immediate = self._immediate
        return (
            immediate is not None
            and not self.torn
            and not self._lock.locked()
            and immediate.writable_now
        )

    def write_now(self, frames: Sequence[bytes]) -> None:
        """Write whole ``frames`` at once, in one piece; only while ``ready``."""
        if not self.ready:  # a caller's bug: frames out of order or into a torn stream
            raise anyio.BusyResourceError("writing to")
        self._immediate.write_now(frames[0] if len(frames) == 1 else b"".join(frames))


class PassLatch:
    """Says yes once per pass of the asyncio event loop (module docstring: written at once).

    ``take`` is True for its first call in a pass and False for the rest of it: the pass's
    end (a callback the loop runs once the running task yields) opens it again. With
    ``bursts``, every frame sent is to be ``take``n, and the first call of a pass is also
    False when the last pass in which ``take`` was called had more than one call (a burst:
    the writer coalesces). Off asyncio it is always False: such streams have no write at
    once."""

    __slots__ = ("_burst", "_bursts", "_calls")

    def __init__(self, *, bursts: bool = False) -> None:
        self._bursts = bursts
        self._calls = 0
        """Calls of ``take`` in this pass."""
        self._burst = False
        """The last pass with calls had more than one (with ``bursts``)."""

    def take(self) -> bool:
        calls = self._calls
        if calls == 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # trio: nothing is written at once there
                return False
            loop.call_soon(self._end_pass)
        self._calls = calls + 1
        return calls == 0 and not self._burst

    def _end_pass(self) -> None:
        self._burst = self._bursts and self._calls > 1
        self._calls = 0


class Outbox:
    """Frames queued for a connection's one writer task. Whatever piles up while a write is
    in progress leaves in the next write, so a burst of answers costs one system call."""

    __slots__ = ("_frames", "_latch", "_limit", "_wake", "at_once", "closed", "unsent")

    def __init__(self, *, limit: int | None = None) -> None:
        self._frames: list[bytes] = []
        self._wake = anyio.Event()
        self._limit = limit
        self._latch = PassLatch(bursts=True)
        self.unsent = 0
        """Bytes queued and not yet handed to the socket."""
        self.closed = False
        self.at_once = 0
        """Frames ``send`` wrote at once instead of queueing them."""

    def send(self, frame: bytes, writer: FrameWriter) -> bool:
        """Write ``frame`` at once through ``writer`` (the writer task's own) if nothing is
        queued, the writer is ready and it is the first frame of this pass, outside a burst
        (module docstring); else ``put`` it, with ``put``'s answer."""
        first = self._latch.take()  # every frame counts: a pass of many is a burst
        if first and not self._frames and not self.closed and writer.ready:
            writer.write_now((frame,))
            self.at_once += 1
            return True
        return self.put(frame)

    def put(self, frame: bytes) -> bool:
        """Queue ``frame``; False (and nothing queued) once closed or over the limit."""
        if self.closed or (self._limit is not None and self.unsent + len(frame) > self._limit):
            return False
        self._frames.append(frame)
        self.unsent += len(frame)
        self._wake.set()
        return True

    async def take(self) -> bytes:
        """Everything queued, as one buffer; waits while nothing is."""
        while not self._frames:
            await self._wake.wait()
            self._wake = anyio.Event()
        frames, self._frames = self._frames, []
        self.unsent = 0
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def close(self) -> None:
        self.closed = True
        self._frames = []
        self.unsent = 0
