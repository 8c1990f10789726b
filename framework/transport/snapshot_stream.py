"""Snapshots streamed on a connection of their own, from memory to a file (issue #13).

Theory of operation
-------------------
An ``InstallSnapshot`` used to travel inside one ``PeerBatch`` on the peer connection: the
sender encoded the whole snapshot, copied it into frame-sized parts and wrote them between
heartbeats (which waited behind them); the receiver joined the parts, copied them and
decoded the batch: four to six times the snapshot's size in memory at the peak, and a leader
that lost its leadership mid-send. Now:

1. **A connection of its own.** The sender dials the receiver (whatever their ids; the
   ``Hello`` role ``"snapshot"`` says what the connection is for; with TLS both ends prove
   who they are, as for a peer connection) and closes it when the transfer ends. Heartbeats
   and votes keep the peer connection to themselves, so they never wait behind a chunk.
2. **Chunks, with flow control.** The stream is a ``SnapshotOffer`` (the ``InstallSnapshot``
   with empty data and the size of the data), ``SnapshotChunk`` frames, and a
   ``SnapshotEnd`` with the data's SHA-256. The sender reads the snapshot from the store's
   file a chunk at a time (``source``: the kernel holds the snapshot without its data), or
   slices the bytes the kernel holds when it has them, and frames one chunk at a time, in a
   worker thread, awaiting each write: TCP's window is the flow control. The receiver
   writes each chunk to a temporary file (a worker thread) before reading the next,
   hashing as it goes, and answers ``SnapshotAck``. On either side, a few chunks are in
   memory while the snapshot travels, never the whole of it.
3. **Checked whole, then delivered as the file.** A stream whose chunks exceed the offered
   size, end short of it or fail the checksum is refused (``SnapshotAck(ok=False)``, the
   file deleted, nothing delivered). A sound one is handed to the node as the file
   (``ReceivedSnapshot``: the ``InstallSnapshot`` without its data, the file's path, size
   and SHA-256), which the node checks from the file in a worker thread before the kernel
   sees it, has the store adopt, and restores from (``framework.runtime.snapshots``). The
   sender reports a refusal or a failure as the peer unreachable, which makes the kernel
   resend the snapshot (``report_snapshot``).
4. **Bounded.** The offered size is at most ``max_message_size``, each chunk frame at most
   ``max_frame_size``, the bytes written never exceed the offer, an empty chunk is refused
   (so the count of chunks is bounded by the size), one inbound stream per peer (a newer
   one replaces the older; a sender starts one only when the one before ended or its term
   changed), and every frame must arrive within the node's timeout policy's
   ``snapshot`` timeout (``DEFAULT_SNAPSHOT_TIMEOUT`` without a policy), as must every
   chunk be written on the sender's side.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Final, Protocol

import anyio
import msgspec

from framework.core import InstallSnapshot, Snapshot, SnapshotMeta, validate_message
from framework.core.errors import InvalidMessage
from framework.transport.bounds import OutOfBounds, check_message
from framework.transport.streams import FrameReader, FrameWriter
from framework.transport.wire import Goodbye, ProtocolError, encode_frame

__all__ = [
    "DEFAULT_SNAPSHOT_CHUNK_SIZE",
    "DEFAULT_SNAPSHOT_TIMEOUT",
    "Outgoing",
    "ReceivedSnapshot",
    "SnapshotAck",
    "SnapshotChunk",
    "SnapshotEnd",
    "SnapshotOffer",
    "SnapshotReceiver",
    "SnapshotRefused",
    "SnapshotSends",
    "SnapshotSpool",
    "Source",
    "hand_over",
    "open_source",
    "receive_snapshot",
    "send_snapshot",
]

DEFAULT_SNAPSHOT_CHUNK_SIZE: Final = 1024 * 1024
"""Bytes of snapshot data per chunk frame (less if ``max_frame_size`` is smaller)."""
DEFAULT_SNAPSHOT_TIMEOUT: Final = 10.0
"""Seconds a chunk may take without a timeout policy (the fixed ``snapshot`` timeout)."""
CHUNK_OVERHEAD: Final = 32
"""Bytes a ``SnapshotChunk`` frame spends besides its data (tag, field name, length)."""
SPOOL_SUFFIX: Final = ".snapshot-partial"

_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class SnapshotOffer(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot_offer"):
    """The ``InstallSnapshot`` whose data follows (its own ``data`` is empty)."""

    message: InstallSnapshot
    size: _U63


class SnapshotChunk(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot_chunk"):
    data: bytes


class SnapshotEnd(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot_end"):
    sha256: _Digest


class SnapshotAck(msgspec.Struct, frozen=True, kw_only=True, tag="snapshot_ack"):
    ok: bool
    reason: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class SnapshotRefused(Exception):
    """The receiver refused a streamed snapshot; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedSnapshot:
    """A snapshot that arrived whole: ``message`` without its data, which is the file at
    ``path`` (``size`` bytes, hex ``sha256``), now the receiver's to keep or delete."""

    message: InstallSnapshot
    path: Path
    size: int
    sha256: str


