"""The event loop's longest pause while a node takes a snapshot, at a given state size.

    nice python benchmarks/bench_snapshot_pause.py [--keys 100000,1000000] [--trials 3]
        [--writers 8] [--against /path/to/checkout-of-another-commit]

One node (a single voter, so it leads at once) on the in-memory network with a SQLite store
in a temp directory: the snapshot path is the real one (serialise, write the file, fsync,
record). Its KV state machine is filled with ``--keys`` keys directly (20-byte values), then
``--writers`` clients write. Meanwhile a monitor task sleeps 1 ms at a time on the node's
event loop; a sleep that returns late shows the loop was held: the largest lateness is the
largest loop pause. First 2 s without a snapshot (the reference: what the shared machine and
the writes alone cost), then the snapshot threshold drops to 1 and the node takes one; the
measure stops when it is recorded. Also reported: the time from the threshold change to the
snapshot recorded, and the writes acknowledged meanwhile.

``--against DIR`` runs every trial twice, interleaved (this tree, then DIR's), each in a
fresh subprocess with ``PYTHONPATH`` set to the tree it measures; the script only uses what
main also has (``RaftNode``, ``KVClient``, ``MemoryNetwork``, ``SQLiteLogStore``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio


async def _one(keys: int, writers: int) -> dict[str, float]:
    from framework.client import KVClient
    from framework.config import load_settings
    from framework.runtime.node import NodeConfig, RaftNode
    from framework.storage.sqlite import SQLiteLogStore
    from framework.transport.memory import MemoryNetwork

    settings = load_settings(
        overrides={"raft.snapshot_threshold_entries": 10**9, "client.request_timeout": "30s"}
    )
    network = MemoryNetwork(seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteLogStore(Path(tmp) / "n1")
        config = NodeConfig(node_id=1, cluster_id="bench", peers={1: "mem://1"}, settings=settings)
        node = RaftNode(config, store=store, transport=network.transport(1))
        async with anyio.create_task_group() as tg:
            await tg.start(node.run)

            @asynccontextmanager
            async def connect(address: str) -> AsyncIterator[object]:
                yield network.client(1)

            async with KVClient({1: "mem://1"}, timeout=60, connector=connect) as client:  # type: ignore[arg-type]
                await client.put("warm", "up")
                node.sm._data.update((f"key-{i:08d}", "v" * 20) for i in range(keys))
                worst = 0.0
                done = anyio.Event()

                async def monitor() -> None:
                    nonlocal worst
                    while not done.is_set():
                        before = time.perf_counter()
                        await anyio.sleep(0.001)
                        worst = max(worst, time.perf_counter() - before - 0.001)

                acked = 0

                async def writer(w: int) -> None:
                    nonlocal acked
                    i = 0
                    while not done.is_set():
                        await client.put(f"w{w}", str(i))
                        acked += 1
                        i += 1

                def recorded() -> bool:
                    kernel = node.kernel
                    if kernel is None or kernel.snapshot.meta.index == 0:
                        return False
                    local = getattr(node, "local_snapshots", None)
                    if local is not None:
                        return local.taken > 0
                    return not node._snapshot_writing  # main's field

                async with anyio.create_task_group() as inner:
                    inner.start_soon(monitor)
                    for w in range(writers):
                        inner.start_soon(writer, w)
                    # Reference: the same writers and state, no snapshot, for 2 seconds.
                    await anyio.sleep(2.0)
                    reference, worst, acked_before = worst, 0.0, acked
                    # Now a snapshot is due at the next Ready (the threshold is read from
                    # the settings on main, from LocalSnapshots here).
                    raft = dataclasses.replace(settings.raft, snapshot_threshold_entries=1)
                    node.settings = dataclasses.replace(settings, raft=raft)
                    if hasattr(node, "local_snapshots"):
                        node.local_snapshots._threshold = 1
                    started = time.perf_counter()
                    while not recorded():  # noqa: ASYNC110 - polls two implementations
                        await anyio.sleep(0.005)
                    elapsed = time.perf_counter() - started
                    done.set()
            tg.cancel_scope.cancel()
    return {
        "max_pause_ms": worst * 1000,
        "reference_ms": reference * 1000,
        "snapshot_s": elapsed,
        "acked": acked - acked_before,
    }


def _run_in(tree: Path, keys: int, writers: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(keys), "--writers", str(writers)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", default="100000,1000000")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--against", type=Path, default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(anyio.run(_one, args.one, args.writers)))
        return
    here = Path(__file__).resolve().parents[1]
    trees = {"this": here}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    for keys in (int(k) for k in args.keys.split(",")):
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.trials):
            for name, tree in trees.items():  # interleaved
                results[name].append(_run_in(tree, keys, args.writers))
        for name, runs in results.items():
            pauses = [r["max_pause_ms"] for r in runs]
            refs = [r["reference_ms"] for r in runs]
            spans = [r["snapshot_s"] for r in runs]
            print(
                f"{keys:>9} keys  {name:<8} max loop pause during snapshot ms: median "
                f"{statistics.median(pauses):7.1f} (min {min(pauses):.1f}, max {max(pauses):.1f})"
                f"  reference (no snapshot) ms: median {statistics.median(refs):.1f} "
                f"(max {max(refs):.1f})  snapshot s: median {statistics.median(spans):.2f}"
                f"  writes acked during it: median "
                f"{statistics.median(r['acked'] for r in runs):.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
