"""TcpTransport and TcpClientConnection (framework/transport/tcp.py) on 127.0.0.1.

Every rule in the module's "theory of operation" has a test here: one connection per pair,
coalescing, reconnect with backoff, unreachable reports, hostile connections closed while
well-behaved peers keep talking, clients, set_peers, and a shutdown that leaves no socket
and no task behind. No test asserts that something was fast.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from transport_harness import Inbox, Node, Service

from framework.core import AppendEntries, Entry, Heartbeat
from framework.transport import (
    PROTOCOL,
    PROTOCOL_VERSION,
    ClientRequest,
    ClientResponse,
    ConnectionLost,
    FrameDecoder,
    Goodbye,
    Hello,
    KVOp,
    PeerBatch,
    StatusRequest,
    TcpClientConnection,
    TcpTransport,
    decode_hello,
    encode_frame,
    parse_address,
)
from framework.transport.protocol_streams import Accepted
from framework.transport.streams import Outbox
from framework.transport.tcp import _Backoff

pytestmark = pytest.mark.anyio

BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- harness ---------------------------------------------------------------------------------


def make(node_id: int, *, peers: dict[int, str] | None = None, **options: Any) -> TcpTransport:
    options = {"connect_timeout": 0.5, "backoff_min": 0.02, "backoff_max": 0.2, **options}
    options.setdefault("listen", "127.0.0.1:0")
    return TcpTransport(node_id=node_id, cluster_id="test", peers=peers or {}, **options)


@asynccontextmanager
async def cluster(
    ids: Sequence[int] = (1, 2), **options: Any
) -> AsyncIterator[tuple[dict[int, Node], anyio.abc.TaskGroup]]:
    """Nodes on port 0 that learn each other's addresses through ``set_peers``."""
    async with anyio.create_task_group() as tg:
        nodes = {i: Node(make(i, **options)) for i in ids}
        for node in nodes.values():
            await node.start(tg)
        book = {i: node.address for i, node in nodes.items()}
        for node in nodes.values():
            node.transport.set_peers(book)
        await wait_until(lambda: all(fully_connected(n, ids) for n in nodes.values()), "mesh")
        yield nodes, tg
        tg.cancel_scope.cancel()


def fully_connected(node: Node, ids: Sequence[int]) -> bool:
    return node.transport.connected_peers == set(ids) - {node.transport.node_id}


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    try:
        with anyio.fail_after(10):
            # Polls state of objects that have no event to wait on (hence the noqa).
            while not predicate():
                await anyio.sleep(0.002)
    except TimeoutError:
        pytest.fail(f"gave up waiting for {what}")


def hb(src: int, dst: int, term: int) -> Heartbeat:
    return Heartbeat(src=src, dst=dst, term=term)


async def exchange(a: Node, b: Node, count: int = 5) -> None:
    """``a`` and ``b`` send each other ``count`` heartbeats, which arrive in order."""
    ida, idb = a.transport.node_id, b.transport.node_id
    base_a, base_b = len(a.inbox.terms_from(idb)), len(b.inbox.terms_from(ida))
    start = 1000 + max(base_a, base_b)
    a.transport.send([hb(ida, idb, start + i) for i in range(count)])
    b.transport.send([hb(idb, ida, start + i) for i in range(count)])
    await wait_until(lambda: len(b.inbox.terms_from(ida)) == base_b + count, f"{ida}->{idb}")
    await wait_until(lambda: len(a.inbox.terms_from(idb)) == base_a + count, f"{idb}->{ida}")
    assert b.inbox.terms_from(ida)[base_b:] == list(range(start, start + count))
    assert a.inbox.terms_from(idb)[base_a:] == list(range(start, start + count))