_STREAM: Final = msgspec.msgpack.Decoder(SnapshotOffer | SnapshotChunk | SnapshotEnd | Goodbye)
_ACK: Final = msgspec.msgpack.Decoder(SnapshotAck | Goodbye)

Timeout = Callable[[], float]
"""Seconds the next chunk may take (the timeout policy's ``snapshot`` operation)."""
Observe = Callable[[float, bool], None]
"""Reports how long a chunk took and whether it made it in time."""


def _decode(decoder: msgspec.msgpack.Decoder[Any], what: str, frame: bytes) -> Any:
    try:
        return decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"undecodable {what} frame ({len(frame)} bytes): {exc}") from None


# -- sending -----------------------------------------------------------------------------------


def chunk_size_for(max_frame_size: int, wanted: int = DEFAULT_SNAPSHOT_CHUNK_SIZE) -> int:
    """The data per chunk that keeps a chunk frame within ``max_frame_size``."""
    size = min(wanted, max_frame_size - CHUNK_OVERHEAD)
    if size <= 0:
        raise ValueError(f"max_frame_size={max_frame_size} leaves no room for snapshot data")
    return size


def _chunks(data: bytes, size: int) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def _frame_chunk(digest: Any, chunk: memoryview | bytes) -> bytes:
    """Hash ``chunk`` and frame it (a worker thread: hashing lets go of the GIL)."""
    digest.update(chunk)
    return encode_frame(SnapshotChunk(data=chunk))  # type: ignore[arg-type]  # msgspec encodes a memoryview as bytes


def _read_chunk(source: IO[bytes], size: int, digest: Any) -> tuple[bytes, int]:
    """The next chunk of ``source`` (up to ``size`` bytes), hashed and framed, and its
    length (0 at the end of ``source``); a worker thread."""
    chunk = source.read(size)
    return (_frame_chunk(digest, chunk) if chunk else b""), len(chunk)


def source_size(source: IO[bytes]) -> int:
    """The bytes left in ``source`` from where it is (blocking: a worker thread)."""
    here = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(here)
    return end - here


async def _timed(timeout: Timeout, observe: Observe, what: str, step: Any) -> Any:
    limit = timeout()
    started = anyio.current_time()
    try:
        with anyio.fail_after(limit):
            result = await step()
    except TimeoutError:
        observe(anyio.current_time() - started, False)
        raise TimeoutError(f"{what} took longer than the snapshot timeout ({limit:g}s)") from None
    observe(anyio.current_time() - started, True)
    return result


