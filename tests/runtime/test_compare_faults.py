"""The fault schedule of ``raftmw compare``: planned once from (fault, length, seed), named
by role so it means the same on any cluster, and played identically on both sides."""

from __future__ import annotations

import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from framework.config import Rollout
from framework.runtime.fault_schedule import FAULTS, FaultPlayer, plan_faults
from framework.runtime.localcluster import free_ports


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _events(fault: str, seconds: float = 9.0, seed: int = 0) -> list[tuple[float, str, str]]:
    schedule = plan_faults(fault, seconds=seconds, seed=seed, nodes=3)  # type: ignore[arg-type]
    return [(e.at, e.action, e.target) for e in schedule.events]


@pytest.mark.parametrize(
    ("fault", "events"),
    [
        ("none", []),
        ("kill-leader", [(4.5, "kill", "leader")]),
        ("stop-follower", [(3.0, "stop", "follower[1]"), (6.0, "resume", "follower[1]")]),
        ("stuck-peer", [(3.0, "stick", "follower[1]"), (6.0, "unstick", "follower[1]")]),
        ("dead-peer", [(3.0, "kill", "follower[1]")]),
        ("slow-link", [(3.0, "chaos-on", "follower[1]"), (6.0, "chaos-off", "follower[1]")]),
        ("partition", [(3.0, "chaos-on", "follower[1]"), (6.0, "chaos-off", "follower[1]")]),
        ("overload", [(3.0, "overload", "cluster")]),
    ],
)
def test_each_fault_has_its_schedule(fault: str, events: list[tuple[float, str, str]]) -> None:
    assert _events(fault) == events


def test_every_fault_is_planned_and_the_same_inputs_give_the_same_schedule() -> None:
    for fault in FAULTS:
        one = plan_faults(fault, seconds=3, seed=4, nodes=5)
        assert one == plan_faults(fault, seconds=3, seed=4, nodes=5)
    targets = {_events("stop-follower", seed=s)[0][2] for s in range(20)}
    assert targets == {"follower[0]", "follower[1]"}  # the seed picks the follower


def test_chaos_faults_name_the_settings_both_sides_need() -> None:
    slow = plan_faults("slow-link", seconds=3, seed=0, nodes=3).settings()
    assert slow["plugins"] == {"enabled": ["chaos"]}
    assert set(slow["plugin"]["chaos"]) == {"send_latency", "send_jitter"}
    assert plan_faults("partition", seconds=3, seed=0, nodes=3).settings()["plugin"] == {
        "chaos": {"isolate": True}
    }
    assert plan_faults("stop-follower", seconds=3, seed=0, nodes=3).settings() == {}
    assert plan_faults("overload", seconds=3, seed=0, nodes=3, overload_rate=50).overload_rate == 50


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"fault": "flood", "nodes": 3}, "fault 'flood'"),
        ({"fault": "partition", "nodes": 1}, "at least 3 nodes"),
        ({"fault": "none", "nodes": 3, "seconds": 0}, "seconds=0"),
    ],
)
def test_a_fault_that_cannot_be_played_is_refused_before_any_run(
    kwargs: dict[str, Any], named: str
) -> None:
    kwargs.setdefault("seconds", 3)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        plan_faults(seed=0, **kwargs)


@dataclass
class FakeNode:
    address: str
    pid: int | None = None
    process: Any = None


@dataclass
class FakeCluster:
    """What `FaultPlayer` touches of a `LocalCluster`, recording every action."""

    nodes: dict[int, FakeNode]
    did: list[tuple[str, int, Any]] = field(default_factory=list)

    def signal(self, node: int, sig: Any) -> None:
        self.did.append(("signal", node, sig.name))

    def kill(self, node: int) -> None:
        self.did.append(("kill", node, None))

    def start(self, node: int) -> None:
        self.did.append(("start", node, None))

    @asynccontextmanager
    async def client(self, **_: Any) -> Any:
        cluster = self

        class Client:
            async def flags(self, action: str, **kwargs: Any) -> dict[str, Any]:
                cluster.did.append(("flags", 0, (action, kwargs["assignments"]["chaos"])))
                return {}

        yield Client()


