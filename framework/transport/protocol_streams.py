"""TCP connections as anyio byte streams built on asyncio protocols (``connect``, ``accept``).

Theory of operation
-------------------
Every peer and client connection is an ``anyio.abc.ByteStream``: the framing, the
handshakes, the writers and the timeouts above it (``streams``, ``tcp``, ``tcp_client``)
know nothing else. anyio's own TCP stream and its ``TLSStream`` cost a single write's
latency more than the work itself does (issue #15). ``benchmarks/latency_floor.py`` does
one replicated, fsynced write (client, leader, two followers: four processes on loopback)
with nothing but its I/O, once on asyncio protocols and once on anyio streams shaped as
raftmw's (a reader and a writer task per connection): with TLS, p50 0.74 ms against 1.10
ms and the leader's CPU per write 0.31 ms against 0.63 ms; without TLS 0.52 against 0.73
ms (one run each, 2-core VM). Three things make the difference, and this module removes
all three while keeping the stream interface:

1. **TLS in C.** ``TLSStream`` runs the TLS record layer in Python (an ``SSLObject`` and
   two memory BIOs, several calls per send and per receive); the event loop's own TLS
   transport (uvloop's, or asyncio's) does the same work below the interpreter.
2. **A send does not yield.** anyio's ``send`` ends with a checkpoint, a full pass of the
   event loop, on every frame. Here ``send`` hands the bytes to the transport and returns,
   and waits only while the transport holds unsent bytes (rule 4).
3. **A receive does not toggle reading.** anyio resumes and pauses the transport's reading
   around every wait. Here the transport reads continuously and pauses only when
   ``READ_BUFFER_LIMIT`` bytes wait unread (backpressure on the sender, as anyio's).

The rules, which are anyio's stream semantics (so ``LOST`` and ``guard`` work unchanged):

1. ``receive`` returns buffered bytes (at most ``max_bytes``), waiting while there are
   none; it raises ``EndOfStream`` after the other end's orderly close once everything
   received is read, ``BrokenResourceError`` if the connection failed, and
   ``ClosedResourceError`` once this end closed it. One task receives at a time.
2. ``aclose`` closes at once, discarding unsent bytes (anyio's ``abort``): every caller
   already waited for its sends (rule 4), and a connection being closed is being given up.
   Tasks waiting in ``receive`` or ``send`` get ``ClosedResourceError``.
3. TLS is part of opening the connection (``ssl=`` of ``create_connection`` and
   ``connect_accepted_socket``), never ``start_tls`` on an open one: the transport starts
   reading as soon as it exists, and a ClientHello read before ``start_tls`` would be lost.
   So ``accept`` returns an ``Accepted`` socket (its address is known, for the admission
   caps of ``tcp``) that its handler ``open``s, with or without TLS. A handshake that fails
   is a ``ConnectionLost`` saying so for ``connect`` (the one error a dialler reports) and
   an ``ssl.SSLError`` for ``open`` (the acceptor logs it); either is an ``OSError``, and
   the caller bounds the handshake in time.
4. Without TLS the write buffer's high-water mark is 0, as anyio's: a ``send`` returns once
   the kernel took every byte, so a write's time is the peer's reading, which the node's
   timeout policy bounds (``pool.LinkWrites``), and ``aclose`` discards nothing a sender
   was told is sent. With TLS it is ``TLS_WRITE_BUFFER_LIMIT``: uvloop's TLS transport
   announces that a paused writer may resume only when the next write comes (a write
   into an idle connection would wait forever at 0). A peer that stops reading still
   blocks ``send`` once that much and the kernel's socket buffer are full, so the timeout
   policy still bounds it; what ``aclose`` may discard is at most that much, and only on
   a connection that is backed up (a write into a flowing one reaches the kernel at once).
5. Off asyncio (the test suite also runs the runtime on trio) both functions fall back to
   anyio's streams, wrapped in ``TLSStream`` for TLS.
6. ``write_now`` hands bytes to the transport without waiting, for a caller on the event
   loop's thread that must not yield (a pool writing a Ready's messages at once:
   ``framework.seams.ImmediateWrites``); only while ``writable_now``: open, not lost, and
   not paused by rule 4's high-water mark, so what it adds is bounded as a ``send``'s is.
   Bytes go out in the order they were handed over, whichever of the two handed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.abc
import sniffio
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from framework.transport.streams import ConnectionLost, format_address

__all__ = [
    "ACCEPT_BURST",
    "READ_BUFFER_LIMIT",
    "Accepted",
    "ProtocolStream",
    "accept",
    "accept_burst",
    "connect",
]

READ_BUFFER_LIMIT: Final = 64 * 1024
"""Unread bytes at which the transport stops reading (resumed once half is read): with the
chunk that crossed it, what a connection that sends and is not read (a caller not yet
authenticated: ``tcp`` rule 3a) can make this process hold, about what anyio's stream
held (one read of the socket per ``receive``)."""

TLS_WRITE_BUFFER_LIMIT: Final = 64 * 1024
"""Unsent bytes a TLS transport may hold before ``send`` waits (rule 4)."""


class _Wakeup:
    """The one task that may wait for a kind of callback (data, or room to write)."""

    __slots__ = ("_future", "_what")

    def __init__(self, what: str) -> None:
        self._future: asyncio.Future[None] | None = None
        self._what = what

    async def wait(self) -> None:
        if self._future is not None:
            raise anyio.BusyResourceError(self._what)
        self._future = asyncio.get_running_loop().create_future()
        try:
            await self._future
        finally:
            self._future = None

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)


class _Protocol(asyncio.Protocol):
    """The transport's callbacks, kept as state that ``ProtocolStream`` waits on."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reading_paused = False
        self.writing_paused = False
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.readable = _Wakeup("reading from")
        self.writable = _Wakeup("writing to")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        tls = transport.get_extra_info("ssl_object") is not None
        # Rule 4 (uvloop's TLS transport announces a resume only at a later write).
        high = TLS_WRITE_BUFFER_LIMIT if tls else 0
        transport.set_write_buffer_limits(high)  # type: ignore[attr-defined]  # a Transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= READ_BUFFER_LIMIT and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self.readable.wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.readable.wake()
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.readable.wake()
        self.writable.wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.writable.wake()


