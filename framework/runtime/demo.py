"""``raftmw demo``: a local 3-node cluster, a KV workload, a leader kill, and a summary."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from framework.runtime.eventloop import run_async
from framework.runtime.localcluster import LocalCluster
from framework.runtime.workload import percentile, run_workload

__all__ = ["run_demo"]


def run_demo(*, seconds: float, clients: int, data_dir: Path | None) -> None:
    console = Console()
    root = data_dir or Path(tempfile.mkdtemp(prefix="raftmw-demo-"))
    cluster = LocalCluster(root, nodes=3, cluster_id="demo")
    try:
        run_async(_demo, cluster, console, seconds, clients, root)
    finally:
        cluster.stop_all()


async def _demo(
    cluster: LocalCluster, console: Console, seconds: float, clients: int, root: Path
) -> None:
    console.print(f"[bold]raftmw demo[/]: starting 3 nodes on loopback, data in {root}")
    cluster.start_all()
    await cluster.wait_serving()
    leader = await cluster.leader()
    console.print(f"node {leader} is the leader; peers {cluster.peers_arg()}")
    console.print(
        f"{clients} clients write for {seconds:g}s; the leader is killed (SIGKILL) "
        f"at {seconds / 2:g}s"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[ops]} writes"),
        console=console,
    ) as bar:
        task = bar.add_task("workload", total=seconds, ops=0)
        result = await run_workload(
            cluster,
            clients=clients,
            seconds=seconds,
            payload=100,
            kill_leader_after=seconds / 2,
            on_progress=lambda t, ops: bar.update(task, completed=min(t, seconds), ops=ops),
        )
    killed = result.killed_leader
    console.print(f"restarting node {killed} on its data directory")
    cluster.start(killed)
    await cluster.wait_serving([killed])
    new_leader = await cluster.leader()
    # Every acknowledged write must be readable: check a sample through the new leader.
    missing = 0
    async with cluster.client() as client:
        keys = sorted(result.acknowledged)
        sample = keys[:: max(1, len(keys) // 200)]
        for key in sample:
            if await client.get(key) != result.acknowledged[key]:
                missing += 1
    table = Table(title="raftmw demo summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    lat = result.latencies
    table.add_row("acknowledged writes", f"{result.ops}")
    table.add_row("throughput", f"{result.throughput:,.0f} writes/s")
    table.add_row(
        "latency p50 / p99",
        f"{percentile(lat, 0.5) * 1e3:.1f} / {percentile(lat, 0.99) * 1e3:.1f} ms",
    )
    table.add_row("leader killed", f"node {killed}")
    failover = result.failover_seconds
    table.add_row(
        "recovery (kill -> next acknowledged write)",
        f"{failover * 1e3:.0f} ms" if failover is not None else "n/a",
    )
    table.add_row("new leader", f"node {new_leader}")
    table.add_row(
        "client errors (retried)",
        ", ".join(f"{k}: {v}" for k, v in result.errors.items()) or "none",
    )
    table.add_row(
        "acknowledged writes checked after restart",
        f"{len(sample) - missing}/{len(sample)} present",
    )
    table.add_row("data directory", str(root))
    console.print(table)
    console.print(
        f"verified: {len(sample) - missing}/{len(sample)} sampled acknowledged "
        f"writes present after the restart",
        soft_wrap=True,
    )
    if missing:
        raise SystemExit(f"{missing} acknowledged writes are missing")
