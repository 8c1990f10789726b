"""A KV write workload against a ``LocalCluster``, with an optional leader kill: the engine
behind ``raftmw demo`` and ``raftmw bench``.

Each simulated client writes one key at a time (put of a ``payload``-byte value), waiting
for each acknowledgement, and records every acknowledged write so the caller can check
that all of them survive. Clients share ``connections`` ``KVClient`` instances (each with
one connection per node), as the tasks of a real application share its client; each
write in flight still has a session of its own. Failover time is measured from the
SIGKILL of the leader to the first write acknowledged after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio

from framework.client import KVClient
from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster

__all__ = ["WorkloadResult", "percentile", "run_workload"]


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(slots=True)
class WorkloadResult:
    seconds: float = 0.0
    acknowledged: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    killed_leader: int = 0
    failover_seconds: float | None = None
    peak_rss_kib: dict[int, int] = field(default_factory=dict)

    @property
    def ops(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


async def run_workload(
    cluster: LocalCluster,
    *,
    clients: int,
    seconds: float,
    payload: int,
    connections: int = 0,
    kill_leader_after: float | None = None,
    on_progress: Callable[[float, int], None] | None = None,
    timeout: float = 5.0,
) -> WorkloadResult:
    result = WorkloadResult()
    value = "v" * payload
    started = time.perf_counter()
    stop_at = started + seconds
    killed_at: list[float] = []

    async def writer(n: int, client: KVClient) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            key = f"c{n}-{i}"
            t0 = time.perf_counter()
            try:
                await client.put(key, value)
            except RaftError as exc:
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                continue
            t1 = time.perf_counter()
            result.latencies.append(t1 - t0)
            result.acknowledged[key] = value
            if killed_at and result.failover_seconds is None and t0 >= killed_at[0]:
                result.failover_seconds = t1 - killed_at[0]
            i += 1

    async def killer(delay: float) -> None:
        await anyio.sleep(delay)
        leader = await cluster.leader()
        _sample_rss(cluster, result)
        killed_at.append(time.perf_counter())
        cluster.kill(leader)
        result.killed_leader = leader

    async def monitor() -> None:
        while time.perf_counter() < stop_at:
            _sample_rss(cluster, result)
            if on_progress is not None:
                on_progress(time.perf_counter() - started, result.ops)
            await anyio.sleep(0.1)

    shared = max(1, min(clients, connections or clients))
    async with AsyncExitStack() as stack:
        kv = [
            await stack.enter_async_context(cluster.client(timeout=timeout)) for _ in range(shared)
        ]
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(writer, n, kv[n % shared])
            tg.start_soon(monitor)
            if kill_leader_after is not None:
                tg.start_soon(killer, kill_leader_after)
    result.seconds = time.perf_counter() - started
    _sample_rss(cluster, result)
    if on_progress is not None:
        on_progress(result.seconds, result.ops)
    return result


def _sample_rss(cluster: LocalCluster, result: WorkloadResult) -> None:
    for node_id, node in cluster.nodes.items():
        rss = node.peak_rss_kib()
        if rss is not None:
            result.peak_rss_kib[node_id] = max(rss, result.peak_rss_kib.get(node_id, 0))
