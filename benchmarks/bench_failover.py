"""Failover time: SIGKILL the leader of a 3-process cluster under write load, N times;
report each time from the kill to the first write acknowledged after it, and the median.

    nice python benchmarks/bench_failover.py [--trials 5] [--clients 4] [--seconds 4]

Each trial is a fresh cluster (``raftmw bench --kill-leader``: the kill half-way through
``--seconds``), so every kill starts from a settled leader. Also printed per trial: the
share of the machine other processes took meanwhile (``framework.runtime.machine_load``);
on a shared machine the failover time includes waiting for a CPU. For failover after a long
run under 512 writers see ``bench_soak.py --kills``.
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
    if args.trials < 1 or args.clients < 1 or args.seconds <= 0:
        parser.error("--trials and --clients must be >= 1, --seconds > 0")
    times = []
    for trial in range(1, args.trials + 1):
        report = run_bench(
            BenchOptions(clients=args.clients, seconds=args.seconds, kill_leader=True),
            progress=False,
        )
        ms = report["failover_ms"]
        others = report["machine_load"]["other_share"]
        print(
            f"trial {trial}: killed node {report['killed_leader']}, failover {ms} ms; "
            f"others took {others} of the machine",
            flush=True,
        )
        if ms is not None:
            times.append(ms)
    if times:
        print(
            f"failover over {len(times)} trials: median {statistics.median(times):.0f} ms "
            f"({min(times):.0f}-{max(times):.0f})"
        )


if __name__ == "__main__":
    main()
