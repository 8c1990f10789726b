"""The faults of ``raftmw compare``: one schedule, planned before any run, played the same
on both sides.

A `FaultSchedule` is pure data computed from (fault, run length, seed): what happens, when
(seconds after the workload starts) and to whom, named by role (``leader``, or
``follower[k]``: the k-th follower by node id when the fault begins), never by node id, so
the same schedule means the same thing on a cluster whichever node won its first election.
`FaultPlayer` plays it on a `LocalCluster` and records what it did (``played``); a run's
record and its schedule are kept in the report, so "the same faults on both sides" can be
checked, not just believed.

Faults, and where each is implemented:

- ``kill-leader``: SIGKILL the leader half-way (``run_workload`` does it, timing failover);
- ``stop-follower``: SIGSTOP a follower for the middle third, SIGCONT after (its sockets
  accept until the buffers fill, then stall);
- ``stuck-peer``: a follower is SIGKILLed and its port taken by a listener that accepts
  connections and never reads (the plan's stuck peer: TCP connects, the TLS handshake is
  never answered), for the middle third; then the follower restarts on its data;
- ``dead-peer``: a follower SIGKILLed at a third and left down;
- ``slow-link``: a follower's peer sends get 40 ms plus up to 40 ms of jitter, for the
  middle third;
- ``partition``: a follower cut off from its peers both ways, for the middle third;
- ``overload``: open-loop arrivals at ``overload_rate`` writes/s for the middle third on top
  of the closed-loop writers, then back to normal (``run_workload``'s ``Overload``).

``slow-link`` and ``partition`` are the ``chaos`` plugin's faults (``send_latency`` /
``send_jitter``, ``isolate``): the schedule names the settings they need (`chaos_settings`,
written into both sides' settings) and switches the ``chaos`` flag on the one follower by
a node-targeted flag change (one log entry) and off again. Faults live in one place: the
process-level ones here, the in-node ones in the chaos plugin.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio

from framework.config import Rollout

if TYPE_CHECKING:
    from framework.runtime.localcluster import LocalCluster

__all__ = [
    "FAULTS",
    "Fault",
    "FaultEvent",
    "FaultPlayer",
    "FaultSchedule",
    "StuckListener",
    "plan_faults",
]

Fault = Literal[
    "none",
    "kill-leader",
    "stop-follower",
    "stuck-peer",
    "dead-peer",
    "slow-link",
    "overload",
    "partition",
]
FAULTS: Final[tuple[Fault, ...]] = (
    "none",
    "kill-leader",
    "stop-follower",
    "stuck-peer",
    "dead-peer",
    "slow-link",
    "overload",
    "partition",
)
_CHAOS: Final[Mapping[str, Mapping[str, Any]]] = {
    "slow-link": {"send_latency": "40ms", "send_jitter": "40ms"},
    "partition": {"isolate": True},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultEvent:
    at: float
    """Seconds after the workload starts."""
    action: str
    """kill, stop, resume, stick, unstick, chaos-on, chaos-off, overload."""
    target: str
    """``leader``, ``follower[k]``, or ``cluster``."""

    def to_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "action": self.action, "target": self.target}


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSchedule:
    fault: Fault
    events: tuple[FaultEvent, ...] = ()
    overload_rate: float = 0.0
    chaos: Mapping[str, Any] = field(default_factory=dict)
    """``[plugin.chaos]`` the nodes need (empty: the chaos plugin is not enabled)."""

    def settings(self) -> dict[str, Any]:
        """What both sides' settings files need for this schedule."""
        if not self.chaos:
            return {}
        return {"plugins": {"enabled": ["chaos"]}, "plugin": {"chaos": dict(self.chaos)}}

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "events": [e.to_dict() for e in self.events],
            "overload_rate": self.overload_rate,
            "chaos": dict(self.chaos),
        }


