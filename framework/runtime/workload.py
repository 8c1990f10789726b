"""A KV write workload against a ``LocalCluster``, with an optional leader kill: the engine
behind ``raftmw demo`` and ``raftmw bench``.

Each simulated client writes one key at a time (put of a ``payload``-byte value), waiting
for each acknowledgement, and records every acknowledged write so the caller can check
that all of them survive. Clients share ``connections`` ``KVClient`` instances (each with
one connection per node), as the tasks of a real application share its client; each
write in flight still has a session of its own. Failover time is measured from the
SIGKILL of the leader to the first write acknowledged after it.

An ``Overload`` adds open-loop arrivals on top: writes started at a fixed rate whatever
the cluster answers (as users arrive, not as clients wait), for a while, then back to the
closed-loop writers alone. In-flight open-loop writes are capped (``max_in_flight``;
arrivals beyond it are counted as ``shed`` by the generator, so the generator's own memory
stays bounded); recovery is the time from the overload's end until its last write settled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import anyio

from framework.client import KVClient
from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster

__all__ = ["Overload", "WorkloadResult", "percentile", "run_workload"]


def percentile(samples: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True, slots=True, kw_only=True)
class Overload:
    start: float
    """Seconds after the workload starts."""
    seconds: float
    rate: float
    """Open-loop writes started per second."""
    max_in_flight: int = 20_000


@dataclass(slots=True)
class WorkloadResult:
    seconds: float = 0.0
    acknowledged: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    killed_leader: int = 0
    failover_seconds: float | None = None
    peak_rss_kib: dict[int, int] = field(default_factory=dict)
    overload_started: int = 0
    overload_shed: int = 0
    recovery_seconds: float | None = None
    """Overload's end -> its last open-loop write settled (acknowledged or failed)."""

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
    overload: Overload | None = None,
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

    async def open_loop(plan: Overload, client: KVClient) -> None:
        await anyio.sleep(plan.start)
        begun = time.perf_counter()
        end = begun + plan.seconds
        in_flight = 0
        settled = anyio.Event()

        async def one(key: str) -> None:
            nonlocal in_flight
            t0 = time.perf_counter()
            try:
                await client.put(key, value)
            except RaftError as exc:
                name = type(exc).__name__
                result.errors[name] = result.errors.get(name, 0) + 1
            else:
                result.latencies.append(time.perf_counter() - t0)
                result.acknowledged[key] = value
            finally:
                in_flight -= 1
                if in_flight == 0 and time.perf_counter() >= end:
                    settled.set()

        async with anyio.create_task_group() as arrivals:
            while (now := time.perf_counter()) < end:
                due = math.floor((now - begun) * plan.rate) - result.overload_started
                for _ in range(max(0, due)):
                    result.overload_started += 1
                    if in_flight >= plan.max_in_flight:
                        result.overload_shed += 1
                        continue
                    in_flight += 1
                    arrivals.start_soon(one, f"o-{result.overload_started}")
                await anyio.sleep(0.001)
            ended = time.perf_counter()
            if in_flight:
                await settled.wait()
            result.recovery_seconds = time.perf_counter() - ended

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
            if overload is not None:
                tg.start_soon(open_loop, overload, kv[0])
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