def closed_port() -> int:
    """A port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def running_tasks() -> set[tuple[int, str | None]]:
    return {(task.id, task.name) for task in anyio.get_running_tasks()}


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # closed since listdir
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


# -- peers -----------------------------------------------------------------------------------


@BOTH_BACKENDS
async def test_two_nodes_exchange_messages_both_ways_over_one_connection() -> None:
    async with cluster((1, 2)) as (nodes, _):
        await exchange(nodes[1], nodes[2], count=20)
        assert nodes[1].transport.open_connections == 1
        assert nodes[2].transport.open_connections == 1
        assert nodes[1].transport.dial_attempts >= 1
        assert nodes[2].transport.dial_attempts == 0  # the higher id only accepts


async def test_three_nodes_keep_one_connection_per_pair() -> None:
    async with cluster((1, 2, 3)) as (nodes, _):
        for a, b in ((1, 2), (1, 3), (2, 3)):
            await exchange(nodes[a], nodes[b])
        for node in nodes.values():
            assert node.transport.open_connections == 2
        assert nodes[3].transport.dial_attempts == 0
        assert nodes[1].transport.dial_attempts >= 2


async def test_many_sends_are_coalesced_into_few_frames() -> None:
    async with cluster((1, 2)) as (nodes, _):
        before = nodes[1].transport.frames_sent
        for term in range(1000):
            nodes[1].transport.send([hb(1, 2, term)])
        await wait_until(lambda: len(nodes[2].inbox.messages) == 1000, "1000 messages")
        assert nodes[2].inbox.terms_from(1) == list(range(1000))
        # Nothing yields between the sends, so the writer finds all 1000 queued at once.
        assert nodes[1].transport.frames_sent - before < 10
        assert nodes[2].inbox.deliveries < 10


def _appends(count: int, size: int) -> list[AppendEntries]:
    return [
        AppendEntries(
            src=1,
            dst=2,
            term=1,
            prev_index=i,
            prev_term=1,
            entries=(Entry(term=1, index=i + 1, data=bytes(size)),),
        )
        for i in range(count)
    ]


def _huge(size: int) -> AppendEntries:
    data = random.Random(size).randbytes(size)  # incompressible, and checked byte for byte
    return AppendEntries(
        src=1,
        dst=2,
        term=1,
        prev_index=0,
        prev_term=0,
        entries=(Entry(term=1, index=1, data=data),),
    )


async def test_a_batch_over_max_frame_size_is_split_and_a_huge_message_sent_in_parts() -> None:
    # A snapshot larger than a frame must still reach a lagging follower, or it never
    # catches up: it travels in frame-sized parts and arrives whole, in order.
    async with cluster((1, 2), max_frame_size=4096) as (nodes, _):
        appends, huge = _appends(100, 200), _huge(50_000)
        before = nodes[1].transport.frames_sent
        nodes[1].transport.send([*appends[:50], huge, *appends[50:]])
        await wait_until(lambda: len(nodes[2].inbox.messages) == 101, "101 messages")
        assert nodes[2].inbox.messages == [*appends[:50], huge, *appends[50:]]
        assert nodes[1].transport.frames_sent - before > 13  # 50 kB in 4 kB frames, at least
        assert nodes[1].inbox.unreachable == []
        assert nodes[1].transport.connected_peers == {2}


async def test_a_message_over_max_message_size_is_dropped_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="raftmw.transport")
    async with cluster((1, 2), max_frame_size=4096, max_message_size=16_384) as (nodes, _):
        appends = _appends(100, 200)
        nodes[1].transport.send([*appends[:50], _huge(50_000), *appends[50:]])
        await wait_until(lambda: len(nodes[2].inbox.messages) == 100, "100 appends")
        assert nodes[2].inbox.messages == appends
        assert nodes[1].inbox.unreachable == [2]
        assert "exceed max_message_size=16384" in caplog.text
        assert nodes[1].transport.connected_peers == {2}  # the link survived


class TimingPolicy:
    """A timeout policy that records what the transport asks and reports."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.asked: list[str] = []
        self.attempts: list[int] = []
        self.observed: list[tuple[str, bool]] = []

    def timeout(self, operation: str, attempt: int = 0) -> float:
        self.asked.append(operation)
        self.attempts.append(attempt)
        return self.seconds

    def observe(self, operation: str, seconds: float, *, ok: bool) -> None:
        assert seconds >= 0
        self.observed.append((operation, ok))