class ProtocolStream(anyio.abc.ByteStream):
    """A connected TCP (or TLS) transport as an anyio byte stream (module rules 1-4)."""

    def __init__(self, transport: Any, protocol: _Protocol, peername: Any = None) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        # Kept now: a closed transport no longer knows its addresses, and one reset before
        # it was made never did (``peername``: what ``accept`` said, for an accepted one).
        self._peername = transport.get_extra_info("peername") or peername
        self._sockname = transport.get_extra_info("sockname")
        self._socket = transport.get_extra_info("socket")
        self._peercert = transport.get_extra_info("peercert")
        self._ssl_object = transport.get_extra_info("ssl_object")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        self._check_open()  # closed here: what is still buffered is not read any more
        while not protocol.chunks:
            if protocol.error is not None:
                raise anyio.BrokenResourceError from protocol.error
            if protocol.eof or protocol.lost:
                raise anyio.EndOfStream
            await protocol.readable.wait()
            self._check_open()
        chunk = protocol.chunks.popleft()
        if len(chunk) > max_bytes:
            protocol.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        protocol.buffered -= len(chunk)
        if protocol.reading_paused and protocol.buffered <= READ_BUFFER_LIMIT // 2:
            protocol.reading_paused = False
            if not protocol.lost:
                self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        self._check_open()
        if protocol.lost:
            raise anyio.BrokenResourceError from protocol.error
        self._transport.write(item)
        while protocol.writing_paused:  # rule 4: until the kernel took every byte
            await protocol.writable.wait()
            self._check_open()
            if protocol.lost:
                raise anyio.BrokenResourceError from protocol.error

    @property
    def writable_now(self) -> bool:
        """``write_now`` may be called (rule 6)."""
        protocol = self._protocol
        return not (self._closed or protocol.lost or protocol.writing_paused)

    def write_now(self, item: bytes) -> None:
        """Hand ``item`` to the transport at once (rule 6); only while ``writable_now``."""
        protocol = self._protocol
        self._check_open()
        if protocol.lost:
            raise anyio.BrokenResourceError from protocol.error
        if protocol.writing_paused:  # a caller's bug: it did not ask ``writable_now``
            raise anyio.BusyResourceError("writing to")
        self._transport.write(item)

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.abort()  # rule 2; connection_lost wakes whoever waits

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: dict[Any, Callable[[], Any]] = {}
        if self._peername:  # unknown for a socket reset before its transport was made
            attributes[SocketAttribute.remote_address] = lambda: self._peername
        if self._sockname:
            attributes[SocketAttribute.local_address] = lambda: self._sockname
        if isinstance(self._peername, tuple):
            attributes[SocketAttribute.remote_port] = lambda: self._peername[1]
        if isinstance(self._sockname, tuple):
            attributes[SocketAttribute.local_port] = lambda: self._sockname[1]
        if self._socket is not None:
            attributes[SocketAttribute.raw_socket] = lambda: self._socket
            attributes[SocketAttribute.family] = lambda: self._socket.family
        if self._ssl_object is not None:
            attributes[TLSAttribute.ssl_object] = lambda: self._ssl_object
            attributes[TLSAttribute.peer_certificate] = lambda: self._peercert
            attributes[TLSAttribute.peer_certificate_binary] = lambda: self._ssl_object.getpeercert(
                True
            )
        return attributes


def _on_asyncio() -> bool:
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