def plan_faults(
    fault: Fault, *, seconds: float, seed: int, nodes: int, overload_rate: float = 20_000.0
) -> FaultSchedule:
    """The schedule for one comparison (every run of both sides plays it)."""
    if fault not in FAULTS:
        raise ValueError(f"fault {fault!r}: expected one of {', '.join(FAULTS)}")
    if not (seconds > 0 and overload_rate > 0):
        raise ValueError(f"seconds={seconds!r}, overload_rate={overload_rate!r}: expected > 0")
    if fault != "none" and fault != "overload" and nodes < 3:
        raise ValueError(
            f"fault {fault} needs at least 3 nodes (a quorum survives it); got {nodes}"
        )
    third = seconds / 3
    who = f"follower[{random.Random(seed).randrange(max(1, nodes - 1))}]"
    pairs: dict[Fault, tuple[FaultEvent, ...]] = {
        "none": (),
        "kill-leader": (FaultEvent(at=seconds / 2, action="kill", target="leader"),),
        "stop-follower": (
            FaultEvent(at=third, action="stop", target=who),
            FaultEvent(at=2 * third, action="resume", target=who),
        ),
        "stuck-peer": (
            FaultEvent(at=third, action="stick", target=who),
            FaultEvent(at=2 * third, action="unstick", target=who),
        ),
        "dead-peer": (FaultEvent(at=third, action="kill", target=who),),
        "slow-link": (
            FaultEvent(at=third, action="chaos-on", target=who),
            FaultEvent(at=2 * third, action="chaos-off", target=who),
        ),
        "partition": (
            FaultEvent(at=third, action="chaos-on", target=who),
            FaultEvent(at=2 * third, action="chaos-off", target=who),
        ),
        "overload": (FaultEvent(at=third, action="overload", target="cluster"),),
    }
    return FaultSchedule(
        fault=fault,
        events=pairs[fault],
        overload_rate=overload_rate if fault == "overload" else 0.0,
        chaos=_CHAOS.get(fault, {}),
    )


class StuckListener:
    """A socket on ``address`` that the kernel accepts connections on and nobody reads."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, int(port)))
        self.sock.listen(64)

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class FaultPlayer:
    """Plays a schedule's process and flag events on ``cluster`` (``kill`` of the leader
    and ``overload`` belong to ``run_workload``, which times them)."""

    cluster: LocalCluster
    schedule: FaultSchedule
    leader: int
    played: list[dict[str, Any]] = field(default_factory=list)
    down: set[int] = field(default_factory=set)
    """Nodes the schedule left down (restart them before reading back)."""
    _stuck: dict[int, StuckListener] = field(default_factory=dict)
    _targets: dict[str, int] = field(default_factory=dict)
    _chaos_on: set[int] = field(default_factory=set)

    def _resolve(self, target: str) -> int:
        if target not in self._targets:
            k = int(target.removeprefix("follower[").removesuffix("]"))
            followers = sorted(n for n in self.cluster.nodes if n != self.leader)
            self._targets[target] = followers[k % len(followers)]
        return self._targets[target]

    async def play(self, started: float) -> None:
        """Every event at its time, all of them even when the workload ends first (a loaded
        machine makes the flag changes late): both sides play the whole schedule."""
        for event in self.schedule.events:
            if event.target in ("leader", "cluster"):
                continue
            await anyio.sleep(max(0.0, started + event.at - time.perf_counter()))
            node = self._resolve(event.target)
            await self._act(event.action, node)
            self.played.append(
                {**event.to_dict(), "node": node, "late_ms": self._late(started, event)}
            )

    @staticmethod
    def _late(started: float, event: FaultEvent) -> float:
        return round((time.perf_counter() - started - event.at) * 1e3, 1)

    async def _act(self, action: str, node: int) -> None:
        cluster = self.cluster
        if action == "stop":
            cluster.signal(node, signal.SIGSTOP)
        elif action == "resume":
            cluster.signal(node, signal.SIGCONT)
        elif action == "kill":
            cluster.kill(node)
            self.down.add(node)
        elif action == "stick":
            cluster.kill(node)
            self._stuck[node] = await _listen_when_free(cluster.nodes[node].address)
        elif action == "unstick":
            self._stuck.pop(node).close()
            cluster.start(node)
        elif action in ("chaos-on", "chaos-off"):
            value: bool | Rollout = (
                Rollout(enabled=True, percent=0.0, include=(node,))
                if action == "chaos-on"
                else False
            )
            await self._chaos(value, action)
            if action == "chaos-on":
                self._chaos_on.add(node)
            else:
                self._chaos_on.discard(node)
        else:  # pragma: no cover - plan_faults makes only the actions above
            raise ValueError(f"unknown fault action {action!r}")

    async def _chaos(self, value: bool | Rollout, why: str) -> None:
        async with self.cluster.client(timeout=10.0) as client:
            await client.flags("set", assignments={"chaos": value}, reason=f"compare: {why}")

    async def undo(self) -> None:
        """After the schedule: chaos off, stuck listeners closed, stopped nodes continued,
        killed ones restarted (the read-back needs every node)."""
        if self._chaos_on:
            await self._chaos(False, "undo")
            self._chaos_on.clear()
        for node, listener in list(self._stuck.items()):
            listener.close()
            self.cluster.start(node)
        self._stuck.clear()
        for node in sorted(self.down):
            self.cluster.start(node)
        for process in self.cluster.nodes.values():
            if process.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.process.send_signal(signal.SIGCONT)


async def _listen_when_free(address: str) -> StuckListener:
    """The killed node's port, once the kernel lets go of it."""
    with anyio.fail_after(10):
        while True:
            try:
                return StuckListener(address)
            except OSError:
                await anyio.sleep(0.05)
