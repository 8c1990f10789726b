"""Hostile input against in-process nodes: the pending-read bound, and a committed membership
change whose address no node can use, replayed after a restart from a real SQLite log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from framework.client import KVClient
from framework.config import Settings, load_settings
from framework.core import ConfChange, ConfChangeType, Entry, EntryKind, HardState
from framework.core.raft import encode_conf_change
from framework.errors import BadRequest
from framework.runtime.localcluster import free_ports
from framework.runtime.node import MAX_ADMIN_REQUESTS, NodeConfig, RaftNode
from framework.storage import MemoryLogStore
from framework.storage.sqlite import SQLiteLogStore
from framework.transport.memory import MemoryNetwork
from framework.transport.tcp import TcpTransport
from framework.transport.wire import (
    MAX_KEY_BYTES,
    ClientRequest,
    ClientResponse,
    KVOp,
    StatusRequest,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_pending_linearizable_reads_are_bounded_and_the_excess_is_overloaded() -> None:
    limit = 8
    settings = load_settings(
        env={},
        overrides={
            "raft.tick_interval": "20ms",
            "performance.backpressure.max_pending": limit,
        },
    )
    network = MemoryNetwork(seed=3)
    peers = {1: "mem://1", 2: "mem://2", 3: "mem://3"}
    answers: list[ClientResponse] = []
    async with anyio.create_task_group() as tg:
        nodes = {}
        for nid in peers:
            node = RaftNode(
                NodeConfig(node_id=nid, cluster_id="reads", peers=peers, settings=settings),
                store=MemoryLogStore(),
                transport=network.transport(nid),
            )
            await tg.start(node.run)
            nodes[nid] = node
        with anyio.fail_after(20):
            while not (leaders := [n for n in nodes.values() if n.kernel and n.kernel.leader]):
                await anyio.sleep(0.01)
            leader = nodes[leaders[0].kernel.leader]  # type: ignore[union-attr]
            # Cut the leader off: it cannot confirm its leadership, so every read waits.
            network.isolate(leader.id)
            for i in range(limit):
                leader.submit(ClientRequest(id=i, body=KVOp(op="get", key="k")), answers.append)
            await anyio.lowlevel.checkpoint()  # the Ready loop takes them into ReadIndex
            assert answers == []
            leader.submit(ClientRequest(id=99, body=KVOp(op="get", key="k")), answers.append)
        assert [a.id for a in answers] == [99]
        assert answers[0].error is not None and answers[0].error.kind == "overloaded"
        assert f"the limit (performance.backpressure.max_pending) is {limit}" in (
            answers[0].error.message
        )
        network.heal()
        tg.cancel_scope.cancel()


def _tcp_node(data_dir: Path, address: str, settings: Settings) -> RaftNode:
    t = settings.transport
    transport = TcpTransport(
        node_id=1,
        cluster_id="replay",
        listen=address,
        peers={},
        max_frame_size=t.max_frame_size,
        max_message_size=t.max_message_size,
        connect_timeout=t.connect_timeout,
        backoff_min=t.reconnect_backoff_min,
        backoff_max=settings.reconnect_backoff_max,
    )
    return RaftNode(
        NodeConfig(node_id=1, cluster_id="replay", peers={1: address}, settings=settings),
        store=SQLiteLogStore(data_dir, sync="os"),
        transport=transport,
    )


@asynccontextmanager
async def _running(node: RaftNode) -> AsyncIterator[KVClient]:
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        async with KVClient({1: node.transport.listen_address}, timeout=20.0) as client:
            yield client
        tg.cancel_scope.cancel()


async def test_a_committed_member_address_no_node_can_use_is_skipped_on_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An old entry already in a log (written before addresses were checked) used to crash
    every node when applied, and again on every restart while replaying it."""
    settings = load_settings(env={}, overrides={"raft.tick_interval": "10ms"})
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    with anyio.fail_after(60):
        async with _running(_tcp_node(tmp_path, address, settings)) as client:
            await client.put("kept", "yes")

        # Two bad membership entries written straight into the log, committed.
        store = SQLiteLogStore(tmp_path)
        state = store.load()
        assert state is not None
        last, term = state.entries[-1].index, state.hard_state.term
        bad = [
            ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=4, context=b"no-port-here"),
            ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=5, context=b"\xff\xfe:1"),
        ]
        entries = [
            Entry(term, last + 1 + i, EntryKind.CONF_CHANGE, encode_conf_change(change))
            for i, change in enumerate(bad)
        ]
        store.save_ready(
            hard_state=HardState(term=term, vote=state.hard_state.vote, commit=last + len(bad)),
            entries=entries,
            snapshot=None,
            sync=True,
        )
        store.close()

        for _restart in range(2):  # replayed on every start, never a crash loop
            caplog.clear()
            async with _running(_tcp_node(tmp_path, address, settings)) as client:
                assert await client.get("kept") == "yes"
                await client.put("after", "ok")
                status = await client.status(1)
            assert status["members"] == {"1": address}
            unusable = [r.getMessage() for r in caplog.records if "unusable address" in r.message]
            assert any("node 4" in m and "no-port-here" in m for m in unusable), unusable
            assert any("node 5" in m and "not UTF-8" in m for m in unusable), unusable


async def test_a_request_out_of_bounds_is_answered_bad_request_naming_the_field(
    tmp_path: Path,
) -> None:
    """Not a dropped connection (which the client would retry into a Timeout)."""
    settings = load_settings(env={}, overrides={"raft.tick_interval": "10ms"})
    (port,) = free_ports(1)
    with anyio.fail_after(60):
        async with _running(_tcp_node(tmp_path, f"127.0.0.1:{port}", settings)) as client:
            with pytest.raises(BadRequest, match=r"length <= 65536 - at `\$\.body\.key`"):
                await client.put("k" * (MAX_KEY_BYTES + 1), "v")
            with pytest.raises(BadRequest, match=r"`\$\.body\.node_id`"):
                await client.members("add", 0, "127.0.0.1:7004")
            await client.put("k", "still served")
            assert await client.get("k") == "still served"


async def test_status_and_admin_requests_running_at_once_are_bounded() -> None:
    """Each runs as a task of the node: a client pipelining status requests must not be
    able to make the node hold an unbounded number of them."""
    network = MemoryNetwork(seed=5)
    settings = load_settings(env={}, overrides={"raft.tick_interval": "20ms"})
    node = RaftNode(
        NodeConfig(node_id=1, cluster_id="admin", peers={1: "mem://1"}, settings=settings),
        store=MemoryLogStore(),
        transport=network.transport(1),
    )
    answers: list[ClientResponse] = []
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        for i in range(MAX_ADMIN_REQUESTS + 3):  # all submitted before any task has run
            node.submit(ClientRequest(id=i, body=StatusRequest()), answers.append)
        refused = [a for a in answers if not a.ok]
        assert [a.id for a in refused] == [MAX_ADMIN_REQUESTS + i for i in range(3)]
        assert all(a.error is not None and a.error.kind == "overloaded" for a in refused)
        with anyio.fail_after(20):
            while len(answers) < MAX_ADMIN_REQUESTS + 3:
                await anyio.sleep(0.01)
        assert sum(a.ok for a in answers) == MAX_ADMIN_REQUESTS
        # Once they are answered, the node takes new ones.
        node.submit(ClientRequest(id=999, body=StatusRequest()), answers.append)
        with anyio.fail_after(20):
            while answers[-1].id != 999:
                await anyio.sleep(0.01)
        assert answers[-1].ok
        tg.cancel_scope.cancel()
