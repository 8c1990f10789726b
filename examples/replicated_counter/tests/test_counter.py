"""The example application, replicated: embedded in one process, and across real node
processes whose leader is SIGKILLed under calls."""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from raftmw_counter import Counter

from framework.apps.objects import ReplicatedError
from framework.apps.remote import ObjectClient, SyncObjectClient
from framework.config import load_settings
from framework.errors import BadRequest, RaftError
from framework.runtime.localcluster import LocalCluster, free_ports
from raftmw import embed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def embedded_cluster(root: Path) -> AsyncIterator[list]:  # type: ignore[type-arg]
    peers = {i: f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3), start=1)}
    settings = load_settings()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                embed(
                    Counter,
                    node_id=i,
                    peers=peers,
                    data_dir=root / f"n{i}",
                    settings=settings,
                    timeout=10.0,
                )
            )
            for i in peers
        ]
        yield nodes


async def _leader(nodes: list) -> object:  # type: ignore[type-arg]
    with anyio.fail_after(30):
        while True:
            for node in nodes:
                if node.is_leader():
                    return node
            await anyio.sleep(0.05)


async def test_embedded_calls_replicate_and_exceptions_reach_the_caller(tmp_path: Path) -> None:
    async with embedded_cluster(tmp_path) as nodes:
        leader = await _leader(nodes)
        follower = next(n for n in nodes if n is not leader)
        on_leader, on_follower = leader.object(Counter), follower.object(Counter)
        assert await on_leader.incr(5, note="a") == 5  # proposed into the local node
        assert await on_follower.incr(2, note="b") == 7  # sent on to the leader
        with pytest.raises(ReplicatedError, match="ValueError: value -1 is negative"):
            await on_follower.set(-1)
        assert await on_follower.get() == 7  # linearizable: through the leader
        with anyio.fail_after(30):  # every replica applies the same calls alike
            while {n.node.sm.applied_index for n in nodes} != {leader.node.sm.applied_index}:
                await anyio.sleep(0.05)
        assert {n.node.sm.snapshot() for n in nodes} == {leader.node.sm.snapshot()}
        page = await follower.node.status()
        assert page["application"] == {
            "name": "counter",
            "version": "1.0",
            "cluster": ["counter", "1.0"],
        }
        assert await follower.object(Counter).get_stale() == 7

        def from_sync_code() -> int:
            peers = {n.id: n.node.transport.listen_address for n in nodes}
            with SyncObjectClient(peers, Counter, timeout=10.0) as c:
                c.call("incr", 3, note="sync")
                return c.call("get")  # type: ignore[no-any-return]

        assert await anyio.to_thread.run_sync(from_sync_code) == 10
        with pytest.raises(AttributeError, match="no @replicated or @query method 'decr'"):
            _ = on_leader.decr
        with pytest.raises(TypeError, match="cannot be sent"):
            await on_leader.incr(object())


async def test_a_node_of_another_application_is_refused(tmp_path: Path) -> None:
    """A KV node among counter nodes stops at the cluster's application marker, and a
    client calling the wrong application is told which one runs."""
    from framework.runtime.app_identity import WrongApplication

    cluster = LocalCluster(tmp_path, nodes=3, cluster_id="apps")
    for node in cluster.nodes.values():
        node.extra_args += ["--app", "counter"]
    cluster.nodes[3].extra_args[-1] = "kv"
    cluster.start(1)
    cluster.start(2)
    try:
        await cluster.wait_serving([1, 2])
        async with ObjectClient(
            cluster.peers, Counter, credentials=cluster.credentials, timeout=20.0
        ) as client:
            assert await client.object.incr(1) == 1  # the cluster runs the counter
            with pytest.raises(
                BadRequest,
                match=re.escape("application 'counter'; the request is for 'raftmw.locks'"),
            ):
                await client.app_call("raftmw.locks", b"\x90")
        cluster.start(3)  # a KV node joins the counter cluster
        proc = cluster.nodes[3].process
        assert proc is not None
        with anyio.fail_after(60):
            while proc.poll() is None:
                await anyio.sleep(0.1)
        assert proc.returncode != 0
        log = cluster.nodes[3].log_path.read_text()
        assert "node 3 runs the application 'kv' version 1, but its cluster runs 'counter'" in log
        assert WrongApplication.__name__  # the error class the message comes from
    finally:
        cluster.stop_all()


async def test_acknowledged_calls_apply_exactly_once_across_a_leader_sigkill(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(tmp_path, nodes=3, cluster_id="counter")
    for node in cluster.nodes.values():
        node.extra_args += ["--app", "counter"]
    cluster.start_all()
    acked: list[str] = []
    try:
        await cluster.wait_serving()
        async with ObjectClient(
            cluster.peers, Counter, credentials=cluster.credentials, timeout=20.0
        ) as client:
            counter = client.object

            async def caller(name: str, count: int) -> None:
                for i in range(count):
                    note = f"{name}-{i}"
                    try:
                        await counter.incr(1, note=note)
                    except RaftError:
                        continue  # unknown outcome: may or may not have applied
                    acked.append(note)

            async with anyio.create_task_group() as tg:
                for name in ("p", "q"):
                    tg.start_soon(caller, name, 40)
                await anyio.sleep(0.5)
                victim = await cluster.leader()
                cluster.kill(victim)  # SIGKILL under calls
            cluster.start(victim)
            await cluster.wait_serving()
            with anyio.fail_after(60):
                noted = await counter.noted()
                value = await counter.get()
        assert len(acked) > 20
        for note in acked:
            assert noted.count(note) == 1, (
                f"acknowledged call {note} applied {noted.count(note)} times"
            )
        assert len(noted) == len(set(noted)) == value  # nothing applied twice, even unacked
    finally:
        cluster.stop_all()
    assert signal.SIGKILL  # the harness's kill() sends it
