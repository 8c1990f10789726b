"""Turn the JSON reports of ``benchmarks/plugin_rows.sh`` into the README's per-plugin table.

    python benchmarks/plugin_rows_table.py benchmarks/plugin_rows/run2

One row per plugin: the fault, the metrics that matter for it (median off -> on) and the
verdict ``raftmw compare`` gave each, with its 95 % interval; plus how many runs the
machine's other processes made "busy" (``framework.runtime.machine_load.BUSY_SHARE``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS = {
    "actors": ("stuck-peer", ["ops_per_second", "latency_ms.p99", "term_changes"]),
    "backpressure": (
        "overload",
        ["peak_rss_mib_max", "latency_ms.p99", "recovery_ms", "client_error_count"],
    ),
    "circuit_breaker": (
        "dead-peer",
        ["cpu_seconds_per_1000_writes", "ops_per_second", "latency_ms.p99"],
    ),
    "adaptive_timeout": (
        "slow-link",
        ["client_error_count", "latency_ms.p99", "ops_per_second", "term_changes"],
    ),
    "lock_free": ("none", ["cpu_seconds_per_1000_writes", "ops_per_second"]),
    "all": ("none", ["ops_per_second", "latency_ms.p99", "cpu_seconds_per_1000_writes"]),
}


def _cell(stats: dict[str, Any]) -> str:
    a, b = stats["median_a"], stats["median_b"]
    if a is None or b is None:
        return f"{stats['label']}: {a} -> {b}; {stats['verdict']}"
    return f"{stats['label']}: {a:g} -> {b:g}; {stats['verdict']}"


def main(directory: str) -> None:
    print("| plugin | fault | off -> on (medians), verdict with 95 % CI | busy runs |")
    print("|---|---|---|---|")
    for row, (fault, keys) in ROWS.items():
        path = Path(directory) / f"{row}.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        metrics = report["metrics"]
        cells = "<br>".join(_cell(metrics[key]) for key in keys if key in metrics)
        runs = len(report["runs"])
        busy = len(report.get("busy_runs", []))
        name = "all five on" if row == "all" else f"`{row}`"
        print(f"| {name} | {fault} | {cells} | {busy} of {runs} |")


if __name__ == "__main__":
    main(sys.argv[1])
