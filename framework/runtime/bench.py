"""``raftmw bench``: node processes on loopback under load; throughput, latency, RSS, failover.

CPU is counted for the whole cluster: each node process (from ``/proc``) and the load
generator (this process, ``time.process_time``: every thread), over the workload only.
The machine's load from other processes in the same window comes from ``LoadSampler``:
on a shared machine a figure means little without it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import tomli_w
from rich.console import Console
from rich.table import Table

from framework.runtime.eventloop import run_async
from framework.runtime.localcluster import LocalCluster
from framework.runtime.machine_load import LoadSampler
from framework.runtime.workload import percentile, run_workload

__all__ = ["BenchOptions", "run_bench"]

_SETTLE_SECONDS = 1.0
"""After a leader is elected and before the workload: when each node's idle RSS is read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    nodes: int = 3
    clients: int = 64
    connections: int = 4
    payload: int = 100
    seconds: float = 10.0
    kill_leader: bool = False
    profile: str | None = None
    flags: tuple[str, ...] = ()
    sync: str = "always"
    tls: bool = True
    """Mutual TLS between nodes and clients (as ``LocalCluster`` sets it up); False for
    plain TCP on loopback, to measure what TLS costs."""
    start_timeout: float = 30.0
    """Seconds the nodes may take to serve, and then to elect a leader."""


def run_bench(options: BenchOptions, *, progress: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raftmw-bench-") as tmp:
        root = Path(tmp)
        settings = root / "bench-settings.toml"
        settings.write_text(tomli_w.dumps({"storage": {"sync": options.sync}}))
        cluster = LocalCluster(
            root,
            nodes=options.nodes,
            profile=options.profile,
            flags=options.flags,
            settings_files=[str(settings)],
            cluster_id="bench",
            tls=options.tls,
        )
        try:
            report = run_async(_bench, cluster, options)
        finally:
            cluster.stop_all()
    if progress:
        _print(report)
    return report


async def _bench(cluster: LocalCluster, options: BenchOptions) -> dict[str, Any]:
    cluster.start_all()
    await cluster.wait_serving(timeout=options.start_timeout)
    await cluster.leader(timeout=options.start_timeout)
    await anyio.sleep(_SETTLE_SECONDS)  # start-up's garbage collected, the leader's first Ready
    idle_rss = {str(n): _rss_mib(node.pid) for n, node in cluster.nodes.items()}
    sampler = LoadSampler(lambda: [p for node in cluster.nodes.values() if (p := node.pid)])
    cpu_before = {n: node.cpu_seconds() for n, node in cluster.nodes.items()}
    generator_before = time.process_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        result = await run_workload(
            cluster,
            clients=options.clients,
            connections=options.connections,
            seconds=options.seconds,
            payload=options.payload,
            kill_leader_after=options.seconds / 2 if options.kill_leader else None,
        )
        sampler.sample()
        tg.cancel_scope.cancel()
    generator_cpu = time.process_time() - generator_before
    cpu_after = {n: node.cpu_seconds() for n, node in cluster.nodes.items()}
    node_cpu = {
        n: after - before
        for n, after in cpu_after.items()
        if after is not None and (before := cpu_before[n]) is not None
    }
    spent = list(node_cpu.values())
    # The nodes' CPU per acknowledged write: unlike throughput, it hardly moves when other
    # processes load the machine. Not comparable when a node was killed (its CPU is gone).
    complete = bool(result.ops) and len(spent) == len(cluster.nodes)
    cpu_per_write = round(sum(spent) / result.ops * 1e6, 1) if complete else None
    cluster_ms_per_1000 = (
        round((sum(spent) + generator_cpu) / result.ops * 1e6, 1) if complete else None
    )
    lat = result.latencies
    return {
        "options": asdict(options),
        "acknowledged_writes": result.ops,
        "ops_per_second": round(result.throughput, 1),
        "latency_ms": {
            "p50": round(percentile(lat, 0.5) * 1e3, 3),
            "p99": round(percentile(lat, 0.99) * 1e3, 3),
            "p999": round(percentile(lat, 0.999) * 1e3, 3),
        },
        "node_cpu_us_per_write": cpu_per_write,
        "cpu_seconds": {
            "nodes": {str(n): round(v, 3) for n, v in node_cpu.items()},
            "load_generator": round(generator_cpu, 3),
        },
        "cluster_cpu_ms_per_1000_writes": cluster_ms_per_1000,
        "machine_load": sampler.report(),
        "idle_rss_mib": idle_rss,
        "peak_rss_mib": {str(k): round(v / 1024, 1) for k, v in result.peak_rss_kib.items()},
        "failover_ms": round(result.failover_seconds * 1e3, 1)
        if result.failover_seconds is not None
        else None,
        "killed_leader": result.killed_leader or None,
        "client_errors": result.errors,
    }


def _rss_mib(pid: int | None) -> float | None:
    """Resident set size of a process now (Linux ``VmRSS``), in MiB; None if unreadable."""
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def _print(report: dict[str, Any]) -> None:
    table = Table(title="raftmw bench")
    table.add_column("measure")
    table.add_column("value", justify="right")
    o = report["options"]
    table.add_row(
        "setup",
        f"{o['nodes']} nodes, {o['clients']} clients on {o['connections']} connections, "
        f"{o['payload']} B "
        f"values, sync={o['sync']}, TLS {'on' if o['tls'] else 'off'}, {o['seconds']:g}s",
    )
    table.add_row("committed writes/s", f"{report['ops_per_second']:,.0f}")
    lat = report["latency_ms"]
    table.add_row(
        "latency p50 / p99 / p999", f"{lat['p50']:.2f} / {lat['p99']:.2f} / {lat['p999']:.2f} ms"
    )
    if report["node_cpu_us_per_write"] is not None:
        table.add_row("node CPU per write (all nodes)", f"{report['node_cpu_us_per_write']} us")
    cpu = report["cpu_seconds"]
    table.add_row(
        "CPU seconds",
        ", ".join(f"node {k}: {v:.2f}" for k, v in cpu["nodes"].items())
        + f", load generator: {cpu['load_generator']:.2f}",
    )
    if report["cluster_cpu_ms_per_1000_writes"] is not None:
        table.add_row(
            "CPU per 1,000 writes (nodes + load generator)",
            f"{report['cluster_cpu_ms_per_1000_writes']} ms",
        )
    share = report["machine_load"]["other_share"]
    if share is not None:
        table.add_row("other processes' share of the machine", f"{share:.0%}")
    table.add_row(
        "idle RSS per node (before the workload)",
        ", ".join(f"{k}: {v} MiB" for k, v in report["idle_rss_mib"].items()),
    )
    table.add_row(
        "peak RSS per node", ", ".join(f"{k}: {v} MiB" for k, v in report["peak_rss_mib"].items())
    )
    if report["killed_leader"]:
        table.add_row("failover (kill -> next write)", f"{report['failover_ms']} ms")
    table.add_row(
        "client errors",
        ", ".join(f"{k}: {v}" for k, v in report["client_errors"].items()) or "none",
    )
    Console().print(table)
