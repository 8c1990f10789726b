"""Failover time: SIGKILL the leader of a 3-process cluster under write load, N times;
report each time from the kill to the first write acknowledged after it, and the median.

    python benchmarks/bench_failover.py [--trials 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import statistics

from framework.runtime.bench import BenchOptions, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    times = []
    for trial in range(1, args.trials + 1):
        report = run_bench(
            BenchOptions(clients=args.clients, seconds=args.seconds, kill_leader=True),
            progress=False,
        )
        ms = report["failover_ms"]
        print(f"trial {trial}: killed node {report['killed_leader']}, failover {ms} ms")
        if ms is not None:
            times.append(ms)
    if times:
        print(f"median failover over {len(times)} trials: {statistics.median(times):.0f} ms")


if __name__ == "__main__":
    main()
