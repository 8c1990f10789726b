"""Soak: many writers on a 3-process cluster, snapshots on, then a leader kill.

    nice python benchmarks/bench_soak.py [--writers 512] [--seconds 600]
        [--snapshot-every 100000] [--keys 10000]

A ``LocalCluster`` of 3 nodes on loopback (TLS, SQLite, default profile: election timeout
200-400 ms) with ``raft.snapshot_threshold_entries = --snapshot-every``. ``--writers``
writers share 8 clients and put keys out of ``--keys`` (100-byte values) for ``--seconds``.
Then the leader is killed with SIGKILL and the failover measured as the time to the first
acknowledged write started after the kill.

Reported: writes acknowledged, errors, p50/p99/p999/max client latency (measured by the
client, from the call to the answer), elections and leader changes during the soak (from the
nodes' own counters, ``raft.status`` health section), the largest Ready-loop pause any node
recorded (the upper bound of the highest non-empty ``ready_pause_ms`` bucket), snapshots
taken (``snapshot_index`` moves), and the failover time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import tomli_w

from framework.errors import RaftError
from framework.runtime.localcluster import LocalCluster
from framework.runtime.node_health import BUCKET_BOUNDS_MS


def _max_pause_ms(statuses: list[dict]) -> float:  # type: ignore[type-arg]
    worst = 0.0
    for st in statuses:
        counts = st["health"]["histograms"]["ready_pause_ms"]
        top = max((i for i, n in enumerate(counts) if n), default=0)
        bound = BUCKET_BOUNDS_MS[top] if top < len(BUCKET_BOUNDS_MS) else float("inf")
        worst = max(worst, bound)
    return worst


def _counter(statuses: list[dict], name: str) -> int:  # type: ignore[type-arg]
    return sum(int(st["health"]["counters"][name]) for st in statuses)


async def _statuses(cluster: LocalCluster) -> list[dict]:  # type: ignore[type-arg]
    out = []
    async with cluster.client(timeout=10.0) as client:
        for nid, proc in cluster.nodes.items():
            if proc.alive():
                out.append(await client.status(nid))
    return out


async def _soak(root: Path, args: argparse.Namespace) -> None:
    path = root / "soak.toml"
    path.write_text(tomli_w.dumps({"raft": {"snapshot_threshold_entries": args.snapshot_every}}))
    cluster = LocalCluster(root / "cluster", nodes=3, settings_files=[str(path)], cluster_id="soak")
    cluster.start_all()
    try:
        await cluster.wait_serving()
        await cluster.leader()
        before = await _statuses(cluster)
        latencies: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + args.seconds
        stack = AsyncExitStack()

        async def writer(n: int) -> None:
            nonlocal errors
            client = clients[n % len(clients)]
            i = n
            while time.perf_counter() < stop_at:
                begun = time.perf_counter()
                try:
                    await client.put(f"k{i % args.keys}", "x" * 100)
                except RaftError as exc:
                    errors += 1
                    if errors == 1:
                        print(f"first error: {exc!r}", flush=True)
                    continue
                latencies.append(time.perf_counter() - begun)
                i += args.writers

        async with stack:
            clients = [
                await stack.enter_async_context(cluster.client(timeout=10.0)) for _ in range(8)
            ]
            async with anyio.create_task_group() as tg:
                for n in range(args.writers):
                    tg.start_soon(writer, n)
            after = await _statuses(cluster)
            # Failover: kill the leader, time the first write started after it.
            leader = await cluster.leader()
            killed_at = time.perf_counter()
            cluster.kill(leader)
            with anyio.fail_after(60):
                while True:
                    try:
                        await clients[0].put("failover", "x")
                        break
                    except RaftError as exc:
                        print(f"failover write: {exc}", flush=True)
            failover = time.perf_counter() - killed_at
    finally:
        cluster.stop_all()
    latencies.sort()
    if not latencies:
        raise SystemExit(f"no write was acknowledged ({errors} errors)")

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3

    snaps = [a["snapshot_index"] for a in after]
    print(
        f"writers {args.writers}, {args.seconds:.0f} s, snapshot every {args.snapshot_every}: "
        f"{len(latencies)} writes acked ({len(latencies) / args.seconds:.0f}/s), {errors} errors\n"
        f"latency ms p50 {q(0.5):.1f}  p99 {q(0.99):.1f}  p999 {q(0.999):.1f}  "
        f"max {latencies[-1] * 1e3:.1f} (median {statistics.median(latencies) * 1e3:.1f})\n"
        f"elections {_counter(after, 'elections') - _counter(before, 'elections')}, "
        f"leader changes {_counter(after, 'leader_changes') - _counter(before, 'leader_changes')}"
        f" (summed over the nodes' counters)\n"
        f"largest Ready-loop pause (histogram bucket bound) {_max_pause_ms(after):.0f} ms; "
        f"snapshot index per node {snaps}\n"
        f"failover after SIGKILL of leader {leader}: {failover * 1e3:.0f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--snapshot-every", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="raftmw-soak-") as tmp:
        anyio.run(_soak, Path(tmp), args)


if __name__ == "__main__":
    main()