async def test_dials_are_timed_by_the_node_timeout_policy() -> None:
    async with anyio.create_task_group() as tg:
        first, second = Node(make(1)), Node(make(2))
        policy = TimingPolicy(seconds=5.0)
        first.transport.use_timeouts(policy)  # node 1 dials node 2 (the lower id dials)
        await first.start(tg)
        await second.start(tg)
        second.transport.set_peers({1: first.address})
        first.transport.set_peers({2: second.address})
        await wait_until(lambda: first.transport.connected_peers == {2}, "the dial")
        assert policy.asked[:1] == ["connect"]
        assert policy.observed[:1] == [("connect", True)]
        # A policy that allows no time at all: every dial now times out, and says so.
        policy.seconds = 0.0
        policy.observed.clear()
        await second.stop()
        await wait_until(lambda: ("connect", False) in policy.observed, "a timed-out dial")
        tg.cancel_scope.cancel()


async def test_a_redial_after_timed_out_dials_is_the_policys_next_attempt() -> None:
    """Issue 12: redials are retries. After n dials in a row that timed out, the next dial's
    deadline is ``policy.timeout("connect", n)`` (the adaptive policy doubles it, with
    jitter); a dial that connects starts the count again, and a refused one (which says
    nothing about how long a connect takes) does not add to it."""
    async with anyio.create_task_group() as tg:
        first, second = Node(make(1)), Node(make(2))
        policy = TimingPolicy(seconds=0.0)  # every dial times out
        first.transport.use_timeouts(policy)
        await first.start(tg)
        await second.start(tg)
        second.transport.set_peers({1: first.address})
        first.transport.set_peers({2: second.address})
        await wait_until(lambda: len(policy.attempts) >= 4, "four timed-out dials")
        assert policy.attempts[:4] == [0, 1, 2, 3]
        policy.seconds = 5.0
        await wait_until(lambda: first.transport.connected_peers == {2}, "the dial")
        connected_at = len(policy.attempts)
        await second.stop()  # from now on the dials are refused
        await wait_until(lambda: len(policy.attempts) >= connected_at + 3, "three redials")
        assert policy.attempts[connected_at:] == [0] * (len(policy.attempts) - connected_at)
        tg.cancel_scope.cancel()


async def test_a_restarted_peer_is_redialled() -> None:
    async with cluster((1, 2)) as (nodes, tg):
        await exchange(nodes[1], nodes[2])
        port = parse_address(nodes[2].address)[1]
        await nodes[2].stop()
        await wait_until(lambda: not nodes[1].transport.connected_peers, "node 1 to notice")
        assert 2 in nodes[1].inbox.unreachable  # the failed connection is news for Raft
        nodes[1].inbox.unreachable.clear()
        nodes[1].transport.send([hb(1, 2, 1)])  # nobody to take it: dropped and reported
        assert nodes[1].inbox.unreachable == [2]

        reborn = Node(make(2, listen=f"127.0.0.1:{port}", peers={1: nodes[1].address}))
        await reborn.start(tg)
        await wait_until(lambda: reborn.transport.connected_peers == {1}, "the redial")
        await wait_until(lambda: nodes[1].transport.connected_peers == {2}, "the redial")
        await exchange(nodes[1], reborn)
        assert len(reborn.inbox.messages) == 5  # the message sent while down is gone


def _max_attempts(elapsed: float, low: float, high: float) -> int:
    """The most dials that fit in ``elapsed`` seconds if every delay is as short as the
    backoff allows (the lower edge of its jitter range)."""
    attempts, spent, ceiling = 1, 0.0, low
    while True:
        spent += max(low, ceiling / 2)
        if spent > elapsed:
            return attempts
        attempts += 1
        ceiling = min(high, ceiling * 2)


async def test_redialling_a_down_peer_backs_off() -> None:
    low, high = 0.02, 0.16
    node = Node(make(1, peers={2: f"127.0.0.1:{closed_port()}"}, backoff_min=low, backoff_max=high))
    async with anyio.create_task_group() as tg:
        started = anyio.current_time()
        await node.start(tg)
        await wait_until(lambda: node.transport.dial_attempts >= 4, "four dial attempts")
        await anyio.sleep(0.3)
        attempts = node.transport.dial_attempts
        elapsed = anyio.current_time() - started
        # A busy loop would dial thousands of times; backoff allows only this many.
        assert attempts <= _max_attempts(elapsed, low, high)
        assert node.inbox.unreachable == []  # nothing was sent, so nothing was lost

        node.transport.set_peers({})  # out of the address book: no more dialling
        attempts = node.transport.dial_attempts
        await anyio.sleep(0.2)
        assert node.transport.dial_attempts == attempts
        tg.cancel_scope.cancel()


