"""Clusters of `RaftNode`s in the test's own process, on the in-memory network or on TCP.

- `cluster` / `Cluster`: nodes on a seeded `MemoryNetwork`, each on a `MemoryLogStore`
  that outlives it, so a test can crash a node and start it again from what it persisted;
  clients reach nodes through the network too. `fast_settings` are the settings these
  tests run with unless they say otherwise (5ms ticks, 2s request deadline).
- `tcp_cluster` / `TcpCluster`: nodes on real `TcpTransport`s on 127.0.0.1, for what only
  sockets show (a dial that hangs, a link that is slow), with `DelegatingDialer` and
  `DelegatingConnection` to wrap what a node's connection pool dials and writes, and
  `TcpTransportWithDialer` to give a node such a dialer.

Every node runs in the cluster's task group and is cancelled when the block ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from opentelemetry.metrics import MeterProvider

from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.core import Message
from framework.runtime.localcluster import free_ports
from framework.runtime.node import NodeConfig, RaftNode
from framework.seams import PeerConnection, PeerDialer, TimeoutPolicy
from framework.storage import MemoryLogStore
from framework.transport.memory import MemoryNetwork
from framework.transport.tcp import TcpTransport

__all__ = [
    "Cluster",
    "DelegatingConnection",
    "DelegatingDialer",
    "MemoryLogStore",
    "MemoryNetwork",
    "TcpCluster",
    "TcpTransportWithDialer",
    "cluster",
    "fast_settings",
    "tcp_cluster",
]


# -- on the in-memory network ----------------------------------------------------------------


def fast_settings(**overrides: object) -> Settings:
    """Settings with 5ms ticks and a 2s request deadline, then ``overrides`` (dotted keys)."""
    base: dict[str, object] = {"raft.tick_interval": "5ms", "client.request_timeout": "2s"}
    base.update(overrides)
    return load_settings(overrides=base)


@dataclass
class Cluster:
    network: MemoryNetwork
    tg: anyio.abc.TaskGroup
    settings: Settings
    cluster_id: str = "mem"
    meter_provider: MeterProvider | None = None
    stores: dict[int, MemoryLogStore] = field(default_factory=dict)
    nodes: dict[int, RaftNode] = field(default_factory=dict)
    scopes: dict[int, anyio.CancelScope] = field(default_factory=dict)

    @property
    def peers(self) -> dict[int, str]:
        return {nid: f"mem://{nid}" for nid in self.stores}

    async def start(
        self, node_id: int, *, join: bool = False, peers: dict[int, str] | None = None
    ) -> RaftNode:
        """Run node ``node_id`` on its store (a new one the first time)."""
        store = self.stores.setdefault(node_id, MemoryLogStore())
        config = NodeConfig(
            node_id=node_id,
            cluster_id=self.cluster_id,
            peers=peers or self.peers,
            settings=self.settings,
            join=join,
        )
        node = RaftNode(
            config,
            store=store,
            transport=self.network.transport(node_id),
            meter_provider=self.meter_provider,
        )
        scope = anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with scope:
                await node.run(task_status=task_status)

        await self.tg.start(run)
        self.nodes[node_id] = node
        self.scopes[node_id] = scope
        return node

    def crash(self, node_id: int) -> None:
        """Stop the node; its MemoryLogStore keeps what it persisted."""
        self.scopes.pop(node_id).cancel()
        self.nodes.pop(node_id)

    def client(self, timeout: float = 5.0) -> KVClient:
        network = self.network

        @asynccontextmanager
        async def connect(address: str) -> AsyncIterator[object]:
            yield network.client(int(address.removeprefix("mem://")))

        return KVClient(self.peers, timeout=timeout, connector=connect)  # type: ignore[arg-type]

    async def leader(self) -> int:
        """The one node that says it leads, or 0."""
        leaders = [nid for nid, n in self.nodes.items() if (await n.status())["role"] == "leader"]
        return leaders[0] if len(leaders) == 1 else 0

    async def wait_leader(self) -> int:
        with anyio.fail_after(10):
            while not (leader := await self.leader()):
                await anyio.sleep(0.01)
        return leader


@asynccontextmanager
async def cluster(
    n: int = 3,
    *,
    seed: int = 7,
    cluster_id: str = "mem",
    meter_provider: MeterProvider | None = None,
    **settings: object,
) -> AsyncIterator[Cluster]:
    """Nodes 1..n on a `MemoryNetwork` seeded with ``seed``, with ``fast_settings(**settings)``."""
    async with anyio.create_task_group() as tg:
        c = Cluster(
            network=MemoryNetwork(seed=seed),
            tg=tg,
            settings=fast_settings(**settings),
            cluster_id=cluster_id,
            meter_provider=meter_provider,
        )
        for nid in range(1, n + 1):
            c.stores[nid] = MemoryLogStore()
        for nid in range(1, n + 1):
            await c.start(nid)
        try:
            yield c
        finally:
            tg.cancel_scope.cancel()


# -- on TCP over loopback --------------------------------------------------------------------


@dataclass
class TcpCluster:
    settings: Settings
    addresses: dict[int, str]
    """Every node's address, those of nodes that do not run here too."""
    nodes: dict[int, RaftNode] = field(default_factory=dict)

    def client(self, timeout: float = 20.0) -> KVClient:
        """A client of the nodes that run here."""
        live = {i: a for i, a in self.addresses.items() if i in self.nodes}
        return KVClient(live, timeout=timeout)

    async def views(self) -> dict[int, tuple[int, int]]:
        """(term, leader) as each node's status says."""
        views = {}
        for node_id, node in self.nodes.items():
            status = await node.status()
            views[node_id] = (status["term"], status["leader"])
        return views

    async def terms(self) -> dict[int, int]:
        return {node_id: term for node_id, (term, _) in (await self.views()).items()}


