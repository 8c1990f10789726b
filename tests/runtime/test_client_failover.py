"""Issue #19 on the in-memory network: clients get past a hung leader, writes apply once,
histories stay linearizable, and followers stop redirecting to a leader they lost.

A *frozen* node models a stopped process (SIGSTOP) as the client sees it: its peer links
are cut (``MemoryNetwork.isolate``), answers to requests in flight are not delivered, and a
new request to it is accepted and not answered until it thaws, when it is handled after all
(as a resumed process reads its socket), long after the client gave up on it. Writers
keep appending unique tokens meanwhile, so a write applied twice would show up as a token
repeated in the final value.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
from client_history import History, applied_tokens

from framework.client import KVClient
from framework.core import ConfState, Heartbeat, RaftConfig, RawNode, Role
from framework.runtime.redirect import redirect_target
from framework.sim.linearizability import check_history
from framework.transport.base import answer_request
from framework.transport.wire import ClientRequest, ClientResponse, KVOp, RequestBody
from tests.runtime.inprocess_cluster import Cluster, cluster

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the follower's redirect rule, on a bare kernel ----------------------------------------------


def test_a_follower_redirects_only_to_a_leader_heard_from_within_an_election_timeout() -> None:
    config = RaftConfig(id=2, election_tick=10, heartbeat_tick=1)
    seed = next(s for s in range(100) if _randomized_timeout(config, s) > 10)
    node = RawNode(config, rng=random.Random(seed), conf_state=ConfState(voters=(1, 2, 3)))
    node.step(Heartbeat(src=1, dst=2, term=2, commit=0))
    assert (node.role, node.leader, redirect_target(node)) == (Role.FOLLOWER, 1, 1)
    for _ in range(9):
        node.tick()
    assert redirect_target(node) == 1  # 9 silent ticks: still within the timeout
    node.tick()
    # 10 ticks of silence: the kernel still names node 1 (its own timer has not fired),
    # but clients are told "no leader known" instead of being sent to it.
    assert (node.role, node.leader, redirect_target(node)) == (Role.FOLLOWER, 1, 0)
    node.step(Heartbeat(src=1, dst=2, term=2, commit=0))
    assert redirect_target(node) == 1  # heard from again


async def test_a_node_cut_off_from_its_leader_stops_sending_clients_to_it() -> None:
    """A learner never campaigns, so its kernel keeps naming the leader it last heard from
    for as long as it is cut off: the node must still stop redirecting to it."""
    async with cluster() as c, c.client(timeout=10.0) as client:
        await client.put("k", "v")
        await c.start(4, join=True, peers={**c.peers, 4: "mem://4"})
        await client.members("add_learner", 4, "mem://4")
        leader = await c.wait_leader()
        learner = c.nodes[4]
        put = ClientRequest(id=1, body=KVOp(op="put", key="k", value="w", client_id=9, seq=1))
        with anyio.fail_after(10):
            while (await learner.status())["leader"] != leader:
                await anyio.sleep(0.01)
        first = await answer_request(learner, put)
        assert first.error is not None and first.error.leader_address == f"mem://{leader}"
        c.network.isolate(4)
        with anyio.fail_after(10):  # one election timeout (20 ticks of 5ms) of silence
            while (answer := await answer_request(learner, put)).error.leader_address:  # type: ignore[union-attr]
                await anyio.sleep(0.01)
        assert answer.error is not None
        assert (answer.error.kind, answer.error.leader_id) == ("not_leader", 0)
        assert "leader: unknown" in answer.error.message
        assert (await learner.status())["leader"] == leader  # the kernel still names it


def _randomized_timeout(config: RaftConfig, seed: int) -> int:
    node = RawNode(config, rng=random.Random(seed), conf_state=ConfState(voters=(1, 2, 3)))
    node.step(Heartbeat(src=1, dst=2, term=2, commit=0))
    return node.randomized_election_timeout


# -- a frozen leader on the memory network ---------------------------------------------------------


class Freezer:
    """Client connections to the memory cluster through which a node can be frozen."""

    def __init__(self, c: Cluster, tg: anyio.abc.TaskGroup) -> None:
        self.c = c
        self.tg = tg
        self.frozen: dict[int, anyio.Event] = {}
        self.held = 0
        """Requests that reached a frozen node."""

    def freeze(self, node_id: int) -> None:
        self.c.network.isolate(node_id)
        self.frozen[node_id] = anyio.Event()

    def thaw(self, node_id: int) -> None:
        self.c.network.heal()
        self.frozen.pop(node_id).set()

    def client(self, **kwargs: object) -> KVClient:
        @asynccontextmanager
        async def connect(address: str) -> AsyncIterator[FrozenAware]:
            yield FrozenAware(self, int(address.removeprefix("mem://")))

        return KVClient.from_settings(self.c.peers, self.c.settings, connector=connect, **kwargs)  # type: ignore[arg-type]


class FrozenAware:
    def __init__(self, freezer: Freezer, node_id: int) -> None:
        self.freezer = freezer
        self.inner = freezer.c.network.client(node_id)
        self.node_id = node_id

    async def request(
        self, body: RequestBody, *, timeout: float | None = None, deadline: float | None = None
    ) -> ClientResponse:
        thawed = self.freezer.frozen.get(self.node_id)
        if thawed is None:
            response = await self.inner.request(body, deadline=deadline)
            if self.node_id not in self.freezer.frozen:
                return response
            # Frozen while the request was in flight: a stopped process sends no answer.
        else:
            # Handled at thaw whatever the client does meanwhile: a resumed process reads it.
            self.freezer.tg.start_soon(self._late, thawed, body)
        self.freezer.held += 1
        assert deadline is not None
        await anyio.sleep(deadline - anyio.current_time())
        raise TimeoutError(f"node {self.node_id} is frozen")

    async def _late(self, thawed: anyio.Event, body: RequestBody) -> None:
        await thawed.wait()
        node = self.freezer.c.nodes[self.node_id]
        await answer_request(node, ClientRequest(id=0, body=body))


async def test_writers_get_past_a_frozen_leader_and_every_write_applies_once() -> None:
    keys = ("a", "b")
    async with (
        cluster(**{"client.request_timeout": "20s"}) as c,  # type: ignore[arg-type]
        anyio.create_task_group() as tg,
    ):
        freezer = Freezer(c, tg)
        history = History()
        leader = await c.wait_leader()
        acked_while_frozen = anyio.Event()
        phase = {"frozen": False, "acks_while_frozen": 0, "after_thaw": 0}
        stop = anyio.Event()

        async def writer(n: int, client: KVClient) -> None:
            for i in itertools.count():
                if stop.is_set():
                    return
                key = keys[i % 2]
                if await history.append(client, n, key, f"{n}.{i};"):
                    if phase["frozen"]:
                        phase["acks_while_frozen"] += 1
                        acked_while_frozen.set()
                    else:
                        phase["after_thaw"] += 1
                if i % 5 == 0:
                    await history.get(client, n, key)

        async with freezer.client() as client:
            async with anyio.create_task_group() as writers:
                for n in range(1, 5):
                    writers.start_soon(writer, n, client)
                with anyio.fail_after(20):
                    while len(history.ops) < 40:
                        await anyio.sleep(0.01)
                    phase["frozen"] = True
                    freezer.freeze(leader)
                # Bound: two election timeouts (<= 400ms here) and one attempt (500ms),
                # given ample room on a loaded machine; before the fix the writers waited
                # on the frozen leader for the whole 20s request deadline.
                with anyio.fail_after(10):
                    await acked_while_frozen.wait()
                    while phase["acks_while_frozen"] < 20:
                        await anyio.sleep(0.01)
                phase["frozen"] = False
                phase["after_thaw"] = 0
                freezer.thaw(leader)
                with anyio.fail_after(20):
                    while phase["after_thaw"] < 20:
                        await anyio.sleep(0.01)
                stop.set()
            assert freezer.held >= 1  # the writers did hang on the frozen leader
            with anyio.fail_after(20):
                final = {key: await history.get(client, 0, key) for key in keys}
        tg.cancel_scope.cancel()
    for key in keys:
        tokens = applied_tokens(final[key])
        assert len(tokens) == len(set(tokens)), f"{key}: a write was applied twice"
        assert set(history.acknowledged[key]) <= set(tokens)  # no acknowledged write lost
    verdict = check_history(history.ops)
    assert verdict.ok is not False, verdict.explanation
