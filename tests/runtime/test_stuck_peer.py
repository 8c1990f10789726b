"""Issue 5, the connection pool half: one stuck follower, and what each pool makes of it.

A 3-node cluster of in-process `RaftNode`s on real `TcpTransport`s (127.0.0.1) and
`MemoryLogStore`s, where node 3's address leads to a *stuck peer* instead of a node:

- ``accepts-never-reads``: a listening socket that the kernel accepts connections on and
  nobody ever reads: TCP connects, the handshake is never answered;
- ``connect-never-completes``: a listening socket with a full backlog (``listen(0)`` plus
  one connection parked in its accept queue); Linux drops further SYNs, so a connect hangs
  until the dialler gives up: what a host dropping packets looks like, reproducible on
  loopback. (A non-routable address such as 10.255.255.1 would be the textbook choice, but
  whether its connect hangs, fails at once or is answered by a proxy depends on the
  machine's routes, so it proves nothing portable.)

Both live nodes have a lower id than node 3, so both dial it, through their connection pool,
every few seconds, and each dial stays in flight for ``transport.connect_timeout`` (1s, more
than the 200-400ms election timeout). What follows is behaviour, not speed, and the same in
both modes (``actors`` on and off): writes keep committing, no election happens (term and
leader unchanged), and the healthy follower's frames are written *while* a dial to node 3
is in flight.

Issue #19: legacy mode used to dial under its pool lock, in its one sender task, so no frame
reached the healthy follower during a dial; the leader heard from nobody for a whole connect
timeout, check-quorum ended its term and elections followed, though it had a quorum (with a
1s election timeout, once in a few runs). The legacy case below failed that way.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from typing import Any

import anyio
import pytest

from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.seams import PeerConnection, PeerDialer
from framework.transport.tcp import TcpTransport
from tests.runtime.inprocess_cluster import (
    DelegatingConnection,
    DelegatingDialer,
    TcpCluster,
    TcpTransportWithDialer,
    tcp_cluster,
)

pytestmark = pytest.mark.anyio

STUCK = 3
HOLES = ("accepts-never-reads", "connect-never-completes")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the stuck peer --------------------------------------------------------------------------


@contextmanager
def stuck_peer(kind: str) -> Iterator[str]:
    """The address of a peer that never answers, in the way ``kind`` says."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    parked: socket.socket | None = None
    try:
        listener.bind(("127.0.0.1", 0))
        if kind == "accepts-never-reads":
            listener.listen(64)
        else:
            listener.listen(0)
            parked = socket.create_connection(listener.getsockname(), timeout=2)
        host, port = listener.getsockname()
        yield f"{host}:{port}"
    finally:
        if parked is not None:
            parked.close()
        listener.close()


def test_the_full_backlog_peer_really_never_completes_a_connect() -> None:
    """The premise of ``connect-never-completes`` on this machine: a connect times out."""
    with stuck_peer("connect-never-completes") as address:
        host, port = address.rsplit(":", 1)
        with socket.socket() as sock, pytest.raises(TimeoutError):
            sock.settimeout(0.3)
            sock.connect((host, int(port)))


# -- instrumenting a node's pool: which writes happened while node 3 was being dialled -----------


class DialWatch:
    """Counts, per peer, the frames the pool writes, and those written while a dial to the
    stuck peer was in flight."""

    def __init__(self) -> None:
        self.dialling_stuck = 0
        self.dials_to_stuck_done = 0
        self.writes: dict[int, int] = defaultdict(int)
        self.writes_during_stuck_dial: dict[int, int] = defaultdict(int)


class WatchedDialer(DelegatingDialer):
    """A `PeerDialer` that reports to its `DialWatch` and delegates to the transport's."""

    def __init__(self, inner: PeerDialer) -> None:
        super().__init__(inner)
        self.watch = DialWatch()

    async def dial(self, peer: int, address: str) -> PeerConnection:
        watch = self.watch
        if peer == STUCK:
            watch.dialling_stuck += 1
        try:
            conn = await super().dial(peer, address)
        finally:
            if peer == STUCK:
                watch.dialling_stuck -= 1
                watch.dials_to_stuck_done += 1
        return WatchedConnection(conn, peer, watch)


class WatchedConnection(DelegatingConnection):
    def __init__(self, inner: PeerConnection, peer: int, watch: DialWatch) -> None:
        super().__init__(inner)
        self._peer = peer
        self._watch = watch

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        watch = self._watch
        watch.writes[self._peer] += 1
        if watch.dialling_stuck:
            watch.writes_during_stuck_dial[self._peer] += 1
        await super().send_frames(frames)


def watched_transport(**keywords: Any) -> TcpTransport:
    """A `TcpTransport` whose pool (built by the node from ``dialer``) is watched."""
    return TcpTransportWithDialer(WatchedDialer, **keywords)


