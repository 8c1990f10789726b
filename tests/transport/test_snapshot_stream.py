"""Snapshots streamed on a connection of their own (framework/transport/snapshot_stream.py,
tcp.py rule 8), on 127.0.0.1: chunked, flow-controlled, spooled to a file, checked whole;
and what a receiver does with a stream that is corrupt, short, oversized or hostile."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from test_tcp_transport import TimingPolicy, make, wait_until
from test_tls import certs, context, session, tls_cluster
from test_tls import hello as tls_hello
from transport_harness import Node

from framework.core import ConfState, InstallSnapshot, Snapshot, SnapshotMeta
from framework.transport import PROTOCOL, PROTOCOL_VERSION, Hello, encode_frame
from framework.transport.certificates import TlsDirectory
from framework.transport.snapshot_stream import (
    SnapshotAck,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotOffer,
)
from framework.transport.streams import FrameReader
from framework.transport.wire import Goodbye

pytestmark = pytest.mark.anyio
__all__ = ["certs"]  # the module-scoped fixture of node certificates, shared with test_tls


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _snapshot(src: int, dst: int, data: bytes, *, index: int = 100) -> InstallSnapshot:
    meta = SnapshotMeta(index=index, term=3, conf_state=ConfState(voters=(1, 2, 3)))
    return InstallSnapshot(src=src, dst=dst, term=3, snapshot=Snapshot(meta=meta, data=data))


@asynccontextmanager
async def pair(
    spool: Path, *, receiver: dict[str, Any] | None = None, **options: Any
) -> AsyncIterator[dict[int, Node[Any]]]:
    """Nodes 1 and 2 connected (``receiver`` adds options to node 1's); node 1 spools
    inbound snapshots in ``spool``."""
    async with anyio.create_task_group() as tg:
        extra = {1: receiver or {}, 2: {}}
        nodes = {i: Node(make(i, max_frame_size=4096, **options, **extra[i])) for i in (1, 2)}
        nodes[1].transport.use_snapshot_dir(spool)
        for node in nodes.values():
            await node.start(tg)
        book = {i: node.address for i, node in nodes.items()}
        for node in nodes.values():
            node.transport.set_peers(book)
        await wait_until(lambda: nodes[1].transport.connected_peers == {2}, "the mesh")
        yield nodes
        tg.cancel_scope.cancel()


async def test_a_snapshot_streams_in_chunks_from_the_higher_id_and_arrives_whole(
    tmp_path: Path,
) -> None:
    data = bytes(range(256)) * 400  # 102,400 bytes: 26 chunks of a 4 KiB frame
    async with pair(tmp_path) as nodes:
        policy = TimingPolicy(seconds=5.0)
        nodes[2].transport.use_timeouts(policy)
        frames_before = nodes[2].transport.frames_sent
        # Node 2 never dials node 1 for peer traffic (the lower id dials); a snapshot
        # stream is dialled by its sender whatever the ids.
        msg = _snapshot(2, 1, data)
        nodes[2].transport.send([msg])
        await wait_until(lambda: nodes[1].inbox.messages != [], "the snapshot")
        assert nodes[1].inbox.messages == [msg]
        assert nodes[2].transport.snapshots_sent == 1
        assert nodes[1].transport.snapshots_received == 1
        assert nodes[2].inbox.unreachable == []
        # Chunk by chunk, each timed by the node's timeout policy; none on the peer link.
        assert policy.asked.count("snapshot") > 26
        assert ("snapshot", True) in policy.observed
        assert nodes[2].transport.frames_sent == frames_before
        await wait_until(lambda: list(tmp_path.iterdir()) == [], "the temporary file gone")


async def test_the_kernel_resending_a_snapshot_costs_no_second_transfer(
    tmp_path: Path,
) -> None:
    """The kernel resends a snapshot at the first heartbeat answered after it, which comes
    back while the snapshot still streams or is being installed: those resends are dropped
    until the ``snapshot`` timeout after it arrived; a newer snapshot goes at once."""
    data = b"s" * 200_000
    async with pair(tmp_path) as nodes:
        nodes[1].transport.use_timeouts(TimingPolicy(seconds=1.0))
        msg = _snapshot(1, 2, data)
        nodes[1].transport.send([msg])
        nodes[1].transport.send([msg])  # while it is under way
        await wait_until(lambda: nodes[1].transport.snapshots_sent == 1, "the transfer")
        nodes[1].transport.send([msg])  # while the receiver installs it
        newer = _snapshot(1, 2, data, index=200)
        nodes[1].transport.send([newer])
        await wait_until(lambda: len(nodes[2].inbox.messages) == 2, "both snapshots")
        assert nodes[2].inbox.messages == [msg, newer]
        assert nodes[2].transport.snapshots_received == 2
        await anyio.sleep(1.1)  # past the timeout, a resend is a new transfer again
        nodes[1].transport.send([newer])
        await wait_until(lambda: nodes[2].transport.snapshots_received == 3, "a resend")


class Hostile:
    """A peer speaking the snapshot stream by hand, as node ``as_node``."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream, 1 << 20)

    @classmethod
    @asynccontextmanager
    async def connect(cls, address: str, *, as_node: int = 2) -> AsyncIterator[Hostile]:
        host, port = address.rsplit(":", 1)
        async with await anyio.connect_tcp(host, int(port)) as stream:
            hostile = cls(stream)
            hello = Hello(
                protocol=PROTOCOL,
                version=PROTOCOL_VERSION,
                role="snapshot",
                node_id=as_node,
                cluster_id="test",
            )
            await stream.send(encode_frame(hello))
            assert isinstance(await hostile.answer(Hello), Hello)
            yield hostile

    async def send(self, *frames: Any) -> None:
        for frame in frames:
            await self.stream.send(frame if isinstance(frame, bytes) else encode_frame(frame))

    async def answer(self, kind: type = SnapshotAck) -> Any:
        import msgspec

        with anyio.fail_after(10):
            try:
                frame = await self.reader.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
        return msgspec.msgpack.decode(frame, type=kind | Goodbye)


def _offer(data: bytes, size: int | None = None) -> SnapshotOffer:
    header = _snapshot(2, 1, b"")
    return SnapshotOffer(message=header, size=len(data) if size is None else size)


def _chunks(data: bytes, size: int = 1000) -> list[SnapshotChunk]:
    return [SnapshotChunk(data=data[i : i + size]) for i in range(0, len(data), size)]


def _end(data: bytes) -> SnapshotEnd:
    return SnapshotEnd(sha256=hashlib.sha256(data).digest())


DATA = b"0123456789" * 1000


@pytest.mark.parametrize(
    ("frames", "answer"),
    [
        # One byte flipped in flight: the checksum catches it.
        (
            [_offer(DATA), *_chunks(DATA[:-1] + b"X"), _end(DATA)],
            "failed its SHA-256 check",
        ),
        # Fewer bytes than offered, then the end.
        ([_offer(DATA), *_chunks(DATA[:5000]), _end(DATA)], "ended at 5000 of the 10000"),
        # More than the receiver takes (max_message_size), refused before a byte is written.
        ([_offer(DATA, size=1 << 40)], "exceeds max_message_size"),
        # More bytes than offered: the sender is at fault.
        ([_offer(DATA[:10]), *_chunks(DATA)], "exceed the offered size of 10 bytes"),
        # An empty chunk would let a sender send chunks forever.
        ([_offer(DATA), SnapshotChunk(data=b"")], "empty snapshot chunk"),
        # The offer must not carry the data, nor name another receiver.
        (
            [SnapshotOffer(message=_snapshot(2, 1, b"x"), size=1)],
            "carries data",
        ),
        (
            [SnapshotOffer(message=_snapshot(2, 3, b""), size=1)],
            "src=2 dst=3",
        ),
    ],
)
async def test_a_bad_stream_is_refused_and_nothing_is_kept(
    tmp_path: Path, frames: list[Any], answer: str
) -> None:
    async with pair(tmp_path, max_message_size=1 << 20) as nodes:
        receiver = nodes[1]
        async with Hostile.connect(receiver.address) as hostile:
            await hostile.send(*frames)
            reply = await hostile.answer()
        assert reply is not None and not getattr(reply, "ok", False)
        assert answer in getattr(reply, "reason", "")
        assert receiver.inbox.messages == []
        await wait_until(lambda: list(tmp_path.iterdir()) == [], "the spool emptied")
        # The receiver still takes a sound snapshot afterwards.
        msg = _snapshot(2, 1, DATA)
        nodes[2].transport.send([msg])
        await wait_until(lambda: receiver.inbox.messages == [msg], "a sound snapshot")


async def test_a_stream_cut_short_leaves_nothing_behind(tmp_path: Path) -> None:
    async with pair(tmp_path) as nodes:
        receiver = nodes[1]
        async with Hostile.connect(receiver.address) as hostile:
            await hostile.send(_offer(DATA), *_chunks(DATA)[:3])
            await wait_until(lambda: any(tmp_path.iterdir()), "the spool file")
        # The connection closed mid-stream: the partial file is deleted, nothing delivered.
        await wait_until(lambda: list(tmp_path.iterdir()) == [], "the spool emptied")
        assert receiver.inbox.messages == []
        assert receiver.transport.snapshots_received == 0


async def test_a_stalled_stream_times_out_by_the_timeout_policy(tmp_path: Path) -> None:
    async with pair(tmp_path) as nodes:
        receiver = nodes[1]
        policy = TimingPolicy(seconds=0.2)
        receiver.transport.use_timeouts(policy)
        async with Hostile.connect(receiver.address) as hostile:
            await hostile.send(_offer(DATA), *_chunks(DATA)[:2])
            assert await hostile.answer() is None  # closed on us, without a word
        assert ("snapshot", False) in policy.observed
        await wait_until(lambda: list(tmp_path.iterdir()) == [], "the spool emptied")
        assert receiver.inbox.messages == []


async def test_a_refused_transfer_reports_the_peer_unreachable(tmp_path: Path) -> None:
    """The sender learns of the refusal and reports it; the kernel then resends."""
    async with pair(tmp_path, receiver={"max_message_size": 8192}) as nodes:
        nodes[2].transport.send([_snapshot(2, 1, b"x" * 20_000)])
        await wait_until(lambda: nodes[2].inbox.unreachable == [1], "the report")
        assert nodes[2].transport.snapshots_failed == 1
        assert nodes[1].transport.snapshots_refused == 1
        assert nodes[1].inbox.messages == []


async def test_a_snapshot_over_max_message_size_is_not_sent_and_reported(tmp_path: Path) -> None:
    async with pair(tmp_path, max_message_size=8192) as nodes:
        nodes[2].transport.send([_snapshot(2, 1, b"x" * 20_000)])
        await wait_until(lambda: nodes[2].inbox.unreachable == [1], "the report")
        assert nodes[2].transport.snapshots_failed == 1
        assert nodes[1].transport.snapshots_refused == 0  # nothing reached it


# -- with TLS ----------------------------------------------------------------------------------


async def test_with_tls_a_snapshot_streams_between_authenticated_nodes(
    certs: TlsDirectory,
) -> None:
    async with tls_cluster(certs, max_frame_size=4096) as nodes:
        msg = _snapshot(3, 1, DATA)
        nodes[3].transport.send([msg])  # the highest id dials the lowest for it
        await wait_until(lambda: nodes[1].inbox.messages == [msg], "the snapshot")
        assert nodes[3].transport.snapshots_sent == 1


async def test_with_tls_a_stream_claiming_another_node_is_refused_unread(
    certs: TlsDirectory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with tls_cluster(certs) as nodes:
        forged = encode_frame(_offer(DATA)) + b"".join(map(encode_frame, _chunks(DATA)))
        frames = await session(
            nodes[1].address,
            tls_hello(role="snapshot", node_id=2) + forged,
            context(certs, "3"),  # node 3's certificate, claiming to be node 2
        )
        assert not any(isinstance(f, Hello) for f in frames)  # it learnt nothing
        reason = "claiming to be node 2 presented node 3"
        await wait_until(lambda: reason in caplog.text, "the refusal logged")
        assert nodes[1].inbox.messages == []
        assert nodes[1].transport.snapshots_received == 0
