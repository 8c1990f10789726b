"""RaftNode in one process on the in-memory network: redirects, failover, snapshots sent to
lagging followers, membership, and the same behaviour on asyncio and trio."""

from __future__ import annotations

import anyio
import pytest

from framework.client import KVClient
from framework.errors import RaftError
from framework.transport.base import answer_request
from framework.transport.wire import ClientRequest, KVOp
from tests.runtime.inprocess_cluster import cluster

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_writes_and_reads_through_any_node() -> None:
    async with cluster() as c, c.client() as client:
        await client.put("x", "1")
        assert await client.get("x") == "1"
        assert await client.append("x", "2") == "12"
        leader = await c.wait_leader()
        # The whole log reaches every node and is applied in the same order.
        with anyio.fail_after(5):
            while any(n.sm.read("x") != "12" for n in c.nodes.values()):
                await anyio.sleep(0.01)
        follower = next(nid for nid in c.nodes if nid != leader)
        status = await c.nodes[follower].status()
        assert status["role"] == "follower" and status["leader"] == leader


async def test_a_follower_redirects_to_the_leader() -> None:
    async with cluster() as c:
        leader = await c.wait_leader()
        follower = next(nid for nid in c.nodes if nid != leader)
        direct = await answer_request(
            c.nodes[follower],
            ClientRequest(id=1, body=KVOp(op="put", key="k", value="v", client_id=1, seq=1)),
        )
        assert not direct.ok and direct.error is not None
        assert direct.error.kind == "not_leader"
        assert direct.error.leader_address == f"mem://{leader}"
        # A client that only knows the follower follows the redirect to the leader.
        async with c.client() as full:
            only_follower = KVClient(
                {follower: f"mem://{follower}"}, timeout=2.0, connector=full._connector
            )
            async with only_follower:
                await only_follower.put("k", "v")
                assert await only_follower.get("k") == "v"


async def test_isolated_leader_is_replaced_and_no_write_is_lost() -> None:
    async with cluster() as c, c.client() as client:
        acked = {}
        for i in range(20):
            await client.put(f"a{i}", str(i))
            acked[f"a{i}"] = str(i)
        old = await c.wait_leader()
        c.network.isolate(old)
        c.network.cut_clients(old)
        for i in range(20):
            await client.put(f"b{i}", str(i))
            acked[f"b{i}"] = str(i)
        with anyio.fail_after(10):
            while (await c.nodes[old].status())["role"] == "leader":
                await anyio.sleep(0.01)  # check-quorum makes the old leader step down
        c.network.heal()
        c.network.cut_clients(old, False)
        for key, value in acked.items():
            assert await client.get(key) == value


async def test_a_write_that_cannot_commit_is_answered_retry_at_its_deadline() -> None:
    # Without check-quorum an isolated leader stays leader, so its write waits for a quorum
    # that never answers: the node's deadline sweep must answer it "retry" (outcome unknown).
    async with cluster(**{"raft.check_quorum": False, "client.request_timeout": "300ms"}) as c:
        leader = await c.wait_leader()
        c.network.isolate(leader)
        with anyio.fail_after(5):
            response = await answer_request(
                c.nodes[leader],
                ClientRequest(id=7, body=KVOp(op="put", key="k", value="v", client_id=3, seq=1)),
            )
        assert response.id == 7 and not response.ok and response.error is not None
        assert response.error.kind == "retry"
        assert "no outcome within the client_request timeout" in response.error.message
        stats = (await c.nodes[leader].status())["performance"]["timeouts"]["client_request"]
        assert stats["timeouts"] >= 1


async def test_refusals_from_a_follower_are_not_sampled_as_client_request_times() -> None:
    # A follower answers "not the leader" at once: counted as a request that took no time,
    # it would pull the adaptive client_request estimate towards zero.
    async with cluster() as c:
        leader = await c.wait_leader()
        follower = next(n for n in c.nodes if n != leader)
        for seq in range(1, 21):
            response = await answer_request(
                c.nodes[follower],
                ClientRequest(
                    id=seq, body=KVOp(op="put", key="k", value="v", client_id=3, seq=seq)
                ),
            )
            assert not response.ok and response.error is not None
            assert response.error.kind == "not_leader"
        stats = (await c.nodes[follower].status())["performance"]["timeouts"]["client_request"]
        assert stats["count"] == 0 and stats["timeouts"] == 0