def _cluster() -> FakeCluster:
    ports = free_ports(3)
    return FakeCluster({n: FakeNode(f"127.0.0.1:{p}") for n, p in enumerate(ports, start=1)})


async def _play(fault: str, leader: int) -> tuple[FakeCluster, FaultPlayer]:
    cluster = _cluster()
    schedule = plan_faults(fault, seconds=0.6, seed=0, nodes=3)  # type: ignore[arg-type]
    player = FaultPlayer(cluster, schedule, leader)  # type: ignore[arg-type]
    with anyio.fail_after(30):
        await player.play(time.perf_counter())
    return cluster, player


@pytest.mark.anyio
async def test_roles_resolve_against_each_clusters_own_leader() -> None:
    one, played_one = await _play("stop-follower", leader=1)
    two, played_two = await _play("stop-follower", leader=3)
    # follower[1]: the second follower by id, whoever leads
    assert one.did == [("signal", 3, "SIGSTOP"), ("signal", 3, "SIGCONT")]
    assert two.did == [("signal", 2, "SIGSTOP"), ("signal", 2, "SIGCONT")]
    same = [(p["action"], p["target"], p["at"]) for p in played_one.played]
    assert same == [(p["action"], p["target"], p["at"]) for p in played_two.played]


@pytest.mark.anyio
async def test_a_chaos_fault_is_a_node_targeted_flag_change_then_its_undoing() -> None:
    cluster, _ = await _play("partition", leader=1)
    assert cluster.did == [
        ("flags", 0, ("set", Rollout(enabled=True, percent=0.0, include=(3,)))),
        ("flags", 0, ("set", False)),
    ]


@pytest.mark.anyio
async def test_a_stuck_peer_holds_the_port_accepting_and_never_reading() -> None:
    cluster = _cluster()
    schedule = plan_faults("stuck-peer", seconds=30, seed=1, nodes=3)
    player = FaultPlayer(cluster, schedule, 1)  # type: ignore[arg-type]
    await player._act("stick", 3)
    host, _, port = cluster.nodes[3].address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.settimeout(0.2)
        conn.sendall(b"hello")  # the kernel accepts it; nobody reads or answers
        with pytest.raises(TimeoutError):
            conn.recv(1)
    await player.undo()  # the listener goes and the node comes back on its port
    assert cluster.did == [("kill", 3, None), ("start", 3, None)]
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


class SlowKV:
    """A client whose writes all wait for one gate: the open-loop writes pile up."""

    def __init__(self, gate: anyio.Event, peak: list[int]) -> None:
        self.gate = gate
        self.peak = peak
        self.in_flight = 0

    async def __aenter__(self) -> SlowKV:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def put(self, key: str, value: str) -> None:
        self.in_flight += 1
        self.peak[0] = max(self.peak[0], self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1


@pytest.mark.anyio
async def test_overload_arrivals_are_open_loop_bounded_and_their_recovery_measured() -> None:
    from framework.runtime.workload import Overload, run_workload

    gate = anyio.Event()
    peak = [0]
    kv = SlowKV(gate, peak)
    cluster = SimpleNamespace(nodes={}, client=lambda **_: kv)

    async def release_later() -> None:
        await anyio.sleep(0.6)
        gate.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(release_later)
        with anyio.fail_after(30):
            result = await run_workload(
                cluster,  # type: ignore[arg-type]
                clients=1,
                seconds=0.3,
                payload=1,
                overload=Overload(start=0.0, seconds=0.3, rate=1000, max_in_flight=20),
            )
    # arrivals kept coming while nothing was answered (open loop), bounded by the cap
    assert result.overload_started > 20 and result.overload_shed > 0
    assert peak[0] <= 20 + 1  # the cap, plus the one closed-loop writer
    assert result.overload_started - result.overload_shed == len(
        [k for k in result.acknowledged if k.startswith("o-")]
    )  # every admitted open-loop write settled and was acknowledged
    assert result.recovery_seconds is not None  # measured once the last one settled
