"""Every application goes through the same seam: the KV machine and a replicated object
on a running (in-memory) cluster answer a retry after the leader is killed once, and a
node whose snapshot is of another application refuses it by name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from framework.apps.objects import ObjectMachine, decode_outcome, encode_call
from framework.config import load_settings
from framework.runtime.app_identity import WrongApplication
from framework.runtime.node import NodeConfig, RaftNode
from framework.runtime.snapshots import BadNodeSnapshot, check_node_snapshot
from framework.statemachine import KVStateMachine, StateMachine
from framework.storage import MemoryLogStore
from framework.transport.base import answer_request
from framework.transport.memory import MemoryNetwork
from framework.transport.wire import AppCall, ClientRequest, ClientResponse, KVOp, RequestBody
from tests.apps.objects_fixtures import Account, Tally

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class MemCluster:
    network: MemoryNetwork
    tg: anyio.abc.TaskGroup
    machine: Callable[[], StateMachine]
    settings: Any
    stores: dict[int, MemoryLogStore] = field(default_factory=dict)
    nodes: dict[int, RaftNode] = field(default_factory=dict)
    scopes: dict[int, anyio.CancelScope] = field(default_factory=dict)

    def node(self, node_id: int, machine: StateMachine | None = None) -> RaftNode:
        config = NodeConfig(
            node_id=node_id,
            cluster_id="seam",
            peers={nid: f"mem://{nid}" for nid in self.stores},
            settings=self.settings,
        )
        return RaftNode(
            config,
            store=self.stores[node_id],
            transport=self.network.transport(node_id),
            state_machine=machine or self.machine(),
        )

    async def start(self, node_id: int, machine: StateMachine | None = None) -> RaftNode:
        node, scope = self.node(node_id, machine), anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with scope:
                await node.run(task_status=task_status)

        await self.tg.start(run)
        self.nodes[node_id], self.scopes[node_id] = node, scope
        return node

    def crash(self, node_id: int) -> None:
        """Stop the node (what it persisted stays in its MemoryLogStore)."""
        self.scopes.pop(node_id).cancel()
        self.nodes.pop(node_id)

    async def leader(self) -> int:
        with anyio.fail_after(10):
            while True:
                leaders = [
                    nid for nid, n in self.nodes.items() if n.kernel and n.kernel.leader == nid
                ]
                if len(leaders) == 1:
                    return leaders[0]
                await anyio.sleep(0.01)

    async def applied_everywhere(self) -> None:
        with anyio.fail_after(10):
            while len({n.sm.applied_index for n in self.nodes.values()}) > 1:
                await anyio.sleep(0.01)


@asynccontextmanager
async def mem_cluster(
    machine: Callable[[], StateMachine], n: int = 3, *, running: int = 0, **settings: object
) -> AsyncIterator[MemCluster]:
    """``n`` members, the first ``running`` (all by default) started."""
    overrides = {"raft.tick_interval": "5ms", "client.request_timeout": "2s", **settings}
    async with anyio.create_task_group() as tg:
        c = MemCluster(MemoryNetwork(seed=16), tg, machine, load_settings(overrides=overrides))
        for nid in range(1, n + 1):
            c.stores[nid] = MemoryLogStore()
        for nid in range(1, (running or n) + 1):
            await c.start(nid)
        try:
            yield c
        finally:
            tg.cancel_scope.cancel()


# -- one write per application, and how many times it took effect ---------------------------


def _kv_write(client_id: int, seq: int) -> RequestBody:
    return KVOp(op="append", key="k", value="x", client_id=client_id, seq=seq)


def _kv_result(response: ClientResponse) -> object:
    return response.value


def _kv_effect(sm: StateMachine) -> int:
    return len(str(sm.read("k") or ""))


def _object_write(client_id: int, seq: int) -> RequestBody:
    payload = encode_call("deposit", (1,), {})
    return AppCall(app="tests.account", payload=payload, client_id=client_id, seq=seq)


def _object_result(response: ClientResponse) -> object:
    assert response.data is not None
    return decode_outcome(response.data)


def _object_effect(sm: StateMachine) -> int:
    data = sm.read(encode_call("read", (), {}))
    assert isinstance(data, bytes)
    return int(decode_outcome(data))  # type: ignore[call-overload]


def _tally_write(client_id: int, seq: int) -> RequestBody:
    return AppCall(app="tests.tally", payload=b"1", client_id=client_id, seq=seq)


def _tally_result(response: ClientResponse) -> object:
    return response.data


def _tally_effect(sm: StateMachine) -> int:
    return int(sm.read(b""))  # type: ignore[call-overload]


APPS = {
    "kv": (KVStateMachine, _kv_write, _kv_result, _kv_effect),
    "object": (lambda: ObjectMachine(Account), _object_write, _object_result, _object_effect),
    "hand-written": (Tally, _tally_write, _tally_result, _tally_effect),
}


@pytest.mark.parametrize("app", sorted(APPS))
async def test_a_retry_after_the_leader_is_killed_applies_once(app: str) -> None:
    machine, write, result, effect = APPS[app]
    async with mem_cluster(machine) as c:  # type: ignore[arg-type]
        leader = await c.leader()
        first = await answer_request(c.nodes[leader], ClientRequest(id=1, body=write(42, 1)))
        assert first.ok, first.error
        await c.applied_everywhere()
        # The leader dies; its answer could as well have been lost with it, so the client
        # retries the same (client_id, seq) with whoever leads next.
        c.crash(leader)
        successor = await c.leader()
        assert successor != leader
        retry = await answer_request(c.nodes[successor], ClientRequest(id=2, body=write(42, 1)))
        assert retry.ok, retry.error
        assert result(retry) == result(first)  # the first outcome, not a second run
        assert effect(c.nodes[successor].sm) == 1
        second = await answer_request(c.nodes[successor], ClientRequest(id=3, body=write(42, 2)))
        assert second.ok and effect(c.nodes[successor].sm) == 2
        # The killed node comes back and replays its log: every command once there too.
        await c.start(leader)
        await c.applied_everywhere()
        assert [effect(n.sm) for n in c.nodes.values()] == [2, 2, 2]


async def test_a_node_restarted_from_a_snapshot_of_another_application_stops() -> None:
    async with mem_cluster(
        KVStateMachine,
        n=1,
        **{"raft.snapshot_threshold_entries": 5, "raft.snapshot_trailing_entries": 0},
    ) as c:
        node = c.nodes[1]
        await c.leader()
        for seq in range(1, 12):
            body = KVOp(op="put", key=f"k{seq}", value="v", client_id=1, seq=seq)
            assert (await answer_request(node, ClientRequest(id=seq, body=body))).ok
        with anyio.fail_after(10):
            while c.stores[1].load().snapshot.meta.index == 0:  # type: ignore[union-attr]
                await anyio.sleep(0.01)
        c.crash(1)
        index = c.stores[1].load().snapshot.meta.index  # type: ignore[union-attr]

        again = c.node(1)  # the same application: it learns the cluster's from the snapshot
        async with anyio.create_task_group() as tg:
            await tg.start(again.run)
            assert again.identity.cluster == ("kv", "1")
            tg.cancel_scope.cancel()

        other = c.node(1, ObjectMachine(Account))
        with pytest.raises(WrongApplication) as caught:
            await other.run()
    assert str(caught.value) == (
        f"node 1 runs the application 'tests.account' version 1, but its snapshot at log index "
        f"{index} is of 'kv' version 1; start it with --app naming the cluster's application, "
        "in a version with the same major number"
    )


async def test_a_follower_of_another_application_refuses_the_leaders_snapshot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with mem_cluster(
        KVStateMachine,
        running=2,
        **{"raft.snapshot_threshold_entries": 5, "raft.snapshot_trailing_entries": 0},
    ) as c:
        leader = await c.leader()
        for seq in range(1, 12):
            body = KVOp(op="put", key=f"k{seq}", value="v", client_id=1, seq=seq)
            assert (await answer_request(c.nodes[leader], ClientRequest(id=seq, body=body))).ok
        with anyio.fail_after(10):
            while c.nodes[leader].kernel.snapshot.meta.index == 0:  # type: ignore[union-attr]
                await anyio.sleep(0.01)
        wrong = await c.start(3, ObjectMachine(Account))  # its log is behind the snapshot
        with anyio.fail_after(10):
            while wrong.snapshots.rejected == 0:
                await anyio.sleep(0.01)
        assert wrong.snapshots.accepted == 0  # the kernel never saw it: nothing persisted
        assert "node 3 refused the snapshot at index " in caplog.text
        assert (
            "the snapshot is of application 'kv' version 1; this node runs 'tests.account' "
            "version 1" in caplog.text
        )
        # It applied only its own bootstrap entries, and its store holds no snapshot.
        assert wrong.sm.applied_index < c.nodes[leader].kernel.snapshot.meta.index  # type: ignore[union-attr]
        assert c.stores[3].load().snapshot.meta.index == 0  # type: ignore[union-attr]


def test_an_install_snapshot_of_another_application_is_refused_by_name() -> None:
    kv = KVStateMachine()
    from framework.runtime.snapshots import NodeSnapshot, encode_node_snapshot

    data = encode_node_snapshot(
        NodeSnapshot(version=1, members={1: "mem://1"}, state_machine=kv.snapshot())
    )
    check_node_snapshot(data, index=0, state_machine=KVStateMachine())  # its own: fine
    with pytest.raises(BadNodeSnapshot) as caught:
        check_node_snapshot(data, index=0, state_machine=ObjectMachine(Account))
    assert str(caught.value) == (
        "snapshot state machine: the snapshot is of application 'kv' version 1; this node "
        "runs 'tests.account' version 1 (expected the same name and major version)"
    )
