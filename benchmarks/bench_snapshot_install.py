"""CPU time of a follower's check and install of a received snapshot file: checked, then
decoded again to restore (two passes), against installing the state the check decoded (one
pass), side by side in one process.

    nice python benchmarks/bench_snapshot_install.py [--keys 1000000] [--value-size 100]
        [--trials 3]

The driver writes one node snapshot file (format 2) of ``--keys`` KV keys, then per trial,
in alternating order, takes it the two ways, each into a machine already holding the
same state (as a follower that is behind holds most of it): ``two-pass`` is
``check_node_snapshot_file`` (decoding and dropping each record) then
``restore_node_snapshot_file`` (decoding it again); ``one-pass`` is
``check_node_snapshot_file(keep=True)`` then ``restore_node_snapshot_file(decoded=...)``.
Reported: the process CPU seconds of each (``time.process_time``: less sensitive than wall
time to other processes on a shared machine), medians and ranges. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

from framework.runtime.app_identity import AppIdentity
from framework.runtime.members import host_port_problem
from framework.runtime.snapshots import (
    check_node_snapshot_file,
    node_snapshot_head,
    restore_node_snapshot_file,
)
from framework.statemachine import KVStateMachine


def _machine(keys: int, value_size: int) -> KVStateMachine:
    sm = KVStateMachine()
    pad = "v" * max(0, value_size - 8)
    sm._data.update((f"key-{i:08d}", f"{i:08d}{pad}") for i in range(keys))
    sm._applied_index = 1
    return sm


def _take(path: Path, sm: KVStateMachine, *, one_pass: bool) -> float:
    gc.collect()
    started = time.process_time()
    with open(path, "rb") as file:
        decoded = check_node_snapshot_file(
            file, index=1, state_machine=sm, address_problem=host_port_problem, keep=one_pass
        )
    with open(path, "rb") as file:
        restore_node_snapshot_file(
            file, index=1, state_machine=sm, identity=AppIdentity(1, sm), decoded=decoded
        )
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    sm = _machine(args.keys, args.value_size)
    data = node_snapshot_head(members={1: "127.0.0.1:1"}, flags=b"") + b"".join(
        sm.snapshot_chunks()
    )
    results: dict[str, list[float]] = {"two-pass": [], "one-pass": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snapshot"
        path.write_bytes(data)
        print(
            f"{args.keys} keys, snapshot file {len(data) / 2**20:.0f} MiB, {args.trials} "
            f"trials a mode, interleaved; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        del data
        modes = list(results)
        for trial in range(args.trials):
            for mode in modes if trial % 2 == 0 else modes[::-1]:
                seconds = _take(path, sm, one_pass=mode == "one-pass")
                assert len(sm) == args.keys and sm.applied_index == 1
                results[mode].append(seconds)
                print(
                    f"trial {trial + 1} {mode}: {seconds:.2f} CPU s; load average "
                    f"{os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    for mode, values in results.items():
        print(
            f"{mode}: median {statistics.median(values):.2f} CPU s "
            f"(range {min(values):.2f}-{max(values):.2f})"
        )


if __name__ == "__main__":
    main()
