"""Peak memory of a node restarting over a data directory that holds a large snapshot, this
tree against another checkout, side by side in one run.

    nice python benchmarks/bench_restart_memory.py [--keys 1000000] [--value-size 100]
        [--trials 2] --against CHECKOUT

The driver writes one data directory (with this tree's code): a one-node cluster's SQLite
store whose snapshot at index 1 holds ``--keys`` KV keys (``--value-size``-byte values,
each key's value distinct, so the restored state is as large as a real one; node snapshot
format 2, the KV machine's format 2, as a node of this tree or of the reference writes
them). Each trial then copies that directory and starts one node process over the copy
(this script with ``--node``; ``PYTHONPATH`` = the checkout: ``this`` is this tree,
``against`` the one given), which reports once it serves (its snapshot restored, before
it applies anything new): the seconds from its start (imports excluded), its peak RSS
(``VmHWM``), its RSS then, the keys restored, and the bytes of the snapshot its kernel
holds. Modes alternate
within each trial, the first alternating between trials; medians and ranges at the end.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent.parent


def _write_directory(directory: Path, keys: int, value_size: int) -> int:
    """A one-node store whose snapshot holds ``keys`` keys; the snapshot file's size."""
    from framework.core import ConfState, HardState, Snapshot, SnapshotMeta
    from framework.runtime.snapshots import node_snapshot_head
    from framework.statemachine import KVStateMachine
    from framework.storage.sqlite import SQLiteLogStore

    sm = KVStateMachine()
    pad = "v" * max(0, value_size - 8)
    sm._data.update((f"key-{i:08d}", f"{i:08d}{pad}") for i in range(keys))
    sm._applied_index = 1
    data = node_snapshot_head(members={1: "127.0.0.1:1"}, flags=b"") + b"".join(
        sm.snapshot_chunks()
    )
    del sm
    conf = ConfState(voters=(1,))
    store = SQLiteLogStore(directory, sync="os")
    try:
        store.initialize(node_id=1, cluster_id="bench", conf_state=conf)
        store.save_ready(
            hard_state=HardState(term=1, vote=1, commit=1),
            entries=[],
            snapshot=Snapshot(meta=SnapshotMeta(index=1, term=1, conf_state=conf), data=data),
            sync=True,
        )
    finally:
        store.close()
    return len(data)


async def _node(directory: Path, port: int) -> None:
    from framework.config import load_settings
    from framework.runtime.node import NodeConfig, RaftNode
    from framework.storage.sqlite import SQLiteLogStore
    from framework.transport.tcp import TcpTransport

    started = time.perf_counter()
    address = f"127.0.0.1:{port}"
    settings = load_settings(overrides={"storage.sync": "os"})
    transport = TcpTransport(node_id=1, cluster_id="bench", listen=address, peers={1: address})
    config = NodeConfig(
        node_id=1, cluster_id="bench", peers={1: address}, settings=settings, data_dir=directory
    )
    node = RaftNode(config, store=SQLiteLogStore(directory, sync="os"), transport=transport)
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        assert node.kernel is not None
        report = {
            "started_s": time.perf_counter() - started,
            "peak_mib": _proc_kib(os.getpid(), "VmHWM") / 1024,
            "rss_mib": _proc_kib(os.getpid(), "VmRSS") / 1024,
            "keys": len(node.sm),  # type: ignore[arg-type]
            "kernel_snapshot_mib": len(node.kernel.snapshot.data) / 2**20,
        }
        print(json.dumps(report), flush=True)
        tg.cancel_scope.cancel()


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def _trial(template: Path, checkout: Path, tmp: Path) -> dict[str, Any]:
    from framework.runtime.localcluster import free_ports

    directory = tmp / "run"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(template, directory)
    os.sync()  # the copy on disk: the node's first fsync does not wait for it
    env = dict(os.environ, PYTHONPATH=str(checkout))
    command = [sys.executable, __file__, "--node", str(directory)]
    command += ["--port", str(free_ports(1)[0])]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"node process failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} (range {min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--against", help="the reference checkout (PYTHONPATH)")
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        anyio.run(_node, Path(args.node), args.port)
        return
    if not args.against:
        parser.error("--against CHECKOUT is required (the reference to compare with)")
    checkouts = {"this": HERE, "against": Path(args.against).resolve()}
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in checkouts}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        size = _write_directory(tmp / "template", args.keys, args.value_size)
        print(
            f"{args.keys} keys of {args.value_size}-byte values, snapshot file "
            f"{size / 2**20:.0f} MiB; {args.trials} trials a side, interleaved; "
            f"this = {HERE}, against = {checkouts['against']}; load average "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        modes = list(checkouts)
        for trial in range(args.trials):
            for mode in modes if trial % 2 == 0 else modes[::-1]:
                result = _trial(tmp / "template", checkouts[mode], tmp)
                results[mode].append(result)
                print(
                    f"trial {trial + 1} {mode:>7}: peak RSS {result['peak_mib']:.0f} MiB, RSS "
                    f"once serving {result['rss_mib']:.0f} MiB, kernel holds "
                    f"{result['kernel_snapshot_mib']:.0f} MiB of snapshot, keys "
                    f"{result['keys']}, serving after {result['started_s']:.1f} s; load "
                    f"average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    for mode in modes:
        rows = results[mode]
        print(
            f"{mode:>7}: peak RSS MiB {_summary([r['peak_mib'] for r in rows])}; RSS once "
            f"serving MiB {_summary([r['rss_mib'] for r in rows])}; serving after s "
            f"{_summary([r['started_s'] for r in rows])}"
        )


if __name__ == "__main__":
    main()