async def connect(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> anyio.abc.ByteStream:
    """A stream connected to ``host:port``, with TLS when ``ssl_context`` is given (the
    handshake included: ``ConnectionLost`` if it fails). The caller bounds it in time."""
    if not _on_asyncio():
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
        return await _wrap_anyio(stream, ssl_context, server_side=False)
    loop = asyncio.get_running_loop()
    # raftmw's certificates name a node or a role, not a host (tls rule 1), and its contexts
    # check no host name; a context of the caller's own that does is given the host.
    hostname = None
    if ssl_context is not None:
        hostname = host if ssl_context.check_hostname else ""
    # Our own protocol object, not the one returned: with TLS, uvloop returns its own.
    protocol = _Protocol()
    try:
        transport, _ = await loop.create_connection(
            lambda: protocol,
            host,
            port,
            ssl=ssl_context,
            server_hostname=hostname,
        )
    except ssl.SSLError as exc:
        raise ConnectionLost(format_address(host, port), f"TLS handshake failed: {exc!r}") from exc
    return ProtocolStream(transport, protocol)


class Accepted:
    """An accepted connection that nothing has read yet: its address, for the admission
    caps, and ``open`` (rule 3). Closing it without opening it is ``aclose``."""

    def __init__(
        self,
        sock: socket.socket | None,
        stream: anyio.abc.SocketStream | None,
        address: Any = None,
    ) -> None:
        self._sock = sock
        self._stream = stream  # the fallback off asyncio (rule 5)
        if stream is not None:
            try:
                address = stream.extra(SocketAttribute.remote_address)
            except OSError:  # reset already: the socket no longer knows its peer
                address = None
        self._address = address
        self.host = "<unknown>" if address is None else str(address[0])
        """The other end's address without its port: what the connection caps count by."""
        self.address = "<unknown>" if address is None else format_address(address[0], address[1])

    async def open(self, ssl_context: ssl.SSLContext | None = None) -> anyio.abc.ByteStream:
        """The stream, after the server side of the TLS handshake with ``ssl_context``."""
        if self._stream is not None:
            return await _wrap_anyio(self._stream, ssl_context, server_side=True)
        sock, self._sock = self._sock, None
        if sock is None:
            raise anyio.ClosedResourceError
        loop = asyncio.get_running_loop()
        try:
            protocol = _Protocol()  # kept: with TLS, uvloop returns its own protocol
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=ssl_context
            )
        except BaseException:
            sock.close()
            raise
        return ProtocolStream(transport, protocol, self._address)

    async def aclose(self) -> None:
        if self._stream is not None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        elif self._sock is not None:
            self._sock.close()
            self._sock = None


async def accept(listener: anyio.abc.SocketListener) -> Accepted:
    """The next connection on ``listener``, waiting for one (an ``OSError`` if accepting
    failed). Its address is the one ``accept`` returned: a caller that already reset the
    connection still has one (``getpeername`` would fail)."""
    if not _on_asyncio():
        return Accepted(None, await listener.accept())
    raw = listener.extra(SocketAttribute.raw_socket)
    loop = asyncio.get_running_loop()
    try:
        sock, address = await loop.sock_accept(raw)
    except asyncio.CancelledError:
        # Python's own workaround (bpo-41317): a cancelled sock_accept leaves its reader.
        with contextlib.suppress(ValueError, NotImplementedError):
            loop.remove_reader(raw)
        raise
    sock.setblocking(False)
    return Accepted(sock, None, address)


ACCEPT_BURST: Final = 256
"""Connections ``accept_burst`` takes from the backlog at most."""


async def accept_burst(listener: anyio.abc.SocketListener) -> list[Accepted]:
    """The next connection on ``listener`` (waiting for one) and those already waiting
    behind it in the backlog, up to ``ACCEPT_BURST`` in all (an ``OSError`` if the first
    accept failed; a later failure ends the burst, and the next call meets it). A burst of
    callers is taken at once this way, so admission caps see it whole: uvloop's
    ``sock_accept`` takes one connection per pass of the event loop, and between two
    passes the callers admitted first may already be gone. Off asyncio: one at a time."""
    burst = [await accept(listener)]
    if not _on_asyncio():
        return burst
    raw = listener.extra(SocketAttribute.raw_socket)
    while len(burst) < ACCEPT_BURST:
        try:
            sock, address = raw.accept()
        except OSError:  # none waiting (BlockingIOError), or one to report next time
            break
        sock.setblocking(False)
        burst.append(Accepted(sock, None, address))
    return burst


async def _wrap_anyio(
    stream: anyio.abc.ByteStream, context: ssl.SSLContext | None, *, server_side: bool
) -> anyio.abc.ByteStream:
    if context is None:
        return stream
    try:
        return await TLSStream.wrap(
            stream, server_side=server_side, ssl_context=context, standard_compatible=False
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
