"""Issue 12: writes on an *accepted* peer connection are bounded by the node's timeout policy.

A node writes to a lower-id peer on the connection that peer dialled (``TcpTransport``'s
accepted side, not a connection pool). Here a real ``TcpTransport`` pair talks through a
TCP relay that can stop reading what node 2 sends to node 1: node 1 "stops reading", its
socket buffers fill and node 2's writes block. Each of node 2's writes must be bounded by
``timeout("raft_message", attempt)`` (`LinkWrites`, as in every pool): the write expires,
is sampled as a timeout, node 2 closes the connection and reports node 1 unreachable, and
once the relay reads again node 1 redials and messages flow. Before, the write waited until
the kernel gave up on the connection (``dead_connection_timeout``, 60 s here).

Only state and counts are asserted; every wait has a generous outer bound.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio
import anyio.abc
import pytest
from anyio.abc import TaskStatus
from transport_harness import Node

from framework.config import load_settings
from framework.core import AppendEntries, Entry, Heartbeat
from framework.transport import TcpTransport, parse_address
from framework.transport.streams import format_address
from legacy import FixedTimeouts

pytestmark = pytest.mark.anyio

_LOST = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
APPEND_BYTES = 64 << 10
"""Each append's payload: its write's bound is the floor rate's, about 0.5 s."""
MAX_APPENDS = 4096
"""256 MiB: far more than loopback socket buffers hold, so some write must block."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class StallingRelay:
    """A TCP relay from node 1 to node 2. ``stall`` stops it reading what node 2 sends (on
    every connection), so node 2's socket buffers fill and its writes block, as if node 1
    stopped reading; ``resume`` reads again. ``accepted`` counts node 1's dials."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.accepted = 0
        self._reading = anyio.Event()
        self._reading.set()

    def stall(self) -> None:
        self._reading = anyio.Event()

    def resume(self) -> None:
        self._reading.set()

    async def serve(self, *, task_status: TaskStatus[str]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(format_address("127.0.0.1", port))
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        host, port = parse_address(self.target)
        async with (
            client,
            await anyio.connect_tcp(host, port) as upstream,
            anyio.create_task_group() as tg,
        ):

            async def forward(
                src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, gated: bool
            ) -> None:
                try:
                    while True:
                        if gated:
                            await self._reading.wait()
                        await dst.send(await src.receive())
                except _LOST:
                    pass
                tg.cancel_scope.cancel()  # one side ended: end both

            tg.start_soon(forward, client, upstream, False)
            tg.start_soon(forward, upstream, client, True)


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 20) -> None:
    try:
        with anyio.fail_after(limit):
            # Polls state that has no event to wait on.
            while not predicate():
                await anyio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"gave up waiting {limit}s for {what}")


def make(node_id: int) -> TcpTransport:
    # The kernel's dead-connection timeout far above the test's waits: only the policy's
    # bound can end a blocked write in time.
    return TcpTransport(
        node_id=node_id,
        cluster_id="test",
        listen="127.0.0.1:0",
        peers={},
        connect_timeout=1.0,
        backoff_min=0.02,
        backoff_max=0.2,
        dead_connection_timeout=60.0,
    )


def append(index: int) -> AppendEntries:
    entry = Entry(term=1, index=index, data=bytes(APPEND_BYTES))
    return AppendEntries(src=2, dst=1, term=1, prev_index=index - 1, prev_term=1, entries=(entry,))


def sampled(policy: FixedTimeouts) -> tuple[int, int]:
    """``raft_message`` writes the policy was told of: (all, expired)."""
    stats = policy.stats().get("raft_message", {})
    return int(stats.get("count", 0)), int(stats.get("timeouts", 0))


def written_or_expired(transport: TcpTransport, policy: FixedTimeouts, frames: int) -> bool:
    """A write finished since ``transport`` had written ``frames``, or one expired."""
    return transport.frames_sent > frames or sampled(policy)[1] > 0


async def test_a_write_to_a_lower_id_peer_that_stops_reading_expires_closes_and_recovers() -> None:
    policy = FixedTimeouts(load_settings(env={}))
    async with anyio.create_task_group() as tg:
        one, two = Node(make(1)), Node(make(2))
        two.transport.use_timeouts(policy)
        await one.start(tg)
        await two.start(tg)
        relay = StallingRelay(two.address)
        relay_address = await tg.start(relay.serve)
        two.transport.set_peers({1: one.address, 2: two.address})
        one.transport.set_peers({1: one.address, 2: relay_address})
        await wait_until(lambda: 1 in two.transport.connected_peers, "node 1 to dial node 2")
        two.transport.send([Heartbeat(src=2, dst=1, term=1)])
        await wait_until(lambda: one.inbox.terms_from(2) == [1], "the first heartbeat")
        assert sampled(policy)[1] == 0

        relay.stall()
        # One append per write (each waits for the previous to finish), until a write
        # blocks on the full buffers and, bounded by the policy, expires.
        for index in range(1, MAX_APPENDS + 1):
            before = two.transport.frames_sent  # a write at once counts within ``send``
            two.transport.send([append(index)])
            await wait_until(
                partial(written_or_expired, two.transport, policy, before),
                f"append {index}'s write to node 1 to complete or expire",
            )
            if sampled(policy)[1]:
                break
        else:
            pytest.fail(f"{MAX_APPENDS} appends of {APPEND_BYTES} bytes never filled the link")

        # Node 2 closed the connection (it has no other) and told Raft.
        await wait_until(lambda: two.transport.open_connections == 0, "the connection to close")
        assert 1 in two.inbox.unreachable
        assert 1 not in two.transport.connected_peers
        assert sampled(policy)[1] == 1
        assert relay.accepted == 1

        relay.resume()  # node 1 reads again, sees the close and redials
        await wait_until(
            lambda: relay.accepted == 2 and 1 in two.transport.connected_peers, "the redial"
        )
        two.transport.send([Heartbeat(src=2, dst=1, term=7)])
        await wait_until(lambda: one.inbox.terms_from(2)[-1:] == [7], "a heartbeat after it")
        count, expired = sampled(policy)
        assert count > expired == 1  # completed writes are sampled too
        tg.cancel_scope.cancel()
