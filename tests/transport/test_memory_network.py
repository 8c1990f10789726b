"""MemoryNetwork (framework/transport/memory.py): delivery, seeded faults, partitions and the
client path, on asyncio and on trio (with a mock clock, so delays cost no real time)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import trio.testing
from transport_harness import Inbox, Node, Service

from framework.core import Heartbeat, Message
from framework.transport import (
    ConnectionLost,
    KVOp,
    MemoryNetwork,
    StatusRequest,
    Transport,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


pytestmark = pytest.mark.anyio


# -- harness ---------------------------------------------------------------------------------


@asynccontextmanager
async def cluster(
    network: MemoryNetwork, ids: Sequence[int] = (1, 2, 3)
) -> AsyncIterator[tuple[dict[int, Node], anyio.abc.TaskGroup]]:
    async with anyio.create_task_group() as tg:
        nodes = {i: Node(network.transport(i)) for i in ids}
        for node in nodes.values():
            await node.start(tg)
        yield nodes, tg
        tg.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(10):
        # Polls state of objects that have no event to wait on (hence the noqa).
        while not predicate():
            await anyio.sleep(0.001)


def heartbeats(src: int, dst: int, terms: range) -> list[Message]:
    return [Heartbeat(src=src, dst=dst, term=t) for t in terms]


# -- delivery --------------------------------------------------------------------------------


async def test_messages_arrive_in_order_at_their_destination() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        transport: Transport = nodes[1].transport
        assert transport.listen_address == "mem://1"
        transport.send(heartbeats(1, 2, range(10)) + heartbeats(1, 3, range(100, 105)))
        nodes[2].transport.send(heartbeats(2, 1, range(3)))
        assert nodes[2].inbox.terms() == list(range(10))
        assert nodes[3].inbox.terms() == list(range(100, 105))
        assert nodes[1].inbox.terms() == [0, 1, 2]
        assert network.delivered == 18


async def test_a_node_that_is_not_serving_is_reported_unreachable() -> None:
    network = MemoryNetwork(seed=1)
    network.transport(2)  # exists, never serves
    async with cluster(network, ids=(1,)) as (nodes, _):
        nodes[1].transport.send(heartbeats(1, 2, range(3)) + heartbeats(1, 9, range(1)))
        assert nodes[1].inbox.unreachable == [2, 9]
        assert network.dropped == 0


async def test_set_peers_limits_whom_a_node_sends_to() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        nodes[1].transport.set_peers({3: "mem://3"})
        nodes[1].transport.send(heartbeats(1, 2, range(1)) + heartbeats(1, 3, range(1)))
        assert nodes[1].inbox.unreachable == [2]
        assert nodes[2].inbox.messages == []
        assert len(nodes[3].inbox.messages) == 1


async def test_a_transport_serves_once_at_a_time() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network, ids=(1,)) as (nodes, _):
        with pytest.raises(RuntimeError, match="already serving"):
            await nodes[1].transport.serve(Inbox(), Service(1))


# -- faults ----------------------------------------------------------------------------------


async def test_drop_one_drops_every_message_on_that_link_only() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        network.set_link(1, 2, drop=1.0, one_way=True)
        nodes[1].transport.send(heartbeats(1, 2, range(50)) + heartbeats(1, 3, range(5)))
        nodes[2].transport.send(heartbeats(2, 1, range(5)))
        assert nodes[2].inbox.messages == []
        assert network.dropped == 50
        assert len(nodes[3].inbox.messages) == 5
        assert len(nodes[1].inbox.messages) == 5
        assert nodes[1].inbox.unreachable == []  # loss is silent, like a real network
        network.set_link(1, 2)
        nodes[1].transport.send(heartbeats(1, 2, range(1)))
        assert len(nodes[2].inbox.messages) == 1


async def test_partition_and_heal() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        network.partition([{1}, {2, 3}])
        assert not network.connected(1, 2)
        assert network.connected(2, 3)
        for src in (1, 2, 3):
            nodes[src].transport.send(
                [Heartbeat(src=src, dst=dst, term=1) for dst in (1, 2, 3) if dst != src]
            )
        assert [m.src for m in nodes[1].inbox.messages] == []
        assert [m.src for m in nodes[2].inbox.messages] == [3]
        assert [m.src for m in nodes[3].inbox.messages] == [2]
        network.heal()
        nodes[1].transport.send(heartbeats(1, 2, range(1)))
        assert [m.src for m in nodes[2].inbox.messages] == [3, 1]


async def test_isolate_cuts_one_node_off() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        network.isolate(3)
        nodes[1].transport.send(heartbeats(1, 3, range(2)) + heartbeats(1, 2, range(2)))
        nodes[3].transport.send(heartbeats(3, 1, range(2)))
        assert nodes[3].inbox.messages == []
        assert nodes[1].inbox.messages == []
        assert len(nodes[2].inbox.messages) == 2
        network.heal()
        nodes[3].transport.send(heartbeats(3, 1, range(2)))
        assert len(nodes[1].inbox.messages) == 2


def test_fault_settings_are_validated() -> None:
    network = MemoryNetwork(seed=1)
    with pytest.raises(ValueError, match=r"drop=1.5: expected a probability"):
        network.set_link(1, 2, drop=1.5)
    with pytest.raises(ValueError, match=r"delay=\(0.2, 0.1\)"):
        network.set_link(1, 2, delay=(0.2, 0.1))
    with pytest.raises(ValueError, match=r"\[2\] appear in two groups"):
        network.partition([{1, 2}, {2, 3}])


async def test_varying_delays_reorder_messages() -> None:
    network = MemoryNetwork(seed=3)
    async with cluster(network) as (nodes, _):
        network.set_link(1, 2, delay=(0.0, 0.05))
        nodes[1].transport.send(heartbeats(1, 2, range(50)))
        await wait_until(lambda: len(nodes[2].inbox.messages) == 50, "50 delayed messages")
        received = nodes[2].inbox.terms()
        assert sorted(received) == list(range(50))
        assert received != list(range(50))


async def test_a_fixed_delay_keeps_the_order() -> None:
    network = MemoryNetwork(seed=3)
    async with cluster(network) as (nodes, _):
        network.set_link(1, 2, delay=(0.02, 0.02))
        for term in range(20):
            nodes[1].transport.send(heartbeats(1, 2, range(term, term + 1)))
            await anyio.sleep(0.001)
        await wait_until(lambda: len(nodes[2].inbox.messages) == 20, "20 delayed messages")
        assert nodes[2].inbox.terms() == list(range(20))


async def test_duplicate_one_delivers_everything_twice() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        network.set_link(1, 2, duplicate=1.0)
        nodes[1].transport.send(heartbeats(1, 2, range(3)))
        assert nodes[2].inbox.terms() == [0, 0, 1, 1, 2, 2]


async def test_messages_in_flight_are_lost_when_the_link_is_cut() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, _):
        network.set_link(1, 2, delay=(0.03, 0.03))
        nodes[1].transport.send(heartbeats(1, 2, range(5)))
        network.partition([{1}, {2, 3}])
        await wait_until(lambda: network.dropped == 5, "the messages to be dropped when due")
        assert nodes[2].inbox.messages == []


async def test_messages_in_flight_die_with_the_receiver() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, tg):
        network.set_link(1, 2, delay=(0.03, 0.03))
        nodes[1].transport.send(heartbeats(1, 2, range(5)))
        await nodes[2].stop()
        await nodes[2].start(tg)
        nodes[1].transport.send(heartbeats(1, 2, range(10, 11)))
        # The lost messages were due before this one: had they survived, they'd be first.
        await wait_until(lambda: bool(nodes[2].inbox.messages), "the message sent after restart")
        assert nodes[2].inbox.terms() == [10]


async def _decisions(seed: int, *, other_traffic: bool) -> list[int]:
    network = MemoryNetwork(seed=seed)
    async with cluster(network) as (nodes, _):
        network.set_link(1, 2, drop=0.5)
        network.set_link(1, 3, drop=0.5)
        for term in range(40):
            nodes[1].transport.send(heartbeats(1, 2, range(term, term + 1)))
            if other_traffic:
                nodes[1].transport.send(heartbeats(1, 3, range(term, term + 1)))
        return nodes[2].inbox.terms()


async def test_fault_decisions_are_seeded_per_link() -> None:
    first = await _decisions(7, other_traffic=False)
    assert 0 < len(first) < 40
    assert await _decisions(7, other_traffic=False) == first
    # Traffic on another link draws from that link's generator, not this one's.
    assert await _decisions(7, other_traffic=True) == first
    assert await _decisions(8, other_traffic=False) != first


# -- clients ---------------------------------------------------------------------------------


async def test_client_requests_reach_the_node_service() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, tg):
        client = network.client(2)
        first = await client.request(KVOp(op="get", key="a"))
        second = await client.request(StatusRequest())
        assert (first.id, first.value) == (1, "node 2: a")
        assert (second.id, second.value) == (2, "node 2: StatusRequest")

        nodes[2].service.hold("slow")
        answers: dict[str, Any] = {}

        async def ask(key: str) -> None:
            answers[key] = (await client.request(KVOp(op="get", key=key))).value

        tg.start_soon(ask, "slow")
        await ask("fast")
        assert answers == {"fast": "node 2: fast"}
        nodes[2].service.release("slow")
        await wait_until(lambda: "slow" in answers, "the slow answer")


async def test_a_failing_service_answers_retry() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network):
        response = await network.client(1).request(KVOp(op="get", key="boom"))
        assert not response.ok
        assert response.error is not None and response.error.kind == "retry"


async def test_clients_cannot_reach_a_node_that_is_cut_off_or_down() -> None:
    network = MemoryNetwork(seed=1)
    async with cluster(network) as (nodes, tg):
        client = network.client(2)
        network.cut_clients(2)
        with pytest.raises(ConnectionLost, match=r"mem://2.*clients are cut off"):
            await client.request(StatusRequest())
        network.cut_clients(2, cut=False)
        assert (await client.request(StatusRequest())).ok
        network.cut_clients(2)
        network.heal()
        assert (await client.request(StatusRequest())).ok

        nodes[2].service.hold("slow")
        errors: list[BaseException] = []

        async def ask_slow() -> None:
            try:
                await client.request(KVOp(op="get", key="slow"))
            except ConnectionLost as exc:
                errors.append(exc)

        tg.start_soon(ask_slow)
        await anyio.sleep(0.01)
        await nodes[2].stop()
        await wait_until(lambda: bool(errors), "the request to fail")
        assert "stopped before answering" in str(errors[0])
        with pytest.raises(ConnectionLost, match="node 2 is not serving"):
            await client.request(StatusRequest())
        with pytest.raises(ConnectionLost, match="node 9 is not serving"):
            await network.client(9).request(StatusRequest())