@asynccontextmanager
async def tcp_cluster(
    settings: Settings,
    *,
    cluster_id: str,
    size: int = 3,
    elsewhere: Mapping[int, str] | None = None,
    make_transport: Callable[..., TcpTransport] = TcpTransport,
) -> AsyncIterator[TcpCluster]:
    """Nodes 1..size on 127.0.0.1, but for those ``elsewhere`` names: their peers know them
    at the address given there, and nothing of them runs here.

    Each node's transport is ``make_transport(**keywords)``, the `TcpTransport` keywords
    (``node_id`` among them) filled in from ``settings.transport``.
    """
    away = dict(elsewhere or {})
    here = [i for i in range(1, size + 1) if i not in away]
    ports = free_ports(len(here))
    addresses = {i: f"127.0.0.1:{port}" for i, port in zip(here, ports, strict=True)} | away
    t = settings.transport
    c = TcpCluster(settings=settings, addresses=addresses)
    async with anyio.create_task_group() as tg:
        for node_id in here:
            transport = make_transport(
                node_id=node_id,
                cluster_id=cluster_id,
                listen=addresses[node_id],
                peers={i: a for i, a in addresses.items() if i != node_id},
                max_frame_size=t.max_frame_size,
                connect_timeout=t.connect_timeout,
                backoff_min=t.reconnect_backoff_min,
                backoff_max=settings.reconnect_backoff_max,
            )
            node = RaftNode(
                NodeConfig(
                    node_id=node_id, cluster_id=cluster_id, peers=addresses, settings=settings
                ),
                store=MemoryLogStore(),
                transport=transport,
            )
            await tg.start(node.run)
            c.nodes[node_id] = node
        yield c
        tg.cancel_scope.cancel()


class DelegatingConnection:
    """A `PeerConnection` that does what ``inner`` does; subclasses change a part."""

    def __init__(self, inner: PeerConnection) -> None:
        self._inner = inner

    @property
    def closed(self) -> bool:
        return self._inner.closed

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        await self._inner.send_frames(frames)

    async def wait_closed(self) -> None:
        await self._inner.wait_closed()

    async def aclose(self) -> None:
        await self._inner.aclose()


class DelegatingDialer:
    """A `PeerDialer` that does what ``inner`` does; subclasses change a part."""

    def __init__(self, inner: PeerDialer) -> None:
        self._inner = inner

    async def dial(self, peer: int, address: str) -> PeerConnection:
        return await self._inner.dial(peer, address)

    def encode(self, peer: int, messages: Sequence[Message]) -> list[bytes]:
        return self._inner.encode(peer, messages)

    def unreachable(self, peer: int) -> None:
        self._inner.unreachable(peer)

    @property
    def timeouts(self) -> TimeoutPolicy | None:
        return self._inner.timeouts


class TcpTransportWithDialer(TcpTransport):
    """A `TcpTransport` whose connection pool (built by the node from ``dialer``) dials
    through ``wrap(the transport's own dialer)``."""

    def __init__(self, wrap: Callable[[PeerDialer], PeerDialer], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wrapped = wrap(super().dialer)

    @property
    def dialer(self) -> PeerDialer:
        return self._wrapped