async def test_one_client_shared_by_many_tasks_applies_each_write_once() -> None:
    # Each concurrent write holds a session of its own; with one session shared, a retried
    # append would apply twice or be refused as stale.
    async with cluster() as c, c.client() as client:
        await c.wait_leader()
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(client.append, "log", f"<{i}>")
        log = await client.get("log")
        assert log is not None
        assert sorted(log.removeprefix("<").removesuffix(">").split("><"), key=int) == [
            str(i) for i in range(40)
        ]
        # The sessions go back to the client: sequential writes after reuse one of them.
        await client.put("after", "1")
        assert await client.get("after") == "1"


async def test_with_circuit_breakers_a_restarted_follower_catches_up_at_once() -> None:
    # The leader's breaker for a crashed follower opens (its sends fail); when the follower
    # is back and answers, the breaker must let entries through again well before its
    # 30 s timeout, or the follower lags (and a commit needing it waits) all that time.
    async with cluster(**{"flags.circuit_breaker": True}) as c, c.client() as client:
        leader = await c.wait_leader()
        follower = next(nid for nid in c.nodes if nid != leader)
        c.crash(follower)
        for i in range(20):
            await client.put(f"cb{i}", str(i))
        guard = c.nodes[leader].components.send_guard
        with anyio.fail_after(10):
            while guard.states().get(follower) != "open":
                await client.put("tick", "x")  # sends to the dead follower fail
        node = await c.start(follower)
        with anyio.fail_after(20):
            while node.sm.read("cb19") != "19":
                await anyio.sleep(0.01)
        with anyio.fail_after(20):
            while guard.states().get(follower) != "closed":
                await anyio.sleep(0.01)


async def test_a_lagging_follower_catches_up_from_a_snapshot() -> None:
    settings = {"raft.snapshot_threshold_entries": 20, "raft.snapshot_trailing_entries": 0}
    async with cluster(**settings) as c, c.client() as client:
        leader = await c.wait_leader()
        lagging = next(nid for nid in c.nodes if nid != leader)
        c.crash(lagging)
        for i in range(100):
            await client.put(f"s{i}", str(i))
        # The leader compacted its log past what the lagging node has.
        assert (await c.nodes[leader].status())["snapshot_index"] > 20
        node = await c.start(lagging)
        with anyio.fail_after(10):
            while node.sm.read("s99") != "99":
                await anyio.sleep(0.01)
        assert (await node.status())["snapshot_index"] > 0
        assert all(node.sm.read(f"s{i}") == str(i) for i in range(100))


async def test_a_crashed_node_restarts_from_its_store() -> None:
    async with cluster() as c, c.client() as client:
        for i in range(30):
            await client.put(f"r{i}", str(i))
        victim = await c.wait_leader()
        c.crash(victim)
        await client.put("after", "crash")
        node = await c.start(victim)
        with anyio.fail_after(10):
            while node.sm.read("after") != "crash":
                await anyio.sleep(0.01)
        assert all(node.sm.read(f"r{i}") == str(i) for i in range(30))


async def test_members_add_promote_and_remove() -> None:
    async with cluster() as c, c.client(timeout=10.0) as client:
        await client.put("m", "1")
        await c.start(4, join=True, peers={**c.peers, 4: "mem://4"})
        await client.members("add", 4, "mem://4")
        leader = await c.wait_leader()
        assert (await c.nodes[leader].status())["voters"] == [1, 2, 3, 4]
        with anyio.fail_after(10):
            while c.nodes[4].sm.read("m") != "1":
                await anyio.sleep(0.01)
        await client.members("remove", leader)
        with anyio.fail_after(10):
            while (new := await c.leader()) in (0, leader):
                await anyio.sleep(0.01)
        assert (await c.nodes[new].status())["voters"] == sorted({1, 2, 3, 4} - {leader})
        await client.put("m", "2")
        assert await client.get("m") == "2"