async def send_snapshot(
    reader: FrameReader,
    writer: FrameWriter,
    outgoing: InstallSnapshot | Outgoing,
    *,
    chunk_size: int,
    timeout: Timeout,
    observe: Observe,
) -> None:
    """Stream ``outgoing`` on a connection past its handshake; return once the receiver
    has it whole (``SnapshotRefused`` if it says otherwise; ``TimeoutError`` if a chunk or
    the answer takes longer than ``timeout()``). Its data is the message's, or the file's
    (read a chunk at a time)."""
    if isinstance(outgoing, InstallSnapshot):
        outgoing = Outgoing(message=outgoing, size=len(outgoing.snapshot.data))
    msg, source, size = outgoing.message, outgoing.file, outgoing.size
    data = msg.snapshot.data
    header = InstallSnapshot(
        src=msg.src,
        dst=msg.dst,
        term=msg.term,
        snapshot=Snapshot(meta=msg.snapshot.meta, data=b""),
    )
    await _timed(
        timeout,
        observe,
        "the snapshot offer",
        lambda: writer.send(encode_frame(SnapshotOffer(message=header, size=size))),
    )
    digest = hashlib.sha256()
    if source is None:
        for chunk in _chunks(data, chunk_size):
            frame = await anyio.to_thread.run_sync(_frame_chunk, digest, chunk)
            await _timed(timeout, observe, "a snapshot chunk", lambda f=frame: writer.send(f))
    else:
        sent = 0
        while sent < size:
            frame, length = await anyio.to_thread.run_sync(
                _read_chunk, source, min(chunk_size, size - sent), digest
            )
            if not length:
                raise OSError(f"the snapshot file ended after {sent} of its {size} bytes")
            sent += length
            await _timed(timeout, observe, "a snapshot chunk", lambda f=frame: writer.send(f))
    end = encode_frame(SnapshotEnd(sha256=digest.digest()))
    await _timed(timeout, observe, "the snapshot's end", lambda: writer.send(end))

    async def answer() -> Any:
        return _decode(_ACK, "snapshot answer", await reader.receive())

    ack = await _timed(timeout, observe, "the snapshot answer", answer)
    if isinstance(ack, Goodbye):
        raise SnapshotRefused(ack.reason)
    if not ack.ok:
        raise SnapshotRefused(ack.reason)


# -- receiving ---------------------------------------------------------------------------------


class SnapshotSpool:
    """Where inbound streams are written: temporary files in one directory (the node's
    data directory, or the system's temporary directory until one is given)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._swept = False

    def use_directory(self, directory: Path) -> None:
        self._directory = directory
        self._swept = False

    def open(self) -> _SpoolFile:
        """A new temporary file (blocking: call it in a worker thread). The first file in
        a directory sweeps it of the partial files a crash left behind."""
        directory = self._directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                for stale in directory.glob(f"*{SPOOL_SUFFIX}"):
                    stale.unlink(missing_ok=True)
                self._swept = True
        fd, name = tempfile.mkstemp(
            suffix=SPOOL_SUFFIX, dir=None if directory is None else str(directory)
        )
        return _SpoolFile(fd, Path(name))


class _SpoolFile:
    """One inbound stream's temporary file: written and hashed chunk by chunk (each call
    in a worker thread), then closed and handed over whole, or deleted."""

    __slots__ = ("_digest", "_file", "path", "size")

    def __init__(self, fd: int, path: Path) -> None:
        self._file = os.fdopen(fd, "w+b")
        self._digest = hashlib.sha256()
        self.path = path
        self.size = 0

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._file.write(data)
        self.size += len(data)

    def digest(self) -> bytes:
        return self._digest.digest()

    def close(self) -> None:
        self._file.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)


async def receive_snapshot(
    reader: FrameReader,
    writer: FrameWriter,
    *,
    peer_id: int,
    node_id: int,
    spool: SnapshotSpool,
    max_size: int,
    timeout: Timeout,
    observe: Observe,
) -> ReceivedSnapshot | None:
    """Receive one streamed snapshot from ``peer_id`` on a connection past its handshake:
    the file it was written to once it arrived whole and checked, or None if the sender
    said goodbye. A stream refused (too large, short, failing its checksum) is a
    ``SnapshotRefused`` once the sender was told why; a sender breaking the protocol a
    ``ProtocolError``; a frame that takes longer than ``timeout()`` a ``TimeoutError``.
    Nothing of a refused stream is kept."""

    async def frame(what: str) -> Any:
        async def step() -> Any:
            return _decode(_STREAM, what, await reader.receive())

        return await _timed(timeout, observe, what, step)

    offer = await frame("snapshot offer")
    if isinstance(offer, Goodbye):
        return None
    if not isinstance(offer, SnapshotOffer):
        raise ProtocolError(
            f"node {peer_id} opened a snapshot stream with a {type(offer).__name__}"
        )
    msg = offer.message
    try:
        validate_message(msg)
        check_message(msg, 0)
    except (InvalidMessage, OutOfBounds) as exc:
        raise ProtocolError(f"invalid snapshot offer from node {peer_id}: {exc}") from None
    if msg.src != peer_id or msg.dst != node_id:
        raise ProtocolError(
            f"snapshot offer src={msg.src} dst={msg.dst} on a stream from node {peer_id} to "
            f"node {node_id}"
        )
    if msg.snapshot.data:
        raise ProtocolError(f"snapshot offer from node {peer_id} carries data; expected none")
    if offer.size > max_size:
        too_large = f"snapshot of {offer.size} bytes exceeds max_message_size={max_size}"
        await writer.send(encode_frame(SnapshotAck(ok=False, reason=too_large)))
        raise SnapshotRefused(too_large)
    file = await anyio.to_thread.run_sync(spool.open)
    received: ReceivedSnapshot | None = None
    try:
        while True:
            part = await frame("snapshot chunk")
            if isinstance(part, Goodbye):
                return None
            if isinstance(part, SnapshotOffer):
                raise ProtocolError(f"node {peer_id} sent a second snapshot offer mid-stream")
            if isinstance(part, SnapshotEnd):
                break
            if not part.data:
                raise ProtocolError(f"node {peer_id} sent an empty snapshot chunk")
            if file.size + len(part.data) > offer.size:
                raise ProtocolError(
                    f"snapshot chunks from node {peer_id} exceed the offered size of "
                    f"{offer.size} bytes"
                )
            await anyio.to_thread.run_sync(file.write, part.data)
        problem: str | None = None
        if file.size != offer.size:
            problem = f"snapshot stream ended at {file.size} of the {offer.size} bytes offered"
        elif file.digest() != part.sha256:
            problem = "snapshot stream failed its SHA-256 check"
        if problem is not None:
            await writer.send(encode_frame(SnapshotAck(ok=False, reason=problem)))
            raise SnapshotRefused(problem)
        await anyio.to_thread.run_sync(file.close)
        await writer.send(encode_frame(SnapshotAck(ok=True)))
        received = ReceivedSnapshot(
            message=msg, path=file.path, size=file.size, sha256=file.digest().hex()
        )
    finally:
        if received is None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.discard)
    return received


Source = Callable[[SnapshotMeta], "IO[bytes] | None"]
"""Opens the stored snapshot at a ``SnapshotMeta`` for reading, or None if the store holds
another now (blocking: called in a worker thread)."""


@dataclass(slots=True, kw_only=True)
class Outgoing:
    """A snapshot to stream: ``message``, and its data's ``size`` in bytes, read from
    ``file`` (the store's) when the kernel sent the message without its data."""

    message: InstallSnapshot
    size: int
    file: IO[bytes] | None = None

    async def aclose(self) -> None:
        if self.file is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.file.close)