def watch_of(c: TcpCluster, node_id: int) -> DialWatch:
    dialer = c.nodes[node_id].transport.dialer
    assert isinstance(dialer, WatchedDialer)
    return dialer.watch


# -- the cluster -------------------------------------------------------------------------------


def settings_for(*, actors: bool) -> Settings:
    return load_settings(env={}, overrides={"flags.actors": actors})


@asynccontextmanager
async def cluster(settings: Settings, *, stuck: str | None) -> AsyncIterator[TcpCluster]:
    """Nodes 1 to 3 on loopback, or 1 and 2 with node 3's address a stuck peer."""
    with stuck_peer(stuck) if stuck else nullcontext() as hole:
        async with tcp_cluster(
            settings,
            cluster_id="stuck",
            elsewhere={STUCK: hole} if hole else None,
            make_transport=watched_transport,
        ) as c:
            yield c


async def settled(c: TcpCluster, client: KVClient) -> tuple[int, int]:
    """One write acknowledged and every live node agreeing on (term, leader)."""
    with anyio.fail_after(30):
        await client.put("settle", "1")
        while True:
            views = set((await c.views()).values())
            if len(views) == 1:
                (term, leader) = views.pop()
                if leader:
                    return term, leader
            await anyio.sleep(0.01)


# -- the scenario --------------------------------------------------------------------------------


@pytest.mark.parametrize("actors", [False, True], ids=["legacy", "actors"])
@pytest.mark.parametrize("hole", HOLES)
async def test_a_stuck_follower_stops_no_write_and_starts_no_election(
    hole: str, actors: bool
) -> None:
    pool_plugin = "actors_pool" if actors else "legacy"
    async with cluster(settings_for(actors=actors), stuck=hole) as c, c.client() as client:
        assert {n.components.plugins()["connection_pool"] for n in c.nodes.values()} == {
            pool_plugin
        }
        term, leader = await settled(c, client)
        watch = watch_of(c, 1)  # node 1 dials both node 2 and the stuck node 3
        dials_before = watch.dials_to_stuck_done
        acknowledged = 0
        with anyio.fail_after(60):
            # Write through at least two whole dials to the stuck peer (1s each).
            while acknowledged < 200 or watch.dials_to_stuck_done < dials_before + 2:
                await client.put(f"k{acknowledged}", str(acknowledged))
                acknowledged += 1
        assert await c.views() == {1: (term, leader), 2: (term, leader)}  # no election
        # The healthy follower was written to while node 3's dial was in flight.
        assert watch.writes_during_stuck_dial[2] > 0
        assert await client.get(f"k{acknowledged - 1}") == str(acknowledged - 1)
        # What an operator sees (raftmw status): node 3 never connected, node 2 is.
        pool = (await client.status(1))["performance"]["connection_pool"]
        assert pool["peers"]["2"]["state"] == "connected"
        assert pool["peers"][str(STUCK)]["state"] != "connected"
        assert pool["peers"][str(STUCK)]["dial_attempts"] >= 2
        lock_taken = c.nodes[1].components.connection_pool.lock_stats().acquisitions
        assert (lock_taken == 0) if actors else (lock_taken > 0)


async def test_flipping_actors_on_a_live_cluster_swaps_every_pool_and_keeps_every_write() -> None:
    async with cluster(settings_for(actors=False), stuck=None) as c, c.client() as client:
        await settled(c, client)
        done = anyio.Event()
        acknowledged: list[int] = []

        async def writer() -> None:
            i = 0
            while not done.is_set():
                await client.put(f"w{i}", str(i))
                acknowledged.append(i)
                i += 1

        def pools() -> set[str]:
            return {n.components.plugins()["connection_pool"] for n in c.nodes.values()}

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                for value, plugin in (
                    (True, "actors_pool"),
                    (False, "legacy"),
                    (True, "actors_pool"),
                ):
                    before = len(acknowledged)
                    await client.flags("set", assignments={"actors": value}, reason="test")
                    while pools() != {plugin}:
                        await anyio.sleep(0.01)
                    while len(acknowledged) < before + 50:  # writes go on after the swap
                        await anyio.sleep(0.01)
                done.set()
        for node in c.nodes.values():
            swaps = [s for s in node.components.swaps if s.slot == "connection_pool"]
            assert [(s.old, s.new, s.ok) for s in swaps] == [
                ("legacy", "actors_pool", True),
                ("actors_pool", "legacy", True),
                ("legacy", "actors_pool", True),
            ]
            assert node.components.connection_pool.stats().connections_open == sum(
                peer > node.id for peer in c.nodes
            )
        for i in (0, len(acknowledged) // 2, acknowledged[-1]):
            assert await client.get(f"w{i}") == str(i)
