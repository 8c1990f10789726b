"""Issue 12: heartbeats go ahead of bulk appends on a saturated link, so a follower that is
catching up through it keeps its leader (no election), where a FIFO link loses it.

Three in-process `RaftNode`s on real `TcpTransport`s (127.0.0.1). Node 1 leads; its link to
node 3 carries ``BANDWIDTH`` bytes per second (its connection pool's writes to node 3 are
paced frame by frame: a narrow link, at the layer where the pool queues), while node 2's
link is the loopback's. Writers send large values as fast as node 1 and node 2 commit them,
far more than node 3's link carries, so node 3 falls behind and every append to it waits in
node 1's pool. Node 1 keeps sending heartbeats every ``heartbeat_tick``; whether node 3
hears them within its election timeout depends on where they wait:

- ``actors`` on (`ConnectionPoolActor`, `OutboundQueue(prioritize=True)`): each write
  round hands heartbeats and other small messages over first and at most a bounded amount
  of bulk after them, so a heartbeat waits for one round, not for the backlog;
- a FIFO queue that hands its whole backlog to each write: a heartbeat waits behind
  every append queued before it.

What is asserted is the outcome Raft reports, not a time: with ``actors`` on, no node's
term changes while node 3 is behind and catching up (and it does catch up, once the
writers stop); pre-vote is off, so a follower that misses heartbeats does raise its term.
Before the pool's write rounds had a bulk budget (``OutboundQueue(bulk_budget=...)``) the
prioritized queue handed its whole backlog to one write, heartbeats first but the next
heartbeat behind all of it, and node 3 campaigned again and again (its term went from 3 to
11 in one run). Legacy mode is not asserted on: its one sender task serves every peer, so
the narrow link paces the whole cluster's replication instead (the seed's problem, shown
in ``tests/runtime/test_stuck_peer.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.seams import PeerConnection
from framework.transport.tcp import TcpTransport
from tests.runtime.inprocess_cluster import (
    DelegatingConnection,
    DelegatingDialer,
    TcpCluster,
    TcpTransportWithDialer,
    tcp_cluster,
)

pytestmark = pytest.mark.anyio

NARROW = 3
"""The follower behind the narrow link (dialled by node 1: the lower id dials)."""
BANDWIDTH = 400_000
"""Bytes per second node 1's pool may write to node 3."""
VALUE = "x" * 4000
MAX_WRITES = 6 * BANDWIDTH // len(VALUE)
"""At most six seconds of the narrow link's bytes are written: its backlog outlasts many
election timeouts, and its catching up is bounded by the link, not by how fast the machine
wrote (on a fast machine two seconds of unbounded writers queued two minutes of it)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class PacedConnection(DelegatingConnection):
    """A `PeerConnection` whose writes leave at ``BANDWIDTH`` bytes per second, frame by
    frame: the pool waits on it exactly as on a socket whose buffer is full."""

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            await anyio.sleep(len(frame) / BANDWIDTH)
            await super().send_frames([frame])


class NarrowDialer(DelegatingDialer):
    async def dial(self, peer: int, address: str) -> PeerConnection:
        conn = await super().dial(peer, address)
        return PacedConnection(conn) if peer == NARROW else conn


def narrow_from_node_1(**keywords: Any) -> TcpTransport:
    """Node 1's transport: its pool's connection to node 3 is paced."""
    if keywords["node_id"] == 1:
        return TcpTransportWithDialer(NarrowDialer, **keywords)
    return TcpTransport(**keywords)


def cluster(settings: Settings) -> AbstractAsyncContextManager[TcpCluster]:
    return tcp_cluster(settings, cluster_id="narrow", make_transport=narrow_from_node_1)


async def _node_1_leads(c: TcpCluster, client: KVClient) -> int:
    """Make node 1 the leader; its term once every node agrees (and has for a while: a
    transfer still in flight would otherwise end the term the test starts from)."""
    asked: set[int] = set()
    agreed = 0
    with anyio.fail_after(30):
        await client.put("settle", "1")
        while True:
            views = {((s := await n.status())["term"], s["leader"]) for n in c.nodes.values()}
            term, leader = views.pop() if len(views) == 1 else (0, 0)
            agreed = agreed + 1 if leader == 1 else 0
            if agreed >= 10:
                return int(term)
            if leader and leader != 1 and term not in asked:
                asked.add(term)  # one transfer per term
                await client.transfer_leader(1)
            await anyio.sleep(0.05)


def _settings(*, actors: bool) -> Settings:
    return load_settings(
        env={},
        overrides={
            "flags.actors": actors,
            "raft.pre_vote": False,  # a follower that misses heartbeats raises its term
            "raft.max_size_per_msg": "32KiB",
            # 0.5-1s: a Ready loop held up by a busy CPU is not what this is about.
            "raft.tick_interval": "10ms",
            "raft.election_tick": 50,
        },
    )


async def _load(client: KVClient, seconds: float) -> int:
    """Writers as fast as the quorum (nodes 1 and 2) commits, for ``seconds`` or
    ``MAX_WRITES`` writes."""
    written = 0
    deadline = anyio.current_time() + seconds

    async def writer(w: int) -> None:
        nonlocal written
        i = 0
        while anyio.current_time() < deadline and written < MAX_WRITES:
            await client.put(f"w{w}-{i}", VALUE)
            written += 1
            i += 1

    async with anyio.create_task_group() as tg:
        for w in range(8):
            tg.start_soon(writer, w)
    return written


async def test_a_follower_behind_a_saturated_link_keeps_its_leader() -> None:
    async with cluster(_settings(actors=True)) as c:
        async with KVClient({1: c.addresses[1]}, timeout=30.0) as client:
            term = await _node_1_leads(c, client)
            written = await _load(client, seconds=2.0)
            lagging = (await c.nodes[1].status())["commit"] - (await c.nodes[NARROW].status())[
                "applied"
            ]
            terms_under_load = await c.terms()
            with anyio.fail_after(120):  # the writers stopped: node 3 catches up
                commit = (await c.nodes[1].status())["commit"]
                while (await c.nodes[NARROW].status())["applied"] < commit:
                    await anyio.sleep(0.05)
            terms_after = await c.terms()
        # The link really was saturated: node 3 was far behind when the writers stopped.
        assert lagging * len(VALUE) > BANDWIDTH, (written, lagging)
        assert terms_under_load == dict.fromkeys(c.nodes, term)
        assert terms_after == dict.fromkeys(c.nodes, term)