async def open_source(source: Source | None, msg: InstallSnapshot) -> Outgoing:
    """What to stream for ``msg``: its own data, or the store's file of it when the kernel
    sent it without. ``OSError`` if that snapshot is no longer stored (a newer one replaced
    it: the kernel sends that one)."""
    if msg.snapshot.data or source is None:
        return Outgoing(message=msg, size=len(msg.snapshot.data))
    meta = msg.snapshot.meta
    file = await anyio.to_thread.run_sync(source, meta)
    if file is None:
        raise OSError(f"the snapshot at index {meta.index} (term {meta.term}) is no longer stored")
    outgoing = Outgoing(message=msg, size=0, file=file)
    try:
        outgoing.size = await anyio.to_thread.run_sync(source_size, file)
    except BaseException:
        await outgoing.aclose()
        raise
    return outgoing


async def hand_over(inbox: Any, received: ReceivedSnapshot) -> None:
    """Give ``received`` to the node: as the file (``inbox.deliver_snapshot``), or to an
    inbox without that, read back whole (the file deleted) as an ordinary InstallSnapshot."""
    deliver_file = getattr(inbox, "deliver_snapshot", None)
    if deliver_file is not None:
        deliver_file(received)
        return
    data = await anyio.to_thread.run_sync(_take, received.path)
    msg = received.message
    inbox.deliver(
        [
            InstallSnapshot(
                src=msg.src,
                dst=msg.dst,
                term=msg.term,
                snapshot=Snapshot(meta=msg.snapshot.meta, data=data),
            )
        ]
    )


def _take(path: Path) -> bytes:
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


class StreamConnection(Protocol):
    """What ``SnapshotReceiver`` needs of a connection past its handshake."""

    reader: FrameReader
    writer: FrameWriter

    def close(self, reason: str, *, level: int = ...) -> None: ...