def test_backoff_doubles_with_jitter_between_its_bounds() -> None:
    backoff = _Backoff(0.05, 2.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    assert delays[0] == 0.05
    ceiling = 0.05
    for delay in delays:
        assert max(0.05, ceiling / 2) <= delay <= ceiling
        ceiling = min(2.0, ceiling * 2)
    assert delays[-1] >= 1.0
    backoff.reset()
    assert backoff.next_delay() == 0.05


BACKLOG_BYTES = 40 << 20
"""One append larger than loopback's socket buffers can take at once (4 MiB to send and at
most 32 MiB to receive here), so the connection holds bytes back until the peer reads."""


def backlog(src: int, dst: int) -> AppendEntries:
    entry = Entry(term=1, index=1, data=bytes(BACKLOG_BYTES))
    return AppendEntries(src=src, dst=dst, term=1, prev_index=0, prev_term=0, entries=(entry,))


@pytest.mark.parametrize("lower_dials", [True, False], ids=["pool", "accepted"])
async def test_unreachable_peers_are_reported_and_overflow_once_per_episode(
    lower_dials: bool,
) -> None:
    """Messages queue only behind a write that waits (``pool.write_at_once``), up to the
    cap; over it they are dropped and the peer reported once per episode, on the dialled
    side (the pool's queue) and on the accepted one (the transport's)."""
    async with cluster((1, 2), max_queued_messages=10) as (nodes, _):
        src, dst = (1, 2) if lower_dials else (2, 1)
        sender, inbox = nodes[src].transport, nodes[src].inbox
        sender.send([hb(src, 7, 1)])  # not in the address book
        assert inbox.unreachable == [7]
        inbox.unreachable.clear()
        await wait_until(lambda: fully_connected(nodes[src], (1, 2)), "the link")

        sender.send([backlog(src, dst)])  # written at once; the socket holds the rest back
        sender.send([hb(src, dst, t) for t in range(8)])
        sender.send([hb(src, dst, t) for t in range(8, 16)])  # 6 over the cap
        sender.send([hb(src, dst, t) for t in range(16, 20)])  # still the same episode
        assert inbox.unreachable == [dst]
        await wait_until(lambda: len(nodes[dst].inbox.messages) == 11, "the backlog and 10")
        await anyio.sleep(0.05)
        assert nodes[dst].inbox.terms_from(src) == [1, *range(10)]

        sender.send([hb(src, dst, t) for t in range(100, 111)])  # drained: written at once
        assert inbox.unreachable == [dst]
        await wait_until(lambda: len(nodes[dst].inbox.messages) == 22, "all 11 at once")


async def test_set_peers_opens_and_closes_links() -> None:
    async with cluster((1, 2)) as (nodes, tg):
        third = Node(make(3))
        await third.start(tg)
        book = {i: n.address for i, n in {**nodes, 3: third}.items()}
        for node in (*nodes.values(), third):
            node.transport.set_peers(book)
        await wait_until(
            lambda: all(fully_connected(n, (1, 2, 3)) for n in (*nodes.values(), third)),
            "links to 3",
        )
        await exchange(nodes[1], third)
        await exchange(nodes[2], third)

        del book[3]
        for node in nodes.values():
            node.transport.set_peers(book)
        third.transport.set_peers({})
        await wait_until(lambda: third.transport.open_connections == 0, "links to 3 closed")
        await wait_until(lambda: nodes[1].transport.open_connections == 1, "1 keeps 1-2 only")
        assert nodes[2].transport.open_connections == 1
        nodes[1].inbox.unreachable.clear()
        nodes[1].transport.send([hb(1, 3, 1)])
        assert nodes[1].inbox.unreachable == [3]
        await exchange(nodes[1], nodes[2])


# -- hostile and broken connections ----------------------------------------------------------


def _hello(**fields: Any) -> bytes:
    values: dict[str, Any] = {
        "protocol": PROTOCOL,
        "version": PROTOCOL_VERSION,
        "role": "peer",
        "node_id": 1,
        "cluster_id": "test",
    }
    return encode_frame(Hello(**{**values, **fields}))


ATTACKS = {
    "garbage": (b"\x00\x00\x00\x05hello", "undecodable hello frame", True),
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds the 4096-byte limit", True),
    "oversized-header": (b"\x7f\xff\xff\xff", "2147483647 bytes exceeds the 4096-byte", True),
    "wrong-protocol": (_hello(protocol="nope"), "peer speaks 'nope'", True),
    "wrong-version": (_hello(version=99), "version 99", True),
    "wrong-cluster": (_hello(cluster_id="other"), "cluster 'other', not 'test'", True),
    "unknown-node": (_hello(node_id=99), "node 99 is not a known peer", True),
    "higher-id-dials": (_hello(node_id=3), "the lower id dials", True),
    "silent": (b"", "handshake timeout", False),
    "goodbye": (encode_frame(Goodbye(reason="not today")), "said goodbye: not today", False),
    "client-garbage": (
        _hello(role="client", node_id=0, cluster_id="") + b"\x00\x00\x00\x01\xc1",
        "undecodable client request frame",
        True,
    ),
}


async def raw_session(address: str, payload: bytes) -> tuple[str, list[Hello | Goodbye]]:
    """Connect, send ``payload``, read until the server closes; returns our address as the
    server sees it and the frames it sent."""
    host, port = parse_address(address)
    data = b""
    async with await anyio.connect_tcp(host, port) as stream:
        local_host = stream.extra(SocketAttribute.local_address)[0]
        local_port = stream.extra(SocketAttribute.local_port)
        if payload:
            await stream.send(payload)
        with anyio.fail_after(10):
            while True:
                try:
                    data += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    frames = [decode_hello(body) for body in FrameDecoder(1 << 20).feed(data)]
    return f"{local_host}:{local_port}", frames


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_bad_connection_is_closed_and_the_others_keep_working(
    attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    payload, reason, says_goodbye = ATTACKS[attack]
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with cluster((1, 2, 3), connect_timeout=0.3) as (nodes, _):
        target = nodes[2]
        local, frames = await raw_session(target.address, payload)

        # The server says who it is only to a caller it accepts: a client here.
        if attack.startswith("client-"):
            assert isinstance(frames[0], Hello) and frames[0].node_id == 2
        else:
            assert not any(isinstance(f, Hello) for f in frames)
        goodbyes = [f for f in frames if isinstance(f, Goodbye)]
        if says_goodbye:
            assert len(goodbyes) == 1 and reason in goodbyes[0].reason
        else:
            assert goodbyes == []

        def logged() -> bool:
            return any(
                r.levelno == logging.WARNING and local in r.getMessage() and reason in r.message
                for r in caplog.records
            )

        await wait_until(logged, f"a warning naming {local} and {reason!r}")
        await wait_until(lambda: target.transport.open_connections == 2, "the socket closed")
        assert target.transport.connected_peers == {1, 3}
        await exchange(nodes[1], target)
        await exchange(target, nodes[3])


@pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"]
)
@pytest.mark.parametrize("close", ["fin", "reset"])
async def test_a_burst_gone_before_it_is_accepted_is_still_capped_whole(close: str) -> None:
    """Callers that connect and close before the node accepts them wait together in the
    backlog: the node takes them in one go, so the per-address cap counts them all at once
    and refuses what is over it. Taken one per pass of the event loop (uvloop's
    ``sock_accept``), each would fail its handshake and free its slot before the next was
    counted, and a flood that comes and goes would never be refused."""
    cap = 4
    async with cluster((1, 2), max_connections_per_address=cap) as (nodes, _):
        target = nodes[2]
        host, port = parse_address(target.address)
        # Blocking connects on this thread: the node's loop (the same one) accepts none of
        # them until this test awaits again.
        burst = [socket.create_connection((host, port), timeout=5) for _ in range(12)]
        for sock in burst:
            if close == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        # Node 1's connection holds one slot from 127.0.0.1; the burst gets the rest.
        await wait_until(lambda: target.transport.refused_at_accept == 12 - (cap - 1), "refusals")
        await exchange(nodes[1], target)


async def test_a_socket_that_fails_before_it_is_opened_is_closed_and_the_node_serves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between accept and ``open`` a socket can fail (reset by its caller): that one
    connection is dropped, not the node's accept loop and every connection with it."""
    opened = Accepted.open
    failed: list[str] = []

    async def open_or_fail(self: Accepted, ssl_context: Any = None) -> Any:
        if not failed:
            failed.append(self.address)
            raise ConnectionResetError("reset by the caller before it was opened")
        return await opened(self, ssl_context)

    async with cluster((1, 2)) as (nodes, _):
        target = nodes[2]
        monkeypatch.setattr(Accepted, "open", open_or_fail)
        local, frames = await raw_session(target.address, b"")
        assert failed == [local] and frames == []  # closed unread
        # The accept loop lives: the next caller is opened and answered (a Goodbye).
        _, frames = await raw_session(target.address, ATTACKS["garbage"][0])
        assert [type(f) for f in frames] == [Goodbye]
        await exchange(nodes[1], target)
        assert target.transport.connected_peers == {1}


@pytest.mark.parametrize(
    ("message", "reason"),
    [(hb(3, 2, 1), "src=3 dst=2"), (hb(1, 3, 1), "src=1 dst=3")],
    ids=["wrong-src", "wrong-dst"],
)
async def test_a_peer_impersonating_another_is_cut_off(
    message: Heartbeat, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="raftmw.transport")
    async with cluster((1, 2, 3)) as (nodes, _):
        target = nodes[2]
        host, port = parse_address(target.address)
        async with await anyio.connect_tcp(host, port) as stream:
            # A valid Hello replaces node 1's connection. The batch goes in the same write,
            # so it is read before the real node 1 can redial and replace us in turn.
            await stream.send(_hello(node_id=1) + encode_frame(PeerBatch(messages=[message])))
            with anyio.fail_after(10):
                while True:
                    try:
                        await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        assert "replaced by a newer connection" in caplog.text
        assert reason in caplog.text
        assert message not in target.inbox.messages
        # The real node 1 saw its connection closed, and dials again.
        await wait_until(
            lambda: fully_connected(target, (1, 2, 3)) and fully_connected(nodes[1], (1, 2, 3)),
            "node 1 to be back",
        )
        await exchange(nodes[1], target)


# -- clients ---------------------------------------------------------------------------------


@BOTH_BACKENDS
async def test_concurrent_client_requests_are_answered_out_of_order() -> None:
    async with cluster((1, 2)) as (nodes, tg):
        server = nodes[2]
        server.service.hold("slow")
        answers: dict[str, ClientResponse] = {}
        async with TcpClientConnection.connect(server.address, timeout=5) as conn:
            assert conn.node_id == 2

            async def ask(key: str) -> None:
                answers[key] = await conn.request(KVOp(op="get", key=key))

            tg.start_soon(ask, "slow")
            await wait_until(lambda: conn._next_id > 1, "the slow request to be sent")
            await ask("fast")
            assert list(answers) == ["fast"]
            server.service.release("slow")
            await wait_until(lambda: "slow" in answers, "the slow answer")
            assert answers["slow"].value == "node 2: slow"
            assert answers["fast"].value == "node 2: fast"
            assert answers["slow"].id != answers["fast"].id

            status = await conn.request(StatusRequest())
            assert status.ok and status.value == "node 2: StatusRequest"
            failed = await conn.request(KVOp(op="get", key="boom"))
            assert not failed.ok and failed.error is not None and failed.error.kind == "retry"
        assert server.transport.connected_peers == {1}


async def test_frames_queued_while_the_writer_is_busy_leave_in_one_write() -> None:
    outbox = Outbox(limit=10)
    assert outbox.put(b"abc") and outbox.put(b"de") and outbox.put(b"fgh")
    assert outbox.unsent == 8
    assert not outbox.put(b"xyz")  # 11 bytes would pass the limit: refused, nothing queued
    with anyio.fail_after(1):
        assert await outbox.take() == b"abcdefgh"
    assert outbox.unsent == 0 and outbox.put(b"xyz")
    outbox.close()
    assert outbox.closed and not outbox.put(b"late")


async def test_a_client_that_never_reads_its_answers_is_disconnected() -> None:
    # Answers a client does not read pile up on the server; past max_unsent_bytes the server
    # closes that connection rather than grow without bound, and serves everyone else.
    async with cluster((1, 2), max_unsent_bytes=256 * 1024) as (nodes, _tg):
        server = nodes[2]
        stream = await anyio.connect_tcp(*parse_address(server.address))
        async with stream:
            await stream.send(_hello(role="client", node_id=0))
            request = encode_frame(ClientRequest(id=1, body=KVOp(op="get", key="k" * 1000)))
            with anyio.fail_after(20):
                # 30 MB of answers: more than the socket buffers and the limit together.
                with suppress(anyio.BrokenResourceError, OSError):
                    for _ in range(300):
                        await stream.send(request * 100)
                with suppress(anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                    while True:
                        await stream.receive()
        async with TcpClientConnection.connect(server.address, timeout=5) as conn:
            assert (await conn.request(KVOp(op="get", key="ok"))).value == "node 2: ok"


@BOTH_BACKENDS
async def test_a_request_unanswered_within_its_timeout_raises_timeout_error() -> None:
    async with cluster((1, 2)) as (nodes, _tg):
        server = nodes[2]
        server.service.hold("slow")
        async with TcpClientConnection.connect(server.address, timeout=5) as conn:
            with anyio.fail_after(5), pytest.raises(TimeoutError, match=r"within 0\.1s"):
                await conn.request(KVOp(op="get", key="slow"), timeout=0.1)
            # A later, shorter deadline behind a longer one still expires on time.
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(conn.request, KVOp(op="get", key="slow"), timeout=30))
                with anyio.fail_after(5), pytest.raises(TimeoutError):
                    await conn.request(KVOp(op="get", key="slow"), timeout=0.1)
                tg.cancel_scope.cancel()
            answer = await conn.request(KVOp(op="get", key="fast"), timeout=5)
            assert answer.value == "node 2: fast"


async def test_a_client_sees_connection_lost_when_the_server_stops() -> None:
    async with cluster((1, 2)) as (nodes, tg):
        server = nodes[2]
        server.service.hold("slow")
        errors: list[ConnectionLost] = []
        async with TcpClientConnection.connect(server.address, timeout=5) as conn:

            async def ask() -> None:
                try:
                    await conn.request(KVOp(op="get", key="slow"))
                except ConnectionLost as exc:
                    errors.append(exc)

            tg.start_soon(ask)
            await wait_until(lambda: conn._next_id > 1, "the request to be sent")
            await anyio.sleep(0.02)
            await server.stop()
            await wait_until(lambda: bool(errors), "the pending request to fail")
            assert errors[0].address == server.address
            assert server.address in str(errors[0])
            with pytest.raises(ConnectionLost, match="closed by the server"):
                await conn.request(StatusRequest())


@BOTH_BACKENDS
async def test_a_cancelled_request_leaves_the_connection_usable() -> None:
    async with cluster((1, 2)) as (nodes, _):
        server = nodes[2]
        server.service.hold("slow")
        async with TcpClientConnection.connect(server.address, timeout=5) as conn:
            with anyio.move_on_after(0.05) as timeout:
                await conn.request(KVOp(op="get", key="slow"))
            assert timeout.cancelled_caught
            assert (await conn.request(KVOp(op="get", key="a"))).value == "node 2: a"
            server.service.release("slow")  # its late answer finds nobody waiting
            assert (await conn.request(KVOp(op="get", key="b"))).value == "node 2: b"

        server.service.hold("slow")
        with anyio.move_on_after(0.05) as timeout:
            async with TcpClientConnection.connect(server.address, timeout=5) as conn:
                await conn.request(KVOp(op="get", key="slow"))
        assert timeout.cancelled_caught
        await wait_until(lambda: server.transport.open_connections == 1, "the client gone")


async def test_connecting_to_nothing_raises_connection_lost() -> None:
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(ConnectionLost, match=f"connection to {address} lost: cannot connect"):
        async with TcpClientConnection.connect(address, timeout=2):
            pass


async def test_an_error_in_the_client_block_propagates_as_itself() -> None:
    async with cluster((1, 2)) as (nodes, _):
        with pytest.raises(KeyError, match="mine"):
            async with TcpClientConnection.connect(nodes[1].address, timeout=5):
                raise KeyError("mine")


@asynccontextmanager
async def fake_server(
    script: Callable[[anyio.abc.SocketStream], Any],
) -> AsyncIterator[str]:
    """A listener that runs ``script(stream)`` for each connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await script(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def test_a_server_goodbye_raises_connection_lost() -> None:
    async def refuse(stream: anyio.abc.SocketStream) -> None:
        await stream.send(encode_frame(Goodbye(reason="full")))

    async def hello_then_goodbye(stream: anyio.abc.SocketStream) -> None:
        await stream.send(_hello(node_id=5))
        await stream.receive()  # the client's Hello
        await stream.receive()  # its request
        await stream.send(encode_frame(Goodbye(reason="going away")))
        await anyio.sleep_forever()

    async with fake_server(refuse) as address:
        with pytest.raises(ConnectionLost, match="server said goodbye: full"):
            async with TcpClientConnection.connect(address, timeout=5):
                pass
    async with (
        fake_server(hello_then_goodbye) as address,
        TcpClientConnection.connect(address, timeout=5) as conn,
    ):
        assert conn.node_id == 5
        with pytest.raises(ConnectionLost, match="server said goodbye: going away"):
            await conn.request(StatusRequest())


# -- lifecycle -------------------------------------------------------------------------------


@BOTH_BACKENDS
async def test_shutdown_closes_every_socket_and_ends_every_task() -> None:
    sockets_before = open_sockets()
    tasks_before = running_tasks()
    nodes: dict[int, Node] = {}
    # The client only returns once the server closes its socket: bound the wait.
    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            async with cluster((1, 2, 3)) as (nodes, _):
                await exchange(nodes[1], nodes[3])
                nodes[2].service.hold("slow")
                address = nodes[2].address

                async def client_session(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    async with TcpClientConnection.connect(address, timeout=5) as conn:
                        task_status.started()
                        with pytest.raises(ConnectionLost):  # the server shuts down under it
                            await conn.request(KVOp(op="get", key="slow"))

                await outer.start(client_session)
                host, port = parse_address(nodes[3].address)
                half_open = await anyio.connect_tcp(host, port)  # never says Hello
                await wait_until(lambda: nodes[3].transport.open_connections == 3, "raw accepted")
                assert nodes[2].transport.open_connections == 3  # two peers and the client
            await half_open.aclose()
    for node in nodes.values():
        assert node.transport.open_connections == 0
        assert node.transport.connected_peers == set()
    await wait_until(lambda: open_sockets() == sockets_before, "every socket closed")
    assert running_tasks() == tasks_before
    with pytest.raises(OSError):
        await anyio.connect_tcp(*parse_address(nodes[1].address))


async def test_a_transport_serves_once_and_names_a_busy_port() -> None:
    async with cluster((1,)) as (nodes, _):
        with pytest.raises(RuntimeError, match="already serving"):
            await nodes[1].transport.serve(Inbox(), Service(1))
        busy = make(2, listen=nodes[1].address)
        with pytest.raises(OSError, match=f"node 2 cannot listen on {nodes[1].address}"):
            await busy.serve(Inbox(), Service(2))


def test_configuration_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="node_id=0"):
        make(0)
    with pytest.raises(ValueError, match="'nowhere'"):
        make(1, listen="nowhere")
    with pytest.raises(ValueError, match="backoff_min=3 backoff_max=2"):
        make(1, backoff_min=3, backoff_max=2)
    with pytest.raises(ValueError, match="'host:port'"):
        make(1, peers={2: "host:port"})
    assert make(1, listen="127.0.0.1:7000", peers={1: "127.0.0.1:7000"}).listen_address == (
        "127.0.0.1:7000"
    )
    assert parse_address("[::1]:80") == ("::1", 80)


async def test_sockets_notice_a_vanished_peer_within_the_dead_connection_timeout() -> None:
    # A peer machine that dies without closing its connection must not keep it "open" for
    # TCP's default 15 minutes: the dialler would never redial the restarted peer.
    import socket

    from framework.transport.streams import tune_socket

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(SocketAttribute.local_port)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            tune_socket(stream, dead_after=6.0)
            sock = stream.extra(SocketAttribute.raw_socket)
            tcp = socket.IPPROTO_TCP
            assert sock.getsockopt(tcp, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
                assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 6000
            if hasattr(socket, "TCP_KEEPIDLE"):
                idle = sock.getsockopt(tcp, socket.TCP_KEEPIDLE)
                interval = sock.getsockopt(tcp, socket.TCP_KEEPINTVL)
                probes = sock.getsockopt(tcp, socket.TCP_KEEPCNT)
                assert idle + interval * probes == 6