async def test_unknown_member_change_is_a_bad_request() -> None:
    from framework.errors import BadRequest

    async with cluster() as c, c.client() as client:
        await c.wait_leader()
        with pytest.raises(BadRequest, match="not a member"):
            await client.members("remove", 9)


async def test_shutdown_stops_serving() -> None:
    async with cluster() as c, c.client() as client:
        await client.put("t", "1")
        transports = [c.network._transports[nid] for nid in (1, 2, 3)]
        assert all(t.serving for t in transports)
    # Leaving the cluster's task group cancelled every node; nothing is still serving.
    assert not any(t.serving for t in transports)


async def test_flags_flip_under_load_without_losing_a_write(anyio_backend: str) -> None:
    """Issue #4: flip ``backpressure`` cluster-wide and per node, back and forth, 60 times
    while clients write; every acknowledged write survives and no client sees an error."""
    if anyio_backend == "asyncio":
        import asyncio

        tasks_before = len(asyncio.all_tasks())
    acked: dict[str, str] = {}
    errors: list[BaseException] = []
    async with cluster() as c:
        await c.wait_leader()
        stop = anyio.Event()

        async def writer(n: int) -> None:
            async with c.client(timeout=10.0) as client:
                i = 0
                while not stop.is_set():
                    key = f"w{n}.{i}"
                    try:
                        await client.put(key, key)
                    except RaftError as exc:
                        errors.append(exc)
                        return
                    acked[key] = key
                    i += 1

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(writer, n)
            async with c.client(timeout=10.0) as admin:
                for flip in range(60):
                    value = flip % 2 == 0
                    if flip % 3 == 2:
                        await admin.flags(
                            "set",
                            scope="node",
                            node_id=1 + flip % 3,
                            assignments={"backpressure": value},
                        )
                    else:
                        await admin.flags(
                            "set", assignments={"backpressure": value}, reason=f"flip {flip}"
                        )
                await admin.flags("unset", names=["backpressure"])
                for node_id in (1, 2, 3):
                    await admin.flags(
                        "unset", scope="node", node_id=node_id, names=["backpressure"]
                    )
            stop.set()
        assert not errors, errors
        # A follower applies the last unset when it next hears from its leader (commits ride
        # on the next append or heartbeat: raft.broadcast_commit), so each node ends on
        # legacy once it has; every node ran both plugins on its queues at some point.
        with anyio.fail_after(10):
            while any(
                n.components.plugins()["queue:proposals"] != "legacy" for n in c.nodes.values()
            ):
                await anyio.sleep(0.01)  # a state to poll, no event
        for node in c.nodes.values():
            swapped = {(r.old, r.new) for r in node.components.swaps if r.ok}
            assert ("legacy", "backpressure") in swapped and ("backpressure", "legacy") in swapped
            assert not any(not r.ok for r in node.components.swaps)
        async with c.client() as client:
            for key, value in acked.items():
                assert await client.get(key) == value
        history = (await c.nodes[1].status())["flags"]
        assert history["backpressure"]["value"] is False
        assert len(acked) > 50
    if anyio_backend == "asyncio":
        assert len(asyncio.all_tasks()) == tasks_before


async def test_a_cluster_flag_switches_every_node_at_the_same_index() -> None:
    async with cluster() as c, c.client() as client:
        await c.wait_leader()
        await client.put("before", "1")
        result = await client.flags("set", assignments={"backpressure": True}, reason="try")
        with anyio.fail_after(5):
            while any(
                n.components.plugins()["queue:inbox"] != "backpressure" for n in c.nodes.values()
            ):
                await anyio.sleep(0.01)
        indexes = {n.flags.current["backpressure"].log_index for n in c.nodes.values()}
        assert len(indexes) == 1 and None not in indexes
        for node in c.nodes.values():
            ev = node.flags.current["backpressure"]
            assert (ev.reason, ev.source.name) == ("STATIC", "CLUSTER")
            assert node.components.plugins()["queue:inbox"] == "backpressure"
        assert result["history"][-1]["reason"] == "try"