class SnapshotReceiver:
    """A node's inbound snapshot streams: one per peer at a time (a newer one replaces the
    older), spooled to files, handed to the node (``hand_over``) once whole and checked."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.spool = SnapshotSpool()
        self._streams: dict[int, StreamConnection] = {}
        """Per peer, the connection its snapshot is streaming in on."""
        self.received = 0
        """Snapshots that arrived whole and were delivered."""
        self.refused = 0
        """Inbound streams refused: too large, short of their size, or failing the checksum."""

    async def serve(
        self,
        conn: StreamConnection,
        peer_id: int,
        inbox: Any,
        *,
        max_size: int,
        timeout: Timeout,
        observe: Observe,
    ) -> None:
        """Receive the snapshot ``peer_id`` streams on ``conn``, then close it."""
        older = self._streams.get(peer_id)
        if older is not None:
            older.close(
                f"replaced by a newer snapshot stream from node {peer_id}", level=logging.INFO
            )
        self._streams[peer_id] = conn
        try:
            received = await receive_snapshot(
                conn.reader,
                conn.writer,
                peer_id=peer_id,
                node_id=self.node_id,
                spool=self.spool,
                max_size=max_size,
                timeout=timeout,
                observe=observe,
            )
        except SnapshotRefused as exc:
            self.refused += 1
            conn.close(f"refused a snapshot stream from node {peer_id}: {exc}")
            return
        finally:
            if self._streams.get(peer_id) is conn:
                del self._streams[peer_id]
        if received is None:
            conn.close(f"node {peer_id} said goodbye mid-snapshot")
            return
        self.received += 1
        await hand_over(inbox, received)
        conn.close(
            f"received the snapshot at index {received.message.snapshot.meta.index} from "
            f"node {peer_id}",
            level=logging.INFO,
        )


class SnapshotSends:
    """Which snapshot is on its way to each peer, and which one arrived whole.

    The kernel cannot tell a transfer under way from a lost one: it resends InstallSnapshot
    at the first heartbeat answer, which a connection of its own brings back almost at once.
    A resend of the snapshot being streamed is dropped, and so is a newer snapshot of the
    same term (the transfer under way finishes first: a leader that snapshots more often
    than a large snapshot takes to travel would otherwise restart it forever), and so is a
    resend of the snapshot that arrived whole, until ``until`` (the follower is still
    checking and installing it); a snapshot of a newer term cancels the transfer.
    """

    __slots__ = ("_delivered", "_sending")

    def __init__(self) -> None:
        self._sending: dict[int, tuple[InstallSnapshot, anyio.CancelScope]] = {}
        self._delivered: dict[int, tuple[InstallSnapshot, float]] = {}

    def begin(self, msg: InstallSnapshot, now: float) -> anyio.CancelScope | None:
        """The scope to stream ``msg`` in, or None when it is a resend to drop."""
        peer = msg.dst
        delivered = self._delivered.get(peer)
        if delivered is not None:
            sent, until = delivered
            if _same_snapshot(sent, msg) and now < until:
                return None
            del self._delivered[peer]
        current = self._sending.get(peer)
        if current is not None:
            sending, scope = current
            if sending.term == msg.term:
                # The same snapshot, or a newer one of the same leader: the transfer under
                # way goes on (replacing it would never finish while the leader snapshots
                # faster than a snapshot travels); the kernel sends the newer one after it,
                # if the follower still needs it.
                return None
            scope.cancel()
        scope = anyio.CancelScope()
        self._sending[peer] = (msg, scope)
        return scope

    def end(self, msg: InstallSnapshot, scope: anyio.CancelScope) -> None:
        """The transfer in ``scope`` is over (whatever its outcome)."""
        current = self._sending.get(msg.dst)
        if current is not None and current[1] is scope:
            del self._sending[msg.dst]

    def delivered(self, msg: InstallSnapshot, until: float) -> None:
        """``msg`` arrived whole: drop its resends until ``until``."""
        self._delivered[msg.dst] = (msg, until)


def _same_snapshot(a: InstallSnapshot, b: InstallSnapshot) -> bool:
    return a.term == b.term and a.snapshot.meta == b.snapshot.meta
