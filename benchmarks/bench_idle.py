"""What an idle node costs: CPU and RSS of each node of a 3-node cluster that has elected a
leader and serves nothing.

    python benchmarks/bench_idle.py [--seconds 8] [--no-tls]

Starts a ``LocalCluster`` (node processes on loopback, TLS as ``raftmw bench`` has it),
waits for a leader and 1.5 s more, reads each node's RSS (``VmRSS``), then its CPU seconds
(``/proc``) over ``--seconds`` of idling, and prints one line: the leader, CPU % of a core
and RSS per node. An idle node still ticks, sends or answers heartbeats and publishes its
status: what that costs is what this measures. Compare two checkouts by running it
alternately with ``PYTHONPATH`` set to each (the machine's load drifts: interleave, repeat,
and quote medians). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anyio

from framework.runtime.eventloop import run_async
from framework.runtime.localcluster import LocalCluster

_SETTLE_SECONDS = 1.5


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def _idle(cluster: LocalCluster, seconds: float) -> None:
    cluster.start_all()
    await cluster.wait_serving()
    leader = await cluster.leader()
    await anyio.sleep(_SETTLE_SECONDS)
    rss = {n: _rss_mib(node.pid) for n, node in cluster.nodes.items() if node.pid}
    before = {n: node.cpu_seconds() for n, node in cluster.nodes.items()}
    await anyio.sleep(seconds)
    after = {n: node.cpu_seconds() for n, node in cluster.nodes.items()}
    cpu = {
        n: round((end - start) / seconds * 100, 1)
        for n, end in after.items()
        if end is not None and (start := before[n]) is not None
    }
    print(f"leader {leader}  idle CPU % of a core per node {cpu}  idle RSS MiB {rss}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    with tempfile.TemporaryDirectory(prefix="raftmw-idle-") as tmp:
        cluster = LocalCluster(Path(tmp), nodes=3, cluster_id="idle", tls=args.tls)
        try:
            run_async(_idle, cluster, args.seconds)
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