async def test_a_node_override_wins_over_the_cluster_and_shows_as_override() -> None:
    async with cluster() as c, c.client() as client:
        await c.wait_leader()
        await client.flags("set", assignments={"backpressure": True})
        answer = await client.flags(
            "set", scope="node", node_id=2, assignments={"backpressure": False}
        )
        assert answer["flags"]["backpressure"]["reason"] == "OVERRIDE"
        assert answer["flags"]["backpressure"]["value"] is False
        assert c.nodes[2].components.plugins()["queue:inbox"] == "legacy"
        # Node 1 switches when it applies the flag entry, which a follower may do after
        # the leader answered the client.
        with anyio.fail_after(10):
            while c.nodes[1].components.plugins()["queue:inbox"] != "backpressure":
                await anyio.sleep(0.01)
        assert c.nodes[2].components.plugins()["queue:inbox"] == "legacy"


async def test_an_unknown_flag_is_refused_naming_the_closest() -> None:
    from framework.errors import BadRequest

    async with cluster() as c, c.client() as client:
        await c.wait_leader()
        with pytest.raises(BadRequest, match="backpressure"):
            await client.flags("set", assignments={"backpresure": True})


async def test_a_restarted_node_has_the_cluster_flags_before_it_serves() -> None:
    async with cluster(**{"raft.snapshot_threshold_entries": 10}) as c, c.client() as client:
        await c.wait_leader()
        await client.flags("set", assignments={"backpressure": True})
        for i in range(30):  # pushes the flag entry into a snapshot
            await client.put(f"k{i}", "v")
        victim = 3
        c.crash(victim)
        node = await c.start(victim)
        assert node.flags.current["backpressure"].value is True
        assert node.components.plugins()["queue:inbox"] == "backpressure"


async def test_observer_hooks_and_metrics_see_the_node_work() -> None:
    from framework.hooks import hookimpl

    events: list[tuple[str, int]] = []

    class Observer:
        @hookimpl
        def raftmw_on_commit(self, node_id: int, commit_index: int) -> None:
            events.append(("commit", node_id))

        @hookimpl
        def raftmw_on_apply(self, node_id: int, applied_index: int, entries: int) -> None:
            events.append(("apply", node_id))

        @hookimpl
        def raftmw_on_leader_change(self, node_id: int, leader: int, term: int) -> None:
            events.append(("leader", node_id))

    async with cluster() as c, c.client() as client:
        for node in c.nodes.values():
            node.host.pm.register(Observer(), name=f"observer{node.id}")
        leader = await c.wait_leader()
        await client.put("o", "1")
        await client.put("o", "2")
        metrics = (await c.nodes[leader].status())["performance"]["metrics"]
    assert ("commit", leader) in events and ("apply", leader) in events
    assert metrics["proposals"] >= 2 and metrics["entries_applied"] >= 2
    assert metrics["proposal_batch"]["count"] >= 1


async def test_in_actor_and_lock_free_mode_the_hot_path_takes_no_lock() -> None:
    """Issue #5: with ``actors`` and ``lock_free`` on, writes take no lock anywhere; in the
    legacy mode the same writes are counted on the status lock and the metrics lock."""
    modes = {}
    for actors in (False, True):
        flags = {"flags.actors": actors, "flags.lock_free": actors}
        async with cluster(**flags) as c, c.client() as client:
            leader = await c.wait_leader()
            for i in range(20):
                await client.put(f"l{i}", "v")
            locks = (await c.nodes[leader].status())["performance"]["locks"]
            modes[actors] = sum(s["acquisitions"] for s in locks.values())
    assert modes[True] == 0
    assert modes[False] > 0
