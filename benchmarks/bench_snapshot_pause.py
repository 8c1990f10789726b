"""The event loop's longest pause while a node takes a snapshot, at a given state size.

    nice python benchmarks/bench_snapshot_pause.py [--keys 100000,1000000] [--trials 3]
        [--writers 8] [--modes chunked,whole] [--against /path/to/another-checkout]

One node (a single voter, so it leads at once) on the in-memory network with a SQLite store
in a temp directory: the snapshot path is the real one (serialise, write the file, fsync,
record). Its KV state machine is filled with ``--keys`` keys directly (20-byte values), then
``--writers`` clients write. Meanwhile a monitor task sleeps 1 ms at a time on the node's
event loop; a sleep that returns late shows the loop was held: the largest lateness is the
largest loop pause. First 2 s without a snapshot (the reference: what the shared machine and
the writes alone cost), then the snapshot threshold drops to 1 and the node takes one; the
measure stops when it is recorded. Also reported: the time from the threshold change to the
snapshot recorded, and the writes acknowledged meanwhile.

Why a pause happened: on Linux the monitor also reads the loop thread's
``/proc/thread-self/schedstat`` around each sleep. A late wake-up spent waiting on the run
queue is the machine's (the thread was runnable, no CPU was free: other processes or this
process's own worker threads); the rest, ``held``, is the process's own (the loop thread on
the CPU, or asleep on the GIL or a lock). The garbage collector is timed with
``gc.callbacks``: the longest collection and the generation-2 collections in each window.

Every trial runs once per mode (``--modes``), interleaved, each in a fresh subprocess:
``chunked`` (this tree as it is) and ``whole``, the same tree with the state machine seen
as main's runtime saw it (``snapshot()`` in one call in a worker thread while the Ready loop
waits): main's pause. ``--against DIR`` instead runs this tree against DIR's (``PYTHONPATH`` set to
the tree it measures; the script only uses what main also has). NB: a tree older than
``framework/canonical_msgpack.py`` can die with SIGSEGV here at 100,000 keys: ``whole`` did
(the backtrace was msgspec's own key sort: the map the script builds, "warm" first and then
ascending keys, is a key order that overflows it; see that module), and so did the
integration commit 161c0ec (not traced; probably the same cause).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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


class _WholeOnly:
    """The state machine as main's runtime used it: ``snapshot()`` in one call (in a
    worker thread, while the Ready loop waits), no ``snapshot_chunks``."""

    def __init__(self, sm: object) -> None:
        self.snapshot = sm.snapshot  # type: ignore[attr-defined]


async def _one(keys: int, writers: int, mode: str = "chunked") -> dict[str, float]:
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
            if mode == "whole":
                node.local_snapshots._sm = _WholeOnly(node.sm)

            @asynccontextmanager
            async def connect(address: str) -> AsyncIterator[object]:
                yield network.client(1)

            async with KVClient({1: "mem://1"}, timeout=60, connector=connect) as client:  # type: ignore[arg-type]
                await client.put("warm", "up")
                node.sm._data.update((f"key-{i:08d}", "v" * 20) for i in range(keys))
                worst = held = 0.0
                done = anyio.Event()

                async def monitor() -> None:
                    nonlocal worst, held
                    while not done.is_set():
                        queued = _run_queue_wait()
                        before = time.perf_counter()
                        await anyio.sleep(0.001)
                        late = time.perf_counter() - before - 0.001
                        worst = max(worst, late)
                        held = max(held, late - (_run_queue_wait() - queued))

                collections = _Collections()
                gc.callbacks.append(collections)

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
                    reference_held, held = held, 0.0
                    reference_gc = collections.reset()
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
                gc.callbacks.remove(collections)
            tg.cancel_scope.cancel()
    return {
        "max_pause_ms": worst * 1000,
        "reference_ms": reference * 1000,
        "max_held_ms": held * 1000,
        "reference_held_ms": reference_held * 1000,
        "gen2": collections.gen2,
        "reference_gen2": reference_gc[0],
        "longest_gc_ms": collections.longest * 1000,
        "reference_longest_gc_ms": reference_gc[1] * 1000,
        "snapshot_s": elapsed,
        "acked": acked - acked_before,
    }


def _run_queue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


class _Collections:
    """A ``gc.callbacks`` entry: generation-2 collections and the longest collection."""

    def __init__(self) -> None:
        self.gen2 = 0
        self.longest = 0.0
        self._started = 0.0

    def reset(self) -> tuple[int, float]:
        seen, self.gen2, self.longest = (self.gen2, self.longest), 0, 0.0
        return seen

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.longest = max(self.longest, time.perf_counter() - self._started)
        self.gen2 += info["generation"] == 2


def _run_in(tree: Path, keys: int, writers: int, mode: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    extra = ["--mode", mode]
    out = subprocess.run(
        [sys.executable, __file__, "--one", str(keys), "--writers", str(writers), *extra],
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
    parser.add_argument("--modes", default="chunked,whole", help="of chunked, whole")
    parser.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(anyio.run(_one, args.one, args.writers, args.mode)))
        return
    here = Path(__file__).resolve().parents[1]
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - {"chunked", "whole"})
    if unknown:
        parser.error(f"--modes {args.modes!r}: unknown {unknown}; expected chunked, whole")
    trees = {mode: (here, mode) for mode in modes}
    if args.against is not None:
        trees = {"this": (here, "chunked"), "against": (args.against.resolve(), "chunked")}
    for keys in (int(k) for k in args.keys.split(",")):
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for _ in range(args.trials):
            for name, (tree, mode) in trees.items():  # interleaved
                results[name].append(_run_in(tree, keys, args.writers, mode))
        for name, runs in results.items():
            pauses = [r["max_pause_ms"] for r in runs]
            refs = [r["reference_ms"] for r in runs]
            held = [r["max_held_ms"] for r in runs]
            ref_held = [r["reference_held_ms"] for r in runs]
            spans = [r["snapshot_s"] for r in runs]
            print(
                f"{keys:>9} keys  {name:<8} max loop pause during snapshot ms: median "
                f"{statistics.median(pauses):7.1f} (min {min(pauses):.1f}, max {max(pauses):.1f})"
                f"  reference (no snapshot) ms: median {statistics.median(refs):.1f} "
                f"(max {max(refs):.1f})  snapshot s: median {statistics.median(spans):.2f}"
                f"  writes acked during it: median "
                f"{statistics.median(r['acked'] for r in runs):.0f}"
                f"\n{'':>15}{'':<8} of which held by the process ms: median "
                f"{statistics.median(held):7.1f} (min {min(held):.1f}, max {max(held):.1f})"
                f"  reference ms: median {statistics.median(ref_held):.1f}"
                f" (max {max(ref_held):.1f})"
                f"  gen-2 collections: {sum(r['gen2'] for r in runs)} during,"
                f" {sum(r['reference_gen2'] for r in runs)} in the references;"
                f" longest collection ms {max(r['longest_gc_ms'] for r in runs):.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
