"""``embed``: a raftmw node inside the application's own process.

::

    async with raftmw.embed(Counter, node_id=1, peers=peers, data_dir=path) as node:
        counter = node.object(Counter)
        await counter.incr(5)

The node runs as a task of the ``async with`` block (structured concurrency: leaving the
block stops it). A call on ``node.object(...)`` goes straight into the local node when it
is the leader (no network hop, no encoding of a request frame: the call is proposed by the
node's own client service); otherwise, and when the local attempt's outcome is unknown
(``retry``) or the node is overloaded, it is sent to the leader like ``ObjectClient`` does,
with the same session, so a call takes effect once either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from framework.apps.objects import ObjectMachine, ReplicatedObject
from framework.apps.remote import ObjectProxy
from framework.auth import ClientCredentials
from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.errors import BadRequest
from framework.plugins import PluginHost
from framework.runtime.client_service import Refused
from framework.runtime.node import NodeConfig, RaftNode
from framework.runtime.pending import Waiter
from framework.transport.wire import AppCall, ClientResponse, RequestBody

__all__ = ["EmbeddedNode", "embed"]

T = TypeVar("T", bound=ReplicatedObject)

_LOCAL_FALLBACK = frozenset({"not_leader", "retry", "overloaded"})
"""Local refusals after which the call goes over the network (same session: safe)."""


class EmbeddedNode:
    """A running node and the client its proxies fall back on."""

    def __init__(self, node: RaftNode, client: KVClient, cls: type[ReplicatedObject]) -> None:
        self.node = node
        self.client = client
        self._cls = cls

    @property
    def id(self) -> int:
        return self.node.id

    def is_leader(self) -> bool:
        kernel = self.node.kernel
        return kernel is not None and kernel.leader == self.node.id

    def object(self, cls: type[T]) -> ObjectProxy[T]:
        """A proxy of the replicated object this node runs (``cls`` must be its class)."""
        if cls.application() != self._cls.application():
            raise TypeError(
                f"this node runs {self._cls.application()!r}; it has no object of "
                f"{cls.application()!r}"
            )
        return ObjectProxy(self.client, cls, self._send)

    async def _send(self, body: RequestBody) -> ClientResponse:
        assert isinstance(body, AppCall)
        if self.is_leader() or (body.read and body.stale):
            clients = self.node.clients
            waiter = Waiter()
            try:
                clients.start(body, waiter)
                value = await clients.wait(waiter)
            except Refused as refused:
                if refused.reply.kind not in _LOCAL_FALLBACK:
                    raise BadRequest(refused.reply.message) from None
            else:
                assert isinstance(value, bytes)
                return ClientResponse(id=0, ok=True, data=value)
        if body.read:
            data = await self.client.app_call(body.app, body.payload, read=True)
            return ClientResponse(id=0, ok=True, data=data)
        return await self.client._call(body, write=True)


@asynccontextmanager
async def embed(
    cls: type[ReplicatedObject],
    *,
    node_id: int,
    peers: Mapping[int, str],
    data_dir: str | Path,
    cluster_id: str = "raftmw",
    settings: Settings | None = None,
    join: bool = False,
    credentials: ClientCredentials | None = None,
    **client_options: Any,
) -> AsyncIterator[EmbeddedNode]:
    """Run node ``node_id`` of the cluster ``peers`` (its own address included) with the
    application ``cls`` in this process, until the block ends."""
    from framework.cli import _build_transport  # the one place transports are chosen
    from framework.storage.sqlite import SQLiteLogStore

    settings = settings or load_settings()
    if node_id not in peers:
        raise ValueError(f"node_id {node_id} is not in peers {dict(peers)}; expected its address")
    host = PluginHost(blocked=settings.plugins.blocked, enabled=settings.plugins.enabled)
    config = NodeConfig(
        node_id=node_id,
        cluster_id=cluster_id,
        peers=dict(peers),
        settings=settings,
        join=join,
        plugin_host=host,
    )
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    store = SQLiteLogStore(Path(data_dir), sync=settings.storage.sync)  # type: ignore[arg-type]
    transport = _build_transport(config, peers[node_id])
    node = RaftNode(config, store=store, transport=transport, state_machine=ObjectMachine(cls))
    client = KVClient(peers, credentials=credentials, **client_options)
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        async with client:
            yield EmbeddedNode(node, client, cls)
        tg.cancel_scope.cancel()
