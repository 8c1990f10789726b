"""How many Readys per second ``SQLiteLogStore.save_ready`` stores.

    python benchmarks/bench_sqlite_store.py [--seconds 2.0] [--dir PATH]

For each of sync="always" and sync="os", and batches of 1 and 64 entries of 100 bytes, it
saves Readys shaped like a follower's (the entries plus a hard state whose commit index
moves, ``sync=True``) for ``--seconds`` and prints Readys/s, entries/s and the latency
percentiles of one call. What "always" costs is the disk's fsync, so the filesystem of
``--dir`` is printed too: run it on the disk the nodes will use.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from framework.core import ConfState, Entry, EntryKind, HardState
from framework.storage.sqlite import SQLiteLogStore

ENTRY_BYTES = 100


def filesystem_of(path: Path) -> str:
    """The mount a path is on, from /proc/mounts (Linux); "unknown" elsewhere."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if resolved == m[1] or resolved.startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    return "unknown" if best is None else f"{best[2]} ({best[0]} on {best[1]})"


def run(directory: Path, sync: str, batch: int, seconds: float) -> tuple[int, list[float]]:
    store = SQLiteLogStore(directory, sync=sync)  # type: ignore[arg-type]
    try:
        store.initialize(node_id=1, cluster_id="bench", conf_state=ConfState(voters=(1, 2, 3)))
        payload = b"x" * ENTRY_BYTES
        last = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        while True:
            entries = [
                Entry(term=1, index=i, kind=EntryKind.NORMAL, data=payload)
                for i in range(last + 1, last + batch + 1)
            ]
            hard_state = HardState(term=1, vote=1, commit=last)
            start = time.perf_counter()
            store.save_ready(hard_state=hard_state, entries=entries, snapshot=None, sync=True)
            end = time.perf_counter()
            latencies.append(end - start)
            last += batch
            if end >= deadline:
                return last, latencies
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per configuration")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the stores")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-sqlite-") as tmp:
        root = Path(tmp)
        print(
            f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            f"{filesystem_of(root)}, {args.seconds:g} s per row, entries of {ENTRY_BYTES} B"
        )
        print(
            f"{'sync':>6} {'batch':>5} {'readys/s':>10} {'entries/s':>11} "
            f"{'p50 us':>8} {'p99 us':>8}"
        )
        for sync in ("always", "os"):
            for batch in (1, 64):
                entries, latencies = run(root / f"{sync}-{batch}", sync, batch, args.seconds)
                elapsed = sum(latencies)
                cuts = statistics.quantiles(latencies, n=100)
                print(
                    f"{sync:>6} {batch:>5} {len(latencies) / elapsed:>10,.0f} "
                    f"{entries / elapsed:>11,.0f} {cuts[49] * 1e6:>8,.0f} {cuts[98] * 1e6:>8,.0f}"
                )


if __name__ == "__main__":
    main()
